"""Bad input: encodings, every row fault reported together, --skip_bad, and the cached image check."""
import json
import shutil

import pandas as pd
import pytest

import images
import vqa_dataset
from conftest import TINY_TRAIN, run_script
from vqa_dataset import DataError, check_images, load_data, read_data

KOREAN = "이미지 속 동물은 무엇이야?"


def make_data(root, sample_dir, rows=None, n=12):
    """A small canonical data set with copies of real sample images."""
    (root / "image").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(sample_dir / "image" / f"scene_{i:05d}.jpg", root / "image" / f"{i}.jpg")
    rows = rows or [{"image": f"{i}.jpg", "question": f"{KOREAN} {i}", "answer": "고양이" if i % 2 else "개"}
                    for i in range(n)]
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    return root


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp949", "euc-kr"])
def test_encodings_keep_korean(tmp_path, encoding):
    (tmp_path / "data.csv").write_bytes(f"image,question,answer\na.jpg,{KOREAN},고양이\n".encode(encoding))
    df = read_data(tmp_path)
    assert df.loc[0, "question"] == KOREAN and df.loc[0, "answer"] == "고양이"


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_other_encodings_are_a_clear_error(tmp_path, encoding):
    (tmp_path / "data.csv").write_bytes("image,question,answer\nä.jpg,Qué ès ça?,été\n".encode(encoding))
    with pytest.raises(DataError, match="UTF-8"):
        read_data(tmp_path)


def test_every_fault_is_reported_together(tmp_path, sample_dir):
    rows = [{"image": f"{i}.jpg", "question": f"q{i}", "answer": "a"} for i in range(12)]
    rows[1]["question"] = ""
    rows[2]["answer"] = "  "
    rows[4] = dict(rows[3])  # a duplicate of the row above
    rows[5]["image"] = "missing.jpg"
    rows[6]["image"] = "folder.jpg"  # unreadable: a directory where a file should be
    rows[7]["image"] = "truncated.jpg"
    rows[8]["image"] = "corrupt.jpg"
    rows[9]["image"] = "empty.jpg"
    data = make_data(tmp_path, sample_dir, rows)
    (data / "image" / "folder.jpg").mkdir()
    jpeg = (sample_dir / "image" / "scene_00000.jpg").read_bytes()
    (data / "image" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (data / "image" / "corrupt.jpg").write_bytes(b"this is not an image" * 10)
    (data / "image" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as error:
        load_data(data, progress=False)
    message = str(error.value)
    for expected in ["row 3: column question is empty", "row 4: column answer is empty", "row 6: duplicate of row 5",
                     "row 7: column image:", "missing.jpg does not exist", "row 8:", "folder.jpg cannot be read",
                     "row 9:", "truncated.jpg is truncated", "row 10:", "corrupt.jpg is not a readable image",
                     "row 11:", "empty.jpg is an empty file", "--skip_bad", str(data / "data.csv")]:
        assert expected in message, (expected, message)
    assert "row 2:" not in message and "row 12" not in message

    good, skipped = load_data(data, skip_bad=True, progress=False)
    assert sorted(skipped["row"]) == [3, 4, 6, 7, 8, 9, 10, 11]
    assert sorted(good["row"]) == [2, 5, 12, 13]
    assert skipped["problem"].str.len().min() > 0


def test_bad_values_are_row_faults(tmp_path, sample_dir):
    rows = [{"image": f"{i}.jpg", "question": f"q{i}", "answer": "a", "question_type": "A", "split": "train"}
            for i in range(4)]
    rows[1]["question_type"] = "C"
    rows[2]["split"] = "dev"
    with pytest.raises(DataError) as error:
        load_data(make_data(tmp_path, sample_dir, rows, n=4), progress=False)
    assert "row 3: column question_type is not A or B" in str(error.value)
    assert "row 4: column split is not one of train, valid, test" in str(error.value)


def test_main_stops_without_traceback_and_skip_bad_records_the_rows(tmp_path, sample_dir):
    data = pd.read_csv(sample_dir / "data.csv", dtype=str, keep_default_na=False)
    data.loc[[0, 5], "answer"] = ""
    data.loc[7, "image"] = "gone.jpg"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image").symlink_to(sample_dir / "image")
    data.to_csv(tmp_path / "data" / "data.csv", index=False)
    args = [*TINY_TRAIN, "--n_epoch", "1", "--data_dir", tmp_path / "data", "--results_dir", tmp_path / "results"]
    result = run_script("main.py", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "rows 2, 7: column answer is empty" in result.stderr and "gone.jpg does not exist" in result.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())

    result = run_script("main.py", *args, "--skip_bad")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 3 of 600 rows" in result.stdout
    run_dir = next((tmp_path / "results").iterdir())
    skipped = pd.read_csv(run_dir / "skipped_rows.csv")
    assert sorted(skipped["row"]) == [2, 7, 9]
    assert json.loads((run_dir / "config.json").read_text())["data_stats"]["skipped_rows"] == 3


def test_image_check_is_cached_until_files_change(tmp_path, sample_dir, monkeypatch):
    data = make_data(tmp_path, sample_dir, n=5)
    names = [f"{i}.jpg" for i in range(5)]
    assert check_images(data, names, progress=False) == {name: "" for name in names}
    calls = []
    original = images.check_image
    monkeypatch.setattr(vqa_dataset, "check_image", lambda path: calls.append(path) or original(path))
    assert check_images(data, names, progress=False) == {name: "" for name in names}
    assert calls == []  # nothing was read again
    (data / "image" / "3.jpg").write_bytes(b"garbage")
    result = check_images(data, names, progress=False)
    assert [p.rsplit("/", 1)[-1] for p in calls] == ["3.jpg"]
    assert result["3.jpg"].startswith("is not a readable image")
