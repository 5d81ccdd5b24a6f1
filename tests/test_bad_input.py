"""Bad input, class by class: a user's files are never lost or read outside the data, every image is seen as it
really is or refused with its row, options and files are checked before any work, and answers are one per meaning."""
import io
import json
import os
import shutil
import sys
import unicodedata
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import download
import main
import util
import images
import vqa_dataset
from conftest import ROOT, TINY_TRAIN, run_main, run_script
from images import ImageCache, cache_users, check_image, load_image, register_cache_user, to_rgb
from vqa_dataset import DataError, load_data, read_data, validate


def jpeg(path, colour=(200, 30, 30), size=(32, 24), **save):
    Image.new("RGB", size, colour).save(path, "JPEG", **save)
    return path


def data_dir(root, rows, images=()):
    (root / "image").mkdir(parents=True, exist_ok=True)
    for name in images:
        jpeg(root / "image" / name)
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    return root


# ---------------------------------------------------------------- a user's files

@pytest.mark.parametrize("where", ["absolute", "climbing"])
def test_import_never_touches_an_image_path_outside_the_image_folder(tmp_path, where):
    outside = tmp_path / "home" / "pics"
    outside.mkdir(parents=True)
    precious = jpeg(outside / "a.jpg", colour=(1, 2, 3))
    before = precious.read_bytes()
    (tmp_path / "img").mkdir()
    jpeg(tmp_path / "img" / "ok.jpg")
    name = str(precious) if where == "absolute" else "../home/pics/a.jpg"
    csv = tmp_path / "data.csv"
    pd.DataFrame([{"image": name, "question": "q1", "answer": "a"},
                  {"image": "ok.jpg", "question": "q2", "answer": "b"}]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="row 2: column image is an absolute path or leaves the image folder"):
        download.import_csv([str(csv)], [], str(tmp_path / "img"), str(tmp_path / "out"))
    assert download.import_csv([str(csv)], [], str(tmp_path / "img"), str(tmp_path / "out"), skip_bad=True) == 1
    assert not precious.is_symlink() and precious.read_bytes() == before


def test_import_never_replaces_a_users_file_but_renews_its_own_links(tmp_path):
    for folder in ("img1", "img2"):
        (tmp_path / folder).mkdir()
        jpeg(tmp_path / folder / "a.jpg")
    csv = tmp_path / "data.csv"
    pd.DataFrame([{"image": "a.jpg", "question": "q", "answer": "a"}]).to_csv(csv, index=False)
    download.import_csv([str(csv)], [], str(tmp_path / "img1"), str(tmp_path / "out"))
    download.import_csv([str(csv)], [], str(tmp_path / "img2"), str(tmp_path / "out"))  # its own link: renewed
    assert os.readlink(tmp_path / "out" / "image" / "a.jpg") == str(tmp_path / "img2" / "a.jpg")

    own = tmp_path / "mine" / "image"
    own.mkdir(parents=True)
    mine = jpeg(own / "a.jpg", colour=(9, 9, 9))
    before = mine.read_bytes()
    with pytest.raises(util.UserFileError, match="never replaces a user's file"):
        download.import_csv([str(csv)], [], str(tmp_path / "img1"), str(tmp_path / "mine"))
    assert not mine.is_symlink() and mine.read_bytes() == before


# what each script writes into a folder a user may own, and a command line that writes it there
OUTPUTS = {"sample": ["data.csv", "triples.csv", "image/scene_00000.jpg"], "import": ["data.csv", "image/a.jpg"],
           "zip": ["image/a.jpg"], "kge": ["settings.json", "embeddings.safetensors"],
           "report": ["comparison.md", "comparison.csv"]}


def writing_command(script, source, out, sample_dir, trained_run):
    source.mkdir()
    jpeg(source / "a.jpg")
    pd.DataFrame([{"image": "a.jpg", "question": "q", "answer": "a"}]).to_csv(source / "data.csv", index=False)
    zip_of(source / "image.zip", {"image/a.jpg": (source / "a.jpg").read_bytes()})
    import kge
    import report

    return {"sample": (download, "--sample", "--n_images", 2, "--out", out),
            "import": (download, "--from_csv", source / "data.csv", "--image_dir", source, "--out", out),
            "zip": (download, "--zip", source / "image.zip", "--data_dir", out),
            "kge": (kge, "--triples", sample_dir / "triples.csv", "--out", out, "--dim", 8, "--epochs", 1, "--device",
                    "cpu"),
            "report": (report, "--compare", trained_run, "--out", out)}[script]


@pytest.mark.parametrize("script", sorted(OUTPUTS))
def test_no_script_replaces_a_file_it_did_not_write(script, tmp_path, sample_dir, trained_run):
    """A user's data.csv (triples.csv, image, kge file, comparison) in the output folder is refused by name before
    any work and left as it is; --force replaces it; a file the script wrote is replaced on a rerun, until it is
    edited: then it is the user's."""
    module, *args = writing_command(script, tmp_path / "source", tmp_path / "out", sample_dir, trained_run)
    for name in OUTPUTS[script]:
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_bytes(b"a user's own " + name.encode())
    message = run_main(module, *args)
    assert message.startswith("error: ") and "never replaces a user's file" in message and "--force" in message
    assert str(tmp_path / "out" / OUTPUTS[script][0]) in message
    assert all((tmp_path / "out" / n).read_bytes() == b"a user's own " + n.encode() for n in OUTPUTS[script])
    assert run_main(module, *args, "--force") == ""
    assert all((tmp_path / "out" / n).read_bytes() != b"a user's own " + n.encode() for n in OUTPUTS[script])
    assert run_main(module, *args) == ""  # its own files: replaced
    edited = tmp_path / "out" / OUTPUTS[script][0]
    edited.write_bytes(edited.read_bytes() + b"\n")
    assert "never replaces a user's file" in run_main(module, *args)
    assert edited.read_bytes().endswith(b"\n")


def test_a_data_folder_that_is_a_file_is_named_as_such(tmp_path, monkeypatch):
    (tmp_path / "data.csv").write_text("image,question,answer\na.jpg,q,a\n")
    import kge

    with pytest.raises(DataError, match="--data_dir .* is a file, not a folder"):
        read_data(tmp_path / "data.csv")
    message = run_main(kge, "--data_dir", tmp_path / "data.csv", "--out", tmp_path / "kge")
    assert message.startswith("error: --data_dir") and "is a file, not a folder" in message


@pytest.mark.parametrize("case", ["a folder", "a missing file", "kge --out a file"])
def test_paths_of_the_wrong_kind_are_clear_errors_before_any_work(case, tmp_path, sample_dir, capsys):
    import kge

    (tmp_path / "img").mkdir()
    (tmp_path / "existing.txt").write_text("a user's file")
    if case == "kge --out a file":
        message = run_main(kge, "--data_dir", sample_dir, "--out", tmp_path / "existing.txt", "--epochs", 1)
        assert "--out" in message and "is a file, not a folder" in message
        assert "training on" not in capsys.readouterr().out  # refused before the training, not after it
    else:
        given = tmp_path / ("img" if case == "a folder" else "missing.csv")
        message = run_main(download, "--from_csv", given, "--image_dir", tmp_path / "img", "--out", tmp_path / "out")
        assert message.startswith(f"error: {given} ")
        assert ("is a folder" if case == "a folder" else "not found") in message
    assert message.startswith("error: ") and (tmp_path / "existing.txt").read_text() == "a user's file"


def test_validation_refuses_image_paths_outside_the_image_folder_without_opening_them(tmp_path, monkeypatch):
    secret = jpeg(tmp_path / "secret.jpg")
    rows = [{"image": str(secret), "question": "q1", "answer": "a"},
            {"image": "../secret.jpg", "question": "q2", "answer": "a"},
            {"image": "ok.jpg", "question": "q3", "answer": "a"}]
    data = data_dir(tmp_path / "data", rows, ["ok.jpg"])
    opened = []
    real = images.check_image
    monkeypatch.setattr(vqa_dataset, "check_image", lambda path: opened.append(path) or real(path))
    with pytest.raises(DataError) as error:
        load_data(data, progress=False)
    assert "rows 2, 3: column image is an absolute path or leaves the image folder" in str(error.value)
    assert [os.path.basename(p) for p in opened] == ["ok.jpg"]


# ---------------------------------------------------------------- real files

def test_bok_vqa_test_files_without_fold_import(tmp_path):
    header = ",img_name,question,h,r,t,answer"
    (tmp_path / "train.csv").write_text(header + ",fold\n0,a.jpg,What is it?,Cat,class,Mammal,mammal,1.0\n"
                                        "1,b.jpg,What is this?,Rose,family,Rosaceae,rosaceae,2.0\n")
    (tmp_path / "test.csv").write_text(header + "\n0,c.jpg,Which bird?,Crow,order,Passeriformes,passerine\n"
                                       "1,d.jpg,Which tool?,Trumpet,range,Written:180px|center,180\n")
    (tmp_path / "img").mkdir()
    for name in "abcd":
        jpeg(tmp_path / "img" / f"{name}.jpg")
    download.import_csv([str(tmp_path / "train.csv")], [str(tmp_path / "test.csv")], str(tmp_path / "img"),
                        str(tmp_path / "out"))
    df = read_data(tmp_path / "out")
    assert df["split"].tolist() == ["valid", "train", "test", "test"]
    assert vqa_dataset.parse_triples(df.loc[3, "triple"]) == [("Trumpet", "range", "Written:180px|center")]


def test_nia_variants_keep_every_triple(tmp_path):
    (tmp_path / "img").mkdir()
    for name in "abc":
        jpeg(tmp_path / "img" / f"{name}.jpg")
    pd.DataFrame({"": [0, 1, 2], "img_path": ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"],
                  "question": ["이 곤충은?", "이것은?", "이 악기는?"], "answer": ["곤충", "동물", "호른"],
                  "main_obj": ["나비", "나비", "호른"],
                  "Triple": ["['나비', '강', '곤충']=['나비', '계', '동물']", "['나비', '계', '동물']", ""]}
                 ).to_csv(tmp_path / "triple_data.csv", index=False)
    pd.DataFrame({"img_path": ["/x/a.jpg", "/x/b.jpg"], "question": ["이 곤충은?", "이것은?"],
                  "answer": ["곤충", "동물"], "Triple": ["", "['나비', '계', '동물']"], "subject": ["나비", "나비"],
                  "relation": ["강", "계"], "object": ["곤충", "동물"]}
                 ).to_csv(tmp_path / "triple_sep.csv", index=False)
    download.import_csv([str(tmp_path / "triple_data.csv")], [], str(tmp_path / "img"), str(tmp_path / "out1"))
    df = read_data(tmp_path / "out1")
    assert [vqa_dataset.parse_triples(t) for t in df["triple"]] == [
        [("나비", "강", "곤충"), ("나비", "계", "동물")], [("나비", "계", "동물")], []]
    assert df["question_type"].tolist() == ["B", "B", "A"]
    download.import_csv([str(tmp_path / "triple_sep.csv")], [], str(tmp_path / "img"), str(tmp_path / "out2"))
    assert read_data(tmp_path / "out2")["triple"].tolist() == ["나비|강|곤충", "나비|계|동물"]


# ---------------------------------------------------------------- images as they really are

def test_exif_rotation_is_applied_everywhere_and_changes_the_cache_key(tmp_path):
    picture = np.zeros((20, 40, 3), np.uint8)
    picture[:, :20] = (250, 0, 0)  # red left half, blue right half: landscape
    picture[:, 20:] = (0, 0, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": a phone held upright
    (tmp_path / "image").mkdir()
    Image.fromarray(picture).save(tmp_path / "image" / "phone.jpg", exif=exif.tobytes(), quality=95)
    seen = load_image(tmp_path / "image" / "phone.jpg", 40)
    assert seen[:20, :, 0].mean() > 150 and seen[20:, :, 2].mean() > 150  # red on top, blue below
    cache = ImageCache(tmp_path, ["phone.jpg"], 40, progress=False)
    assert np.array_equal(cache.get(0), seen)
    from images import CACHE_FORMAT

    assert CACHE_FORMAT != "" and images.CACHE_FORMAT == "rgb-v2"
    images.CACHE_FORMAT = "older"
    try:
        assert ImageCache(tmp_path, ["phone.jpg"], 40, progress=False).path != cache.path
    finally:
        images.CACHE_FORMAT = "rgb-v2"


def image_in_mode(mode):
    if mode == "I;16":
        return Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16))
    if mode == "RGBA":
        return Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # transparent red: white on a page
    if mode == "LA":
        return Image.new("LA", (8, 8), (0, 255))
    if mode == "P":
        image = Image.new("P", (8, 8), 1)
        image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        return image
    if mode == "CMYK":
        return Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    return Image.new(mode, (8, 8), 128)


@pytest.mark.parametrize("mode, expected", [("L", (128, 128, 128)), ("I;16", (127, 127, 127)),
                                            ("RGBA", (255, 255, 255)), ("LA", (0, 0, 0)), ("P", (10, 200, 30)),
                                            ("CMYK", (255, 0, 0)), ("1", (255, 255, 255))])
def test_every_image_mode_becomes_its_rgb_picture(mode, expected):
    rgb = np.asarray(to_rgb(image_in_mode(mode)))
    assert rgb.shape == (8, 8, 3) and tuple(rgb[0, 0]) == expected


def test_an_image_without_an_rgb_picture_is_a_row_fault(tmp_path):
    data = data_dir(tmp_path, [{"image": "float.tif", "question": "q", "answer": "a"},
                               {"image": "ok.jpg", "question": "q2", "answer": "a"}], ["ok.jpg"])
    Image.fromarray(np.zeros((8, 8), np.float32)).save(data / "image" / "float.tif")
    with pytest.raises(DataError, match="row 2: column image: .*float.tif has pixels of mode F"):
        load_data(data, progress=False)


def corrupt_png(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"IDAT") + 40
    raw[start:start + 200] = b"\x00" * 200  # a broken data chunk; IEND still at the end
    path.write_bytes(bytes(raw))


def half_jpeg(path):
    """A JPEG whose second half is overwritten, its end marker intact. (One cut in half with an end marker appended
    decodes without an error in PIL and libjpeg-turbo, which fill the missing part: no decoder can flag it.)"""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path, quality=95)
    raw = path.read_bytes()
    middle = len(raw) // 2
    path.write_bytes(raw[:middle] + bytes(range(256)) * 4 + raw[middle:])


def test_corruption_behind_an_intact_header_and_tail_is_a_skippable_row(sample_dir, tmp_path):
    data = pd.read_csv(sample_dir / "data.csv", dtype=str, keep_default_na=False)
    (tmp_path / "data" / "image").mkdir(parents=True)
    for name in data["image"].unique():
        os.symlink(sample_dir / "image" / name, tmp_path / "data" / "image" / name)
    corrupt_png(tmp_path / "data" / "image" / "broken.png")
    half_jpeg(tmp_path / "data" / "image" / "half.jpg")
    data.loc[0, "image"], data.loc[1, "image"] = "broken.png", "half.jpg"
    data.to_csv(tmp_path / "data" / "data.csv", index=False)
    for name in ("broken.png", "half.jpg"):
        assert check_image(str(tmp_path / "data" / "image" / name)).startswith("is not a readable image")
    args = [*TINY_TRAIN, "--n_epoch", "1", "--data_dir", tmp_path / "data", "--results_dir", tmp_path / "results"]
    result = run_script("main.py", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "row 2: column image:" in result.stderr and "row 3: column image:" in result.stderr
    result = run_script("main.py", *args, "--skip_bad")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(pd.read_csv(next((tmp_path / "results").iterdir()) / "skipped_rows.csv")["row"]) == [2, 3]
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_cache_build_names_the_file_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "image").mkdir()
    jpeg(tmp_path / "image" / "a.jpg")
    half_jpeg(tmp_path / "image" / "b.jpg")  # as if it changed after validation
    with pytest.raises(DataError, match="b.jpg is not a readable image.*passed the check"):
        ImageCache(tmp_path, ["a.jpg", "b.jpg"], 32, progress=False)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("images_")]


def test_caches_no_run_uses_are_reported_with_their_size_and_dead_temporary_files_removed(tmp_path, capsys):
    (tmp_path / "image").mkdir()
    jpeg(tmp_path / "image" / "a.jpg")
    cache = tmp_path / "cache"
    cache.mkdir()
    unused = cache / "images_64px_0123456789abcdef.npy"
    unused.write_bytes(b"\0" * 3_000_000)
    run, gone = tmp_path / "results" / "all_0101_0000", tmp_path / "results" / "all_0101_0001"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    in_use = cache / "images_224px_1111111111111111.npy"  # as a training run leaves it before its inference
    in_use.write_bytes(b"\0" * 1000)
    register_cache_user(str(in_use), run)
    orphan = cache / "images_128px_2222222222222222.npy"  # its run was deleted
    orphan.write_bytes(b"\0" * 1000)
    register_cache_user(str(orphan), gone)
    dead = cache / "images_32px_fedcba9876543210.npy.999999.tmp"  # a pid no process has
    dead.write_bytes(b"\0" * 1000)
    ImageCache(tmp_path, ["a.jpg"], 32, user=run)
    out = capsys.readouterr().out
    assert "also holds 2 image cache(s) that no run uses, 0.00 GiB" in out and not dead.exists()
    assert unused.name in out and orphan.name in out and in_use.name not in out
    current = next(cache.glob("images_32px_*.npy"))
    assert cache_users(str(current)) == [str(run)]  # registered once, however often it is read
    ImageCache(tmp_path, ["a.jpg"], 32, user=run)
    assert (cache / (current.name + ".users")).read_text().splitlines() == [str(run)]


def test_a_decompression_bomb_is_a_clear_error(tmp_path, trained_run):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)  # 200 million pixels in 25 kB
    assert "decompression bomb" in check_image(str(bomb))
    result = run_script("inference_each.py", "--model_path", trained_run, "--image", bomb, "--question", "무엇?")
    assert result.returncode != 0 and "Traceback" not in result.stderr and "decompression bomb" in result.stderr


# ---------------------------------------------------------------- options and files, before any work

@pytest.mark.parametrize("flag, value, message", [
    ("--n_epoch", "0", "at least 1"), ("--lr", "-1", "above 0"), ("--batch_size", "0", "at least 1"),
    ("--max_token", "2", "at least 3"), ("--img_size", "16", "at least 32"), ("--dropout", "1.5", "in [0, 1)"),
    ("--warmup", "2", "in [0, 1]"), ("--num_workers", "-1", "at least 0"), ("--clip_grad", "-1", "at least 0"),
    ("--n_heads", "0", "at least 1"), ("--label_smoothing", "1", "in [0, 1)"), ("--gamma", "-2", "at least 0")])
def test_numeric_options_are_range_checked_at_parse_time(flag, value, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main.parse_args([flag, value, "--results_dir", str(tmp_path / "results")])
    assert stopped.value.code == 2 and f"argument {flag}: must be {message}" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_n_heads_that_do_not_divide_the_hidden_size_are_a_clear_error(sample_dir, tmp_path):
    result = run_script("main.py", *TINY_TRAIN, "--data_dir", sample_dir, "--results_dir", tmp_path,
                        "--use_transformer_layer", "--n_heads", "3")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--n_heads 3 does not divide" in result.stderr


def test_a_results_dir_that_cannot_be_made_is_a_clear_error_before_any_work(sample_dir, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = run_script("main.py", *TINY_TRAIN, "--data_dir", sample_dir, "--results_dir", tmp_path / "file" / "runs")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--results_dir" in result.stderr and "checking images" not in result.stderr


def test_a_read_only_data_folder_is_evaluated_with_its_caches_elsewhere(trained_run, sample_dir, tmp_path,
                                                                        monkeypatch, capsys):
    import inference

    data = tmp_path / "readonly"
    data.mkdir()
    shutil.copy(sample_dir / "data.csv", data / "data.csv")
    shutil.copytree(sample_dir / "image", data / "image")
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    real = images.writable
    monkeypatch.setattr(images, "writable", lambda d: not str(d).startswith(str(data)) and real(d))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    monkeypatch.setattr(sys, "argv", ["inference.py", "--model_path", str(trained_run), "--data_dir", str(data)])
    inference.main()
    out = capsys.readouterr().out
    assert "cannot be written, so its caches and generated split go to" in out and "test accuracy" in out
    assert list((tmp_path / "user_cache").rglob("images_*.npy"))
    read_data(data)  # the data's own split (inference took the run's): made in the user's cache too
    assert list((tmp_path / "user_cache").rglob("split.csv"))
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before  # nothing written there


def test_an_empty_data_csv_is_a_clear_error(tmp_path):
    (tmp_path / "data.csv").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        read_data(tmp_path)


@pytest.mark.parametrize("damage", ["config broken", "config key", "answers broken", "answers not a list"])
def test_a_broken_run_file_names_the_file_and_key(trained_run, tmp_path, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    if damage == "config broken":
        (run_dir / "config.json").write_text('{"num_answers": 3,')
    elif damage == "config key":
        config = json.loads((run_dir / "config.json").read_text())
        del config["img_size"]
        (run_dir / "config.json").write_text(json.dumps(config))
    elif damage == "answers broken":
        (run_dir / "answers.json").write_text("[\"a\", ")
    else:
        (run_dir / "answers.json").write_text('{"a": 1}')
    result = run_script("inference.py", "--model_path", run_dir)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    expected = {"config broken": "config.json is not valid JSON", "config key": "lacks the key(s) img_size",
                "answers broken": "answers.json is not valid JSON", "answers not a list": "is not a list of answers"}
    assert expected[damage] in result.stderr


def test_resuming_a_finished_run_says_so_and_changes_nothing(trained_run):
    report = (trained_run / "report.md").read_bytes()
    result = run_script("main.py", "--resume", trained_run)
    assert result.returncode != 0 and "has finished all its 3 epochs" in result.stderr
    assert (trained_run / "report.md").read_bytes() == report


def test_inference_each_refuses_an_empty_question_and_notes_truncation(trained_run, sample_dir):
    image = sample_dir / "image" / "scene_00001.jpg"
    result = run_script("inference_each.py", "--model_path", trained_run, "--image", image, "--question", " \u200b ")
    assert result.returncode != 0 and "Traceback" not in result.stderr and "the question is empty" in result.stderr
    long = " ".join(["도형은 몇 개?"] * 30)
    result = run_script("inference_each.py", "--model_path", trained_run, "--image", image, "--question", long)
    assert result.returncode == 0 and "the model reads its first 32" in result.stdout


def zip_of(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_archives_that_are_empty_imageless_or_damaged_are_refused_and_leave_nothing(tmp_path):
    for entries, message in [({}, "holds no files"), ({"image/readme.txt": b"hello"}, "but no images")]:
        with pytest.raises(DataError, match=message):
            download.unpack(str(zip_of(tmp_path / "a.zip", entries)), str(tmp_path / "data"))
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(picture, "PNG")
    damaged = tmp_path / "damaged.zip"
    zip_of(damaged, {"image/ok.jpg": picture.getvalue(), "image/bad.jpg": picture.getvalue() * 3})
    raw = bytearray(damaged.read_bytes())
    at = raw.rindex(picture.getvalue()[:40]) + 60  # inside the second entry's stored data
    raw[at] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="is damaged"):
        download.unpack(str(damaged), str(tmp_path / "data"))
    left = [p for p in (tmp_path / "data").rglob("*") if p.is_file()] if (tmp_path / "data").exists() else []
    assert left == []  # nothing half-written, no marker


def test_unpacking_over_existing_images_refuses_a_users_and_replaces_its_own(tmp_path, capsys):
    (tmp_path / "data" / "image").mkdir(parents=True)
    (tmp_path / "data" / "image" / "a.jpg").write_bytes(b"old")
    archive = str(zip_of(tmp_path / "a.zip", {"image/a.jpg": b"new", "image/b.jpg": b"b"}))
    with pytest.raises(util.UserFileError, match="never replaces a user's file"):
        download.unpack(archive, str(tmp_path / "data"))
    assert (tmp_path / "data" / "image" / "a.jpg").read_bytes() == b"old"
    download.unpack(archive, str(tmp_path / "data"), force=True)
    assert "1 of the archive's 2 files are in" in capsys.readouterr().out
    assert (tmp_path / "data" / "image" / "a.jpg").read_bytes() == b"new"
    download.unpack(archive, str(tmp_path / "data"))  # its own files now


def test_free_space_is_checked_on_the_target_file_system(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: asked.append(path) or shutil._ntuple_diskusage(1, 0, 1))
    with pytest.raises(DataError, match="GB free"):
        download.check_free_space(str(tmp_path / "not" / "yet" / "made"), 10)
    assert asked == [str(tmp_path)]


# ---------------------------------------------------------------- answers and text

def test_unicode_variants_of_an_answer_are_one_answer(tmp_path, capsys):
    word = "고양이"
    rows = [{"image": f"{i}.jpg", "question": f"q{i}", "answer": unicodedata.normalize("NFD" if i % 2 else "NFC", word)
             + (" " if i == 3 else "")} for i in range(4)]
    rows.append({"image": "4.jpg", "question": "\u200b \u00a0", "answer": "a"})  # only invisible and white space
    data = data_dir(tmp_path, rows, [f"{i}.jpg" for i in range(5)])
    good, skipped = load_data(data, skip_bad=True)
    assert set(good["answer"]) == {word} and "normalised the text of 3 rows" in capsys.readouterr().out
    assert skipped["row"].tolist() == [6] and "column question is empty" in skipped["problem"].iloc[0]
    assert validate(read_data(data), data, skip_bad=True, progress=False)[1]["row"].tolist() == [6]


def test_the_makefile_makes_a_venv_outside_one_and_names_python3_venv(tmp_path):
    import subprocess

    def make(*args, python):
        return subprocess.run(["make", "-n", *args, f"SYSTEM_PYTHON={python}"], cwd=ROOT, capture_output=True,
                              text=True, env={k: v for k, v in os.environ.items() if k != "CONDA_PREFIX"})

    system = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    outside = make("install", python=system)
    if sys.prefix == sys.base_prefix:  # this interpreter is no venv either: the plan is .venv's
        assert ".venv/bin/python -m pip install" in outside.stdout and "-m venv .venv" in outside.stdout
    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    inside = make("install", python=venv / "bin" / "python")
    assert f"{venv}/bin/python -m pip install" in inside.stdout and ".venv" not in inside.stdout
    fake = tmp_path / "python3"  # a Python whose venv module is missing, as Debian's without python3-venv
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = -m ] && [ \"$2\" = venv ] && exit 1\nexec {system} \"$@\"\n")
    fake.chmod(0o755)
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    made = subprocess.run(["make", ".venv/ready", f"SYSTEM_PYTHON={fake}"], cwd=work, capture_output=True, text=True)
    assert made.returncode != 0 and "python3-venv" in made.stdout + made.stderr and not (work / ".venv").exists()


# ---------------------------------------------------------------- paths are not text

EXACT_NAMES = ["two  spaces.jpg", " leading.jpg", "trailing .jpg", "no\u00a0break.jpg", "tab\there.jpg",
               "zero\u200bwidth.jpg", unicodedata.normalize("NFD", "고양이.jpg"), "plain.jpg"]


def test_image_paths_are_used_exactly_as_written(tmp_path, capsys):
    """Names with runs of spaces, leading or trailing spaces, non-breaking spaces, tabs, zero-width characters or in
    NFD are found as written, by training and by the importer, which writes them unchanged; a name whose file is on
    disk only in the other Unicode form uses that file and says so."""
    rows = [{"image": name, "question": f"q{i}", "answer": "a"} for i, name in enumerate(EXACT_NAMES)]
    rows.append({"image": unicodedata.normalize("NFC", "고양이.jpg"), "question": "nfc", "answer": "b"})
    data = data_dir(tmp_path / "data", rows, EXACT_NAMES)
    good, skipped = load_data(data, progress=False)
    assert len(skipped) == 0 and good["image"].tolist() == EXACT_NAMES + [EXACT_NAMES[6]]
    assert "1 image name(s) are on disk in another Unicode form than written" in capsys.readouterr().out
    download.import_csv([str(data / "data.csv")], [], str(data / "image"), str(tmp_path / "out"))
    imported = pd.read_csv(tmp_path / "out" / "data.csv", dtype=str, keep_default_na=False)
    assert imported["image"].tolist() == EXACT_NAMES + [EXACT_NAMES[6]]
    assert all(os.path.isfile(tmp_path / "out" / "image" / name) for name in EXACT_NAMES)


def test_a_missing_image_names_its_lookalike_and_how_they_differ(tmp_path):
    rows = [{"image": "plain\u200b.jpg", "question": "q1", "answer": "a"},
            {"image": "plain .jpg", "question": "q2", "answer": "a"}]
    data = data_dir(tmp_path, rows, ["plain.jpg"])
    with pytest.raises(DataError) as error:
        load_data(data, progress=False)
    assert "row 2: column image: '" in str(error.value)  # quoted, with escapes: it is not what it looks like
    assert ("the folder holds plain.jpg, which differs from it: U+200B ZERO WIDTH SPACE at character 6"
            in str(error.value))
    assert "U+0020 SPACE at character 6 as written, nothing on disk" in str(error.value)


def test_unpacking_writes_names_in_nfc_and_says_so(tmp_path, capsys):
    nfd = unicodedata.normalize("NFD", "고양이.jpg")
    download.unpack(str(zip_of(tmp_path / "mac.zip", {f"image/{nfd}": b"x", "image/a.jpg": b"y"})),
                    str(tmp_path / "data"))
    nfc = unicodedata.normalize("NFC", "고양이.jpg")
    assert sorted(os.listdir(tmp_path / "data" / "image")) == sorted([nfc, "a.jpg", download.UNPACKED_MARKER])
    assert "1 of the archive's file names are in NFD" in capsys.readouterr().out


# ---------------------------------------------------------------- encodings

def test_the_encoding_is_said_and_an_implausible_korean_reading_refused(tmp_path, capsys):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,question,answer\na.jpg,Was ist das?,Ärger\nb.jpg,Und das?,Äpfel\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        vqa_dataset.read_csv(latin)
    assert "read as CP949" in str(error.value) and "'a.jpg,Was ist das?,Ärger'" in str(error.value)
    assert "Re-save the file as UTF-8" in str(error.value)
    korean = tmp_path / "korean.csv"
    korean.write_bytes("image,question,answer\na.jpg,이 동물은?,고양이\nb.jpg,똠방각하는?,사람\n".encode("cp949"))
    assert vqa_dataset.read_csv(korean)["answer"].tolist() == ["고양이", "사람"]
    assert "is not UTF-8; read it as CP949/EUC-KR" in capsys.readouterr().out


def test_double_encoded_utf8_is_warned_of_with_its_repair(tmp_path, capsys):
    twice = "image,question,answer\na.jpg,이미지 속 동물은?,고양이\n".encode().decode("cp1252", "replace")
    mojibake = "image,question,answer\na.jpg,이미지 속 동물은?,고양이\n".encode().decode("latin-1")
    for text in (twice, mojibake):
        (tmp_path / "data.csv").write_text(text, encoding="utf-8")
        vqa_dataset.read_csv(tmp_path / "data.csv")
    out = capsys.readouterr().out
    assert "1 line(s) look double-encoded" in out and "would read 'a.jpg,이미지 속 동물은?,고양이'" in out


# ---------------------------------------------------------------- headers and values

@pytest.mark.parametrize("text, message", [
    ("image,question,answer,answer\na.jpg,q,x,y\n", "names column(s) ['answer'] more than once (columns [3, 4])"),
    ("image,question,answer,split \na.jpg,q,x,test\n", "column name(s) ['split '] have white space around them"),
    ("image,question,answer\na.jpg,q,x\nimage,question,answer\nb.jpg,q,y\n", "row 3 repeat the header line"),
    ("image,question,answer\n", "the file has no rows, only its header line"),
    ("\n\n  \n", "the file has no rows (it is empty or holds only blank lines"),
])
def test_header_faults_pandas_lets_through_are_named(text, message, tmp_path):
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(DataError) as error:
        read_data(tmp_path)
    assert message in str(error.value)
    assert not (tmp_path / "split.csv").exists()


def test_empty_column_names_are_not_repeated_names(tmp_path):
    (tmp_path / "data.csv").write_text("image,question,answer,,\na.jpg,q,x,,\n")  # a spreadsheet's empty columns
    assert vqa_dataset.read_csv(tmp_path / "data.csv")["answer"].tolist() == ["x"]


def test_missing_value_placeholders_are_row_faults_not_answers_or_entities(tmp_path):
    placeholders = ["nan", "None", "N/A", "NA", "null", "#N/A", "-"]
    rows = [{"image": "a.jpg", "question": f"q{i}", "answer": p, "triple": ""} for i, p in enumerate(placeholders)]
    rows += [{"image": "a.jpg", "question": "qt", "answer": "x", "triple": "고양이|class|NULL"},
             {"image": "a.jpg", "question": "ok", "answer": "x", "triple": "고양이|class|포유류"}]
    data = data_dir(tmp_path / "data", rows, ["a.jpg"])
    with pytest.raises(DataError) as error:
        load_data(data, progress=False)
    for row, p in enumerate(placeholders, start=2):
        assert f"row {row}: column answer is {p!r}, a missing-value placeholder" in str(error.value)
    assert "row 9: column triple has 'NULL', a missing-value placeholder" in str(error.value)
    good, skipped = load_data(data, skip_bad=True, progress=False)
    assert good["question"].tolist() == ["ok"] and len(skipped) == 8
    import kge

    (tmp_path / "triples.csv").write_text("h,r,t\n고양이,class,포유류\n개,class,N/A\n")
    with pytest.raises(DataError, match="row 3, column t: a missing-value placeholder"):
        kge.read_triples_csv(str(tmp_path / "triples.csv"))


# ---------------------------------------------------------------- archives

@pytest.mark.parametrize("entries, unpacked", [
    ({"VQA_NIA/data/image/a.jpg": b"a", "VQA_NIA/data/image/sub/b.jpg": b"b", "VQA_NIA/README.md": b"r"},
     ["a.jpg", "sub/b.jpg"]),
    ({"image/a.jpg": b"a", "readme.txt": b"r"}, ["a.jpg"]),
    ({"image/a.jpg": b"a", "__MACOSX/image/._a.jpg": b"j", "image/.DS_Store": b"j"}, ["a.jpg"]),
])
def test_an_archives_image_folder_is_found_and_junk_left_out_with_a_word(entries, unpacked, tmp_path, capsys):
    download.unpack(str(zip_of(tmp_path / "a.zip", entries)), str(tmp_path / "data"))
    image_dir = tmp_path / "data" / "image"
    assert sorted(str(p.relative_to(image_dir)) for p in image_dir.rglob("*") if p.is_file()) == \
        sorted(unpacked + [".unpacked"])
    assert f"left out {len(entries) - len(unpacked)} of the archive's entries" in capsys.readouterr().out


def test_an_archive_holding_only_an_archive_names_it(tmp_path):
    inner = zip_of(tmp_path / "image.zip", {"image/a.jpg": b"a"})
    with pytest.raises(DataError, match="it holds the archive image.zip: unpack that one instead"):
        download.unpack(str(zip_of(tmp_path / "outer.zip", {"image.zip": inner.read_bytes()})), str(tmp_path / "data"))


# ---------------------------------------------------------------- runs

def test_a_safetensors_file_main_py_did_not_write_is_named_as_such(trained_run, tmp_path):
    from safetensors.torch import save_file

    from models import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    weights = run_dir / "infer_model_99.0.safetensors"  # the one inference takes: the highest score
    save_file({"encoder.weight": __import__("torch").zeros(2, 2)}, str(weights))
    with pytest.raises(util.CheckpointError, match="is not a weights file of this repo") as error:
        load_run(str(run_dir))
    assert "config.json" not in str(error.value)


def test_report_compare_says_which_folders_are_not_runs(trained_run, tmp_path, capsys):
    import report

    (tmp_path / "kge").mkdir()
    assert run_main(report, "--compare", trained_run, tmp_path / "kge", "--out", tmp_path / "out") == ""
    assert f"left out {tmp_path / 'kge'}: not a run directory of main.py" in capsys.readouterr().out
