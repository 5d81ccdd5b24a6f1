"""BOK-VQA's protocol: the training files' fold column kept at import, the valid fold chosen at import or per run
(--valid_fold), and one command that rotates a model's valid fold and reports the mean over the folds."""
import json

import pandas as pd
import pytest

import download
import main
import model_card
import train
from conftest import TINY_TRAIN, only_run, run_main
from test_bad_input import jpeg
from vqa_dataset import read_data

FOLDS = [1, 2, 3, 1, 2, 3, 4, 4]


def bok_files(tmp_path):
    """A BOK-VQA training file of 8 rows in folds 1-4 (each on an image of its own) and a test file of 2."""
    header = ",img_name,question,h,r,t,answer"
    rows = [f"{i},i{i}.jpg,What is {i}?,H{i},class,T{i % 3},t{i % 3},{fold}.0" for i, fold in enumerate(FOLDS)]
    (tmp_path / "train.csv").write_text(header + ",fold\n" + "\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text(header + "\n0,x0.jpg,What is x?,H0,class,T0,t0\n1,x1.jpg,What is y?,H1,class,"
                                                "T1,t1\n")
    (tmp_path / "img").mkdir()
    for name in [f"i{i}" for i in range(8)] + ["x0", "x1"]:
        jpeg(tmp_path / "img" / f"{name}.jpg")


@pytest.mark.parametrize("valid_fold", [1, 3])
def test_the_import_keeps_the_fold_and_validates_on_the_chosen_one(tmp_path, valid_fold):
    bok_files(tmp_path)
    download.import_csv([str(tmp_path / "train.csv")], [str(tmp_path / "test.csv")], str(tmp_path / "img"),
                        str(tmp_path / "out"), valid_fold=valid_fold)
    df = read_data(tmp_path / "out")
    assert df["fold"].tolist() == [str(f) for f in FOLDS] + ["", ""]
    assert model_card.datasets(str(tmp_path / "out")) == ["BOK-VQA"]  # a model card names the data set
    assert df["split"].tolist() == ["valid" if f == valid_fold else "train" for f in FOLDS] + ["test", "test"]


def test_a_file_without_the_chosen_fold_is_said(tmp_path, capsys):
    bok_files(tmp_path)
    download.import_csv([str(tmp_path / "train.csv")], [], str(tmp_path / "img"), str(tmp_path / "out"),
                        valid_fold=5)
    assert "has no row of fold 5" in capsys.readouterr().out


@pytest.mark.parametrize("valid_fold", [2, 4])
def test_valid_fold_moves_exactly_that_fold_to_valid(tmp_path, valid_fold):
    bok_files(tmp_path)
    download.import_csv([str(tmp_path / "train.csv")], [str(tmp_path / "test.csv")], str(tmp_path / "img"),
                        str(tmp_path / "data"))
    args = main.parse_args(TINY_TRAIN + ["--data_dir", str(tmp_path / "data"), "--valid_fold", str(valid_fold)])
    data = train.load_training_data(args, train.setup(args))
    assert sorted(data.valid["fold"].astype(int)) == [valid_fold] * FOLDS.count(valid_fold)
    assert sorted(data.train["fold"].astype(int)) == sorted(f for f in FOLDS if f != valid_fold)
    assert (data.all_rows.loc[data.all_rows["fold"] == "", "split"] == "test").all()  # the test file stays test


def test_a_valid_fold_the_data_lacks_is_one_clear_error(sample_dir, tmp_path):
    for data, words in [(sample_dir, "has no fold column"), (None, "its folds are 1, 2, 3, 4")]:
        if data is None:
            bok_files(tmp_path)
            download.import_csv([str(tmp_path / "train.csv")], [], str(tmp_path / "img"), str(tmp_path / "data"))
            data = tmp_path / "data"
        message = run_main(main, *TINY_TRAIN, "--data_dir", data, "--valid_fold", "5", "--results_dir", tmp_path / "r")
        assert message.startswith("error: --valid_fold 5: no row of") and words in message, message
        assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_one_command_runs_a_model_over_the_folds_and_reports_the_mean(tmp_path, capsys):
    import compare

    bok_files(tmp_path)
    download.import_csv([str(tmp_path / "train.csv")], [str(tmp_path / "test.csv")], str(tmp_path / "img"),
                        str(tmp_path / "data"))
    args = ["--data_dir", tmp_path / "data", "--out", tmp_path / "folds", "--models", "baseline", "--seeds", "42",
            "--folds", "1", "2", "--", *TINY_TRAIN[2:], "--n_epoch", "1"]
    assert run_main(compare, *args) == ""
    runs = [only_run(tmp_path / "folds" / f"baseline_seed42_fold{k}") for k in (1, 2)]
    assert [json.loads((r / "config.json").read_text())["valid_fold"] for r in runs] == [1, 2]
    grouped = pd.read_csv(tmp_path / "folds" / "comparison_seeds.csv")
    tests = [json.loads((r / "eval_all.json").read_text())["accuracy"] for r in runs]
    assert grouped["runs"].tolist() == [2] and grouped["test_all"][0] == pytest.approx(sum(tests) / 2)
    assert "Mean over seeds and folds" in (tmp_path / "folds" / "comparison.md").read_text()
