"""download.py: safe unpacking, the offline path, and importing the BOK-VQA, NIA-style and canonical CSV formats."""
import os
import stat
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import download
from conftest import REAL_CSV, TINY_TRAIN, run_script
from vqa_dataset import DataError, read_data

REAL = REAL_CSV
NIA_COLUMNS = ["img_path", "question", "answer", "main_obj", "Triple", "Abstract"]
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/real-csv is not present")


def placeholder_images(directory, names):
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (i % 250, 80, 160)).save(directory / name)


def test_unsafe_archive_entries_are_refused(tmp_path):
    for entry in ["../evil.txt", "/tmp/absolute.txt", "image/../../evil.txt"]:
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("image/ok.jpg", b"fine")
            zf.writestr(entry, b"evil")
        with pytest.raises(DataError, match="refused, nothing was unpacked"):
            download.unpack(str(archive), str(tmp_path / "data"))
        assert not (tmp_path / "data" / "image" / "ok.jpg").exists() and not (tmp_path / "evil.txt").exists()
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("image/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="a link"):
        download.unpack(str(archive), str(tmp_path / "data"))


def test_safe_archive_unpacks_and_download_is_then_idempotent(tmp_path):
    archive = tmp_path / "image.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("image/a.jpg", b"a")
        zf.writestr("image/sub/b.jpg", b"b")
    result = run_script("download.py", "--zip", archive, "--data_dir", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data/image/a.jpg").read_bytes() == b"a" and (tmp_path / "data/image/sub/b.jpg").is_file()
    again = run_script("download.py", "--data_dir", tmp_path / "data")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_offline_download_prints_manual_instructions_fast(tmp_path, monkeypatch, capsys):
    """Offline, even on a machine with internet: every connection attempt fails, so no download can start."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setitem(sys.modules, "gdown", None)  # importing gdown would fail: it must not be reached
    monkeypatch.setattr(sys, "argv", ["download.py", "--data_dir", str(tmp_path / "data")])
    start = time.time()
    with pytest.raises(SystemExit) as stopped:
        download.main()
    assert time.time() - start < 30
    message = str(stopped.value)
    assert download.GDRIVE_FILE_ID in message
    assert "직접 다운로드" in message and "Download `image.zip`" in message and "--zip" in message
    assert not (tmp_path / "data" / "image.zip").exists()


def test_unknown_header_lists_the_formats(tmp_path):
    (tmp_path / "x.csv").write_text("picture,query,reply\na.jpg,q,a\n")
    with pytest.raises(DataError) as error:
        download.import_csv([str(tmp_path / "x.csv")], [], str(tmp_path), str(tmp_path / "out"))
    for name, (required, _optional) in download.FORMATS.items():
        assert name in str(error.value) and ", ".join(required) in str(error.value)


def test_bok_vqa_import_ko_en_and_test(tmp_path, capsys):
    header = ",img_name,question,h,r,t,answer,fold\n"
    (tmp_path / "ko.csv").write_text(header + "0,a.jpg,이미지 속 동물은?,Cat,class,Mammal,mammal,1.0\n"
                                     "1,b.jpg,이미지 속 꽃은?,Rose,family,Rosaceae,rosaceae,3.0\n", encoding="utf-8")
    (tmp_path / "en.csv").write_text(header + "0,a.jpg,What is the animal?,Cat,class,Mammal,mammal,1.0\n"
                                     "1,b.jpg,What is the flower?,Rose,family,Rosaceae,rosaceae,2.0\n")
    (tmp_path / "test.csv").write_text(header + "0,c.jpg,이미지 속 새는?,Crow,order,Passeriformes,passerine,0\n",
                                       encoding="utf-8")
    placeholder_images(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    download.import_csv([str(tmp_path / "ko.csv"), str(tmp_path / "en.csv")], [str(tmp_path / "test.csv")],
                        str(tmp_path / "img"), str(tmp_path / "out"))
    # the counts print as a person reads them, not as numpy reprs (np.int64(2))
    assert "({'valid': 2, 'train': 2, 'test': 1}; languages {'ko': 3, 'en': 2})" in capsys.readouterr().out
    df = read_data(tmp_path / "out")
    assert df["split"].tolist() == ["valid", "train", "valid", "train", "test"]
    assert df["lang"].tolist() == ["ko", "ko", "en", "en", "ko"]
    assert df["triple"].tolist()[:2] == ["Cat|class|Mammal", "Rose|family|Rosaceae"]
    assert set(df["question_type"]) == {"B"} and set(df["category"]) == {"triple"}
    assert os.path.realpath(tmp_path / "out/image/c.jpg") == str((tmp_path / "img/c.jpg").resolve())


def test_nia_import_rebases_paths_and_parses_triples(tmp_path):
    rows = [["/home/other/images/a.jpg", "이미지 속 악기는?", "호른", "호른", "", ""],
            ["/home/other/images/b.jpg", "이 동물은 어디에 살아?", "바다", "고래", "[['고래', '서식지', '바다']]", ""],
            ["D:\\data\\c.jpg", "이 음식의 유래는?", "이탈리아", "피자", "['피자', '유래', '이탈리아']",
             "피자는 이탈리아 음식이다."]]
    pd.DataFrame(rows, columns=NIA_COLUMNS).to_csv(tmp_path / "nia.csv", index=False)
    placeholder_images(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    download.import_csv([str(tmp_path / "nia.csv")], [], str(tmp_path / "img"), str(tmp_path / "out"))
    df = read_data(tmp_path / "out")
    assert df["image"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert df["triple"].tolist() == ["", "고래|서식지|바다", "피자|유래|이탈리아"]
    assert df["question_type"].tolist() == ["A", "B", "B"]
    assert df["category"].tolist() == ["vqa", "triple", "triple"]
    assert df.loc[2, "abstract"] == "피자는 이탈리아 음식이다."

    pd.DataFrame([["/x/a.jpg", "q", "a", "m", "__import__('os').system('touch pwned')", ""]],
                 columns=NIA_COLUMNS).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="row 2: column Triple is not a Python list"):
        download.import_csv([str(tmp_path / "bad.csv")], [], str(tmp_path / "img"), str(tmp_path / "out2"))
    assert not Path("pwned").exists()


def test_cp949_export_keeps_korean(tmp_path):
    text = "img_path,question,answer,main_obj,Triple,Abstract\n/x/a.jpg,이미지 속 악기 이름은 뭐지,호른,호른,,\n"
    (tmp_path / "nia.csv").write_bytes(text.encode("cp949"))
    placeholder_images(tmp_path / "img", ["a.jpg"])
    download.import_csv([str(tmp_path / "nia.csv")], [], str(tmp_path / "img"), str(tmp_path / "out"))
    df = read_data(tmp_path / "out")
    assert df.loc[0, "question"] == "이미지 속 악기 이름은 뭐지" and df.loc[0, "answer"] == "호른"
    assert (tmp_path / "out" / "data.csv").read_text(encoding="utf-8").count("호른") == 1


def test_import_reports_faults_with_source_rows_and_skip_bad(tmp_path):
    rows = [["/x/a.jpg", "q1", "a", "m", "", ""], ["/x/missing.jpg", "q2", "b", "m", "", ""],
            ["/x/a.jpg", "q3", "", "m", "", ""]]
    pd.DataFrame(rows, columns=NIA_COLUMNS).to_csv(tmp_path / "nia.csv", index=False)
    placeholder_images(tmp_path / "img", ["a.jpg"])
    args = ["download.py", "--from_csv", tmp_path / "nia.csv", "--image_dir", tmp_path / "img",
            "--out", tmp_path / "out"]
    result = run_script(*args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "nia.csv" in result.stderr and "row 3: column image:" in result.stderr and "missing.jpg" in result.stderr
    assert "row 4: column answer is empty" in result.stderr
    result = run_script(*args, "--skip_bad")
    assert result.returncode == 0, result.stderr
    assert len(read_data(tmp_path / "out")) == 1
    assert sorted(pd.read_csv(tmp_path / "out" / "skipped_rows.csv")["source_row"]) == [3, 4]


@needs_real
def test_real_formats_import_at_full_size(tmp_path):
    bok = pd.read_csv(REAL / "BOKVQA_data_ko.csv", dtype=str)
    nia = pd.read_csv(REAL / "kbvqa_ans2_data.csv", dtype=str)
    names = sorted(set(bok["img_name"]) | {os.path.basename(p) for p in nia["img_path"]})
    placeholder_images(tmp_path / "img", names)
    n = download.import_csv([str(REAL / "BOKVQA_data_ko.csv"), str(REAL / "BOKVQA_data_en.csv")], [],
                            str(tmp_path / "img"), str(tmp_path / "bok"))
    assert n == 2 * len(bok)
    df = read_data(tmp_path / "bok")
    assert df["lang"].value_counts().to_dict() == {"ko": len(bok), "en": len(bok)}
    assert (df.loc[df["lang"] == "ko", "split"] == "valid").sum() == (pd.to_numeric(bok["fold"]) == 1).sum()
    with pytest.raises(DataError, match="column answer is empty"):  # the NIA sample has one row without an answer
        download.import_csv([str(REAL / "kbvqa_ans2_data.csv")], [], str(tmp_path / "img"), str(tmp_path / "nia"))
    assert download.import_csv([str(REAL / "kbvqa_ans2_data.csv")], [], str(tmp_path / "img"), str(tmp_path / "nia"),
                               skip_bad=True) == len(nia) - 1


@needs_real
@pytest.mark.parametrize("name, rows", [("BOKVQA_data_ko.csv", 400), ("kbvqa_ans2_data.csv", 400)])
def test_real_formats_train_and_evaluate_end_to_end(tmp_path, name, rows):
    part = pd.read_csv(REAL / name, dtype=str, keep_default_na=False).sample(rows, random_state=0)
    part.to_csv(tmp_path / name, index=False)
    column = "img_name" if "img_name" in part else "img_path"
    placeholder_images(tmp_path / "img", sorted({os.path.basename(p) for p in part[column]}))
    split_args = ["--test_csv", tmp_path / "test.csv"] if column == "img_name" else []
    if split_args:  # BOK-VQA: hold out some rows as the test file, as its real test CSV would be
        part.tail(60).to_csv(tmp_path / "test.csv", index=False)
        part.head(rows - 60).to_csv(tmp_path / name, index=False)
    result = run_script("download.py", "--from_csv", tmp_path / name, *split_args, "--image_dir", tmp_path / "img",
                        "--out", tmp_path / "data")
    assert result.returncode == 0, result.stderr[-2000:]
    results = tmp_path / "results"
    result = run_script("main.py", *TINY_TRAIN, "--n_epoch", "1", "--data_dir", tmp_path / "data",
                        "--results_dir", results)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script("inference.py", "--results_dir", results)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy (all)" in result.stdout


def test_a_question_in_two_splits_is_refused_and_shared_images_are_reported(tmp_path, capsys):
    """Across all its input files: a test question also in the training file is a split leak, refused with both
    files and rows (with --skip_bad its training copy is left out, so the test set stays whole); a row repeated in
    another file is a duplicate; a test image that is also a training image, with other questions, is counted."""
    header = ",img_name,question,h,r,t,answer"
    (tmp_path / "train.csv").write_text(header + ",fold\n0,a.jpg,What is it?,Cat,class,Mammal,mammal,2\n"
                                        "1,b.jpg,Which flower?,Rose,family,Rosaceae,rosaceae,3\n"
                                        "2,c.jpg,Which bird?,Crow,order,Passeriformes,passerine,1\n")
    (tmp_path / "test.csv").write_text(header + "\n0,a.jpg,What is it?,Cat,class,Mammal,mammal\n"
                                       "1,b.jpg,What colour is it?,Rose,colour,Red,red\n"
                                       "2,d.jpg,Which tool?,Horn,class,Brass,brass\n")
    placeholder_images(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    args = [str(tmp_path / "train.csv")], [str(tmp_path / "test.csv")], str(tmp_path / "img"), str(tmp_path / "out")
    with pytest.raises(DataError) as error:
        download.import_csv(*args)
    assert "1 put a question on an image into two splits" in str(error.value)
    assert f"{tmp_path / 'train.csv'} row 2: the same image and question is in the test split too, " \
           f"{tmp_path / 'test.csv'} row 2" in str(error.value)
    assert not (tmp_path / "out" / "data.csv").exists()
    assert download.import_csv(*args, skip_bad=True) == 5
    df = read_data(tmp_path / "out")
    assert df.loc[df["image"] == "a.jpg", "split"].tolist() == ["test"]
    assert pd.read_csv(tmp_path / "out" / "skipped_rows.csv")["source_row"].tolist() == [2]
    assert "warning: 1 test images (1 test rows) are training images too" in capsys.readouterr().out

    with pytest.raises(DataError, match="train.csv is given twice"):
        download.import_csv([str(tmp_path / "train.csv")], [str(tmp_path / "train.csv")], *args[2:])
    (tmp_path / "copy.csv").write_bytes((tmp_path / "train.csv").read_bytes())
    with pytest.raises(DataError, match=f"copy.csv row 3: duplicate of {tmp_path / 'train.csv'} row 3"):
        download.import_csv([str(tmp_path / "train.csv"), str(tmp_path / "copy.csv")], [], str(tmp_path / "img"),
                            str(tmp_path / "out2"))
