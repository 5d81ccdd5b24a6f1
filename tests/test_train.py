"""Training end to end on the tiny sample: it learns, writes a complete run directory, and its
checkpoint round-trips to identical predictions."""
import json
import shutil
import sys

import pytest
import torch

import checkpoints
import util
from conftest import TINY_TRAIN
from answering import make_dataset, predict
from models import load_run
from images import ImageCache
from loaders import make_loader
from vqa_dataset import read_data, select_rows


def valid_accuracy(model, tokenizer, config, answers, data_dir):
    df = select_rows(read_data(data_dir), "valid", config["train_data"])
    images = ImageCache(data_dir, df["image"], config["img_size"], progress=False)
    dataset = make_dataset(model, df, images, tokenizer, answers, config["max_token"])
    return predict(model, make_loader(dataset, 64, 0, torch.device("cpu")), torch.device("cpu"))


def test_run_directory_is_complete(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "answers.json", "history.json", "tokenizer", "text_encoder"} <= names
    weights = list(trained_run.glob("infer_model_*.safetensors"))
    assert len(weights) == 1  # only the best epoch is kept
    config = json.loads((trained_run / "config.json").read_text())
    assert weights[0].name == config["weights"] == f"infer_model_{100 * config['best_valid_acc']:.2f}.safetensors"
    assert trained_run.name.startswith("all_")
    assert not list(trained_run.rglob("*.tmp"))


def test_run_report(trained_run, sample_dir):
    from PIL import Image

    assert Image.open(trained_run / "curves.png").size[0] > 300
    config = json.loads((trained_run / "config.json").read_text())
    answers = json.loads((trained_run / "answers.json").read_text())
    text = (trained_run / "report.md").read_text()
    data = read_data(sample_dir)
    for split in ("train", "valid", "test"):
        rows = data[data["split"] == split]
        counts = [len(rows)] + [int((rows[c] == v).sum()) for c, v in [("question_type", "A"), ("question_type", "B"),
                  ("category", "vqa"), ("category", "triple"), ("category", "abstract")]]
        assert f"| {split} | " + " | ".join(map(str, counts)) + " |" in text
    assert f"Answer vocabulary: {len(answers)} answers" in text and f"Most frequent: {answers[0]} (" in text
    assert f"Best epoch {config['best_epoch']} of 3: valid accuracy {100 * config['best_valid_acc']:.2f}%" in text
    assert f"| all | {100 * config['best_valid_acc']:.2f}% | {config['data_stats']['valid']} |" in text
    assert "| A | " in text and "| abstract | " in text and "![curves](curves.png)" in text


def test_training_learns(trained_run, sample_dir):
    history = json.loads((trained_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    valid = select_rows(read_data(sample_dir), "valid")
    majority = valid["answer"].value_counts().iloc[0] / len(valid)
    best = max(row["valid_acc"] for row in history)
    assert best > 2 * majority, f"valid accuracy {best:.3f} is not clearly above the majority answer's {majority:.3f}"


def test_checkpoint_round_trip_gives_identical_predictions(trained_run, sample_dir, tmp_path):
    model, tokenizer, config, answers, _ = load_run(str(trained_run))
    first = valid_accuracy(model, tokenizer, config, answers, sample_dir)
    # the saved weights reproduce the validation accuracy measured during training
    assert first["accuracy"] == pytest.approx(config["best_valid_acc"], abs=1e-9)

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    for old in copy.glob("infer_model_*.safetensors"):
        old.unlink()
    checkpoints.save_weights(model, str(copy / config["weights"]))
    again = load_run(str(copy / config["weights"]))
    second = valid_accuracy(*again[:4], sample_dir)
    assert torch.equal(first["pred"], second["pred"]) and torch.equal(first["prob"], second["prob"])


def test_weights_that_do_not_match_are_refused(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["dim_h"] += 1
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(util.CheckpointError, match="dim_h is 256 in the weights but 257 in config.json"):
        load_run(str(copy))
    # without the config saved inside the weights (a plain state dict), the shapes still name what differs
    from safetensors.torch import load_file

    weights = next(copy.glob("infer_model_*.safetensors"))
    torch.save(load_file(weights), copy / "plain.pt")
    with pytest.raises(util.CheckpointError, match=r"shape \(file vs model\)"):
        load_run(str(copy / "plain.pt"))


def test_run_dirs_are_never_overwritten(tmp_path):
    first = util.make_run_dir(str(tmp_path), "A")
    second = util.make_run_dir(str(tmp_path), "A")
    assert first != second and second.startswith(first)


def test_train_data_b_uses_only_type_b(sample_dir, tmp_path):
    import main

    run_dir = main.main(TINY_TRAIN + ["--data_dir", str(sample_dir), "--results_dir", str(tmp_path),
                                      "--train_data", "B", "--n_epoch", "1", "--use_transformer_layer"])
    config = json.loads((tmp_path / run_dir.split("/")[-1] / "config.json").read_text())
    answers = json.loads((tmp_path / run_dir.split("/")[-1] / "answers.json").read_text())
    df = read_data(sample_dir)
    type_b_train = df[(df["split"] == "train") & (df["question_type"] == "B")]
    assert sorted(answers) == sorted(type_b_train["answer"].unique())
    assert config["data_stats"]["train"] == len(type_b_train) and config["use_transformer_layer"]
    assert run_dir.split("/")[-1].startswith("B_")


def test_without_the_image_cache_training_is_identical(trained_run, sample_dir, tmp_path):
    import main

    run_dir = main.main(TINY_TRAIN + ["--data_dir", str(sample_dir), "--results_dir", str(tmp_path),
                                      "--no-image_cache"])
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    history = json.loads((trained_run / "history.json").read_text())
    assert strip(json.loads(open(f"{run_dir}/history.json").read())) == strip(history)


def test_report_to_wandb_without_wandb_is_a_clear_error_before_any_work(sample_dir, tmp_path, monkeypatch):
    import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed: `import wandb` fails
    with pytest.raises(SystemExit) as stop:
        main.main(TINY_TRAIN + ["--report_to", "wandb", "--data_dir", str(sample_dir), "--results_dir", str(tmp_path)])
    assert "--report_to wandb needs the wandb package: pip install wandb" in str(stop.value)
    assert not list(tmp_path.iterdir())  # no run directory was made
