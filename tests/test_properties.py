"""Property-based bad input (hypothesis): whatever data.csv and image files look like (file names with white space,
invisible characters and either Unicode form, placeholder answers, repeated and padded header names, the header
again mid-file, any encoding), main.py, inference.py and the importer end in success or in the repo's own clear
error (`error: ...`, non-zero), never another exception, and never change a file that was there before them: the
data, a user's files beside it or in the output folder."""
import io
import os
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import download
import inference
import main
from conftest import TINY_TRAIN

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


def picture(kind):
    """Bytes of an image file of one kind, good or broken."""
    out = io.BytesIO()
    rgb = Image.fromarray(np.random.default_rng(len(kind)).integers(0, 255, (24, 24, 3), np.uint8))
    if kind in ("jpeg", "half", "overwritten"):
        rgb.save(out, "JPEG")
    elif kind == "float":
        Image.fromarray(np.ones((8, 8), np.float32)).save(out, "TIFF")
    elif kind == "rgba":
        rgb.convert("RGBA").save(out, "PNG")
    elif kind == "grey16":
        Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(out, "PNG")
    else:
        rgb.save(out, "PNG")
    data = out.getvalue()
    if kind == "half":
        return data[:len(data) // 2]
    if kind == "overwritten":
        return data[:len(data) // 2] + bytes(range(256)) + data[len(data) // 2:]
    return {"empty": b"", "text": b"not an image at all"}.get(kind, data)


IMAGE_KINDS = ["jpeg", "png", "rgba", "grey16", "float", "half", "overwritten", "empty", "text"]
TEXT = st.text(alphabet=st.sampled_from(list("ab가나 ,\"'\n\t|;\\") + ["\u200b", "\ufeff", "\u00a0", "\u0301"]),
               max_size=12)
# file names as users have them: runs of spaces, leading and trailing spaces, no-break spaces, tabs, zero-width
# characters, Hangul in NFD (a Mac's); each is used exactly as written
NAME_STYLES = ["img{}", "img  {}", " img{}", "img{} ", "img\u00a0{}", "img\t{}", "img\u200b{}",
               unicodedata.normalize("NFD", "고양이{}")]
PLACEHOLDERS = ["nan", "None", "N/A", "NA", "null", "#N/A", "-"]
HEADERS = [["image", "question", "answer"], ["image", "question", "answer", "split"],
           ["image", "question", "answer", "question_type", "triple", "split"], ["image", "question"],
           ["image", "question", "answer", "answer"], ["image", "question", "answer", "split "],
           [" image", "question", "answer"]]


@st.composite
def data_sets(draw):
    """(files {name: bytes}, data.csv bytes) of a small data set with faults of every kind."""
    clean = draw(st.booleans())  # half the data sets have good rows only, so that runs also get to succeed
    kinds = st.sampled_from(["jpeg", "png", "rgba", "grey16"] if clean else IMAGE_KINDS)
    styles = st.sampled_from(NAME_STYLES)
    files = {draw(styles).format(i) + f".{'jpg' if kind in ('jpeg', 'half', 'overwritten') else 'png'}": picture(kind)
             for i, kind in enumerate(draw(st.lists(kinds, min_size=1 if not clean else 12, max_size=14)))}
    # a name is written as it is on disk, or (for an NFD one) as its NFC twin
    spelled = {name: unicodedata.normalize("NFC", name) if draw(st.booleans()) else name for name in files}
    names = list(spelled.values()) + ([] if clean else ["missing.jpg", "../outside/secret.jpg", "OUTSIDE_ABS", "",
                                                        "sub/../img0.jpg", "a\x00b"]
                                      + [" ".join(name.split()) for name in files])  # lookalikes of the files
    if clean:
        rows = [{"image": name, "question": f"질문 {i} {draw(TEXT)}", "answer": draw(st.sampled_from(["빨강", "파랑"])),
                 "question_type": "A", "triple": "", "split": ""} for i, name in enumerate(names)]
        return files, pd.DataFrame(rows).to_csv(index=False).encode("utf-8")
    rows = draw(st.lists(st.fixed_dictionaries({
        "image": st.sampled_from(names), "question": st.one_of(st.sampled_from(["색깔은?", "What?"]), TEXT),
        "answer": st.one_of(st.sampled_from(["빨강", "red", "고양이"] + PLACEHOLDERS), TEXT),
        "question_type": st.sampled_from(["", "A", "B", "C"]),
        "triple": st.sampled_from(["", "a|b|c", "a|b", "x|y|z;q", "a|b|N/A", "nan|r|t"]),
        "split": st.sampled_from(["", "train", "valid", "test", "dev"])}), min_size=0, max_size=10))
    columns = draw(st.sampled_from(HEADERS))
    lines = [",".join(columns)] + [",".join('"' + str(row.get(c.strip(), row["answer"])).replace('"', '""') + '"'
                                            for c in columns) for row in rows]
    if draw(st.booleans()) and len(lines) > 2:
        lines.insert(len(lines) // 2 + 1, lines[0])  # two exports joined: the header again mid-file
    text = "\n".join(lines) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp949", "latin-1", "utf-16", "truncated", "mojibake"]))
    try:
        raw = text.encode("utf-8") if encoding in ("truncated", "mojibake") else text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.encode("utf-8")
    if encoding == "truncated":
        raw = raw[:len(raw) // 2] + b'"unclosed'
    if encoding == "mojibake":  # UTF-8 read as Latin-1 and saved as UTF-8 again
        raw = raw.decode("latin-1").encode("utf-8")
    return files, raw


def lay_out(root, files, csv, user_file=None):
    """root/data (data.csv, image/), root/outside/secret.jpg (a user's file) and root/out (outputs), where
    user_file puts a user's own data.csv or images among the outputs."""
    if root.exists():
        shutil.rmtree(root)
    (root / "data" / "image").mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "outside" / "secret.jpg").write_bytes(picture("jpeg"))
    for name, data in files.items():
        (root / "data" / "image" / name).write_bytes(data)
    (root / "data" / "data.csv").write_bytes(csv.replace(b"OUTSIDE_ABS", str(root / "outside" / "secret.jpg").encode()))
    if user_file:
        (root / "out" / "image").mkdir(parents=True)
    if user_file == "data.csv":
        (root / "out" / "data.csv").write_text("image,question,answer\nmine.jpg,my question,my answer\n")
    for name in files if user_file == "image" else []:
        (root / "out" / "image" / name).write_bytes(b"a user's own image")


def snapshot(root):
    """{path: (size, mtime, is link)} of every file under root."""
    seen = {}
    for path in root.rglob("*"):
        if path.is_symlink() or path.is_file():
            stat = path.lstat()
            seen[str(path)] = (stat.st_size, stat.st_mtime_ns, path.is_symlink())
    return seen


def unchanged(root, before):
    """Whether every file under root that was there before is there still, unchanged (new files may be added)."""
    after = snapshot(root)
    return {path: after.get(path) for path in before} == before


def ends_well(call):
    """Success, or SystemExit with the repo's own message: any other exception fails the test."""
    try:
        call()
        event("success")
    except SystemExit as e:
        assert isinstance(e.code, str) and e.code.startswith("error: ") or e.code in (0, None), repr(e.code)[:500]
        event("clear error")


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    copy = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(trained_run, copy)
    return copy


@settings(max_examples=15, **SETTINGS)
@given(data=data_sets(), skip_bad=st.booleans())
def test_training_ends_in_success_or_a_clear_error(data, skip_bad, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    lay_out(root, *data)
    before = snapshot(root)
    ends_well(lambda: main.main(TINY_TRAIN + ["--n_epoch", "1", "--batch_size", "4", "--data_dir", str(root / "data"),
                                              "--results_dir", str(root / "out")] + ["--skip_bad"] * skip_bad))
    assert unchanged(root, before)


@settings(max_examples=20, **SETTINGS)
@given(data=data_sets())
def test_inference_ends_in_success_or_a_clear_error(data, run_copy, tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("infer")
    lay_out(root, *data)
    before = snapshot(root)
    monkeypatch.setattr(sys, "argv", ["inference.py", "--model_path", str(run_copy), "--data_dir", str(root / "data"),
                                      "--split", "train", "--skip_bad"])
    ends_well(inference.main)
    assert unchanged(root, before)


@settings(max_examples=25, **SETTINGS)
@given(data=data_sets(), kind=st.sampled_from(["canonical", "BOK-VQA", "NIA"]),
       user_file=st.sampled_from([None, "data.csv", "image"]))
def test_import_ends_in_success_or_a_clear_error(data, kind, user_file, tmp_path_factory, monkeypatch):
    files, csv = data
    root = tmp_path_factory.mktemp("import")
    headers = {"BOK-VQA": (b"image,question,answer", b",img_name,question,answer,h,r,t"),
               "NIA": (b"image,question,answer", b"img_path,question,answer")}
    if kind in headers and csv.startswith(headers[kind][0]):
        csv = headers[kind][1] + csv[len(headers[kind][0]):]
    lay_out(root, files, csv, user_file)
    before = snapshot(root)
    monkeypatch.setattr(sys, "argv", ["download.py", "--from_csv", str(root / "data" / "data.csv"), "--image_dir",
                                      str(root / "data" / "image"), "--out", str(root / "out"), "--skip_bad"])
    ends_well(download.main)
    assert unchanged(root, before)
    assert not any(p.is_symlink() and not Path(os.readlink(p)).is_relative_to(root / "data")
                   for p in (root / "out").rglob("*")) if (root / "out").exists() else True
