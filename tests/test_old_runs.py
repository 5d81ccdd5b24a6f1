"""Runs trained before models had names (tests/fixtures/1b90e4d, saved by commit 1b90e4d): those whose options map
onto a registered model load and predict as they did, and give the training loss they gave; those that used a
retired part are refused with one clear error naming it and the last commit that loads them."""
import json
import shutil

import pandas as pd
import pytest
import torch

import inference
import models
from answering import make_dataset, to_device
from conftest import ROOT, run_main
from focal import build_loss
from images import ImageCache
from loaders import make_loader
from vqa_dataset import read_data, select_rows

FIXTURES = ROOT / "tests" / "fixtures" / "1b90e4d"
MAPPED = {"baseline": "baseline", "gel": "gel_vqa", "ideal_free_concat_copy": "oracle_triple",
          "text_free_copy": "oracle_text"}
RETIRED = {"text_dropout_copy": "--knowledge_dropout", "gel_text_cascade_kb_copy": "--knowledge gel_text"}


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """A copy of the fixtures (the scripts write into a run directory and a data folder's cache)."""
    copy = tmp_path_factory.mktemp("old") / "1b90e4d"
    shutil.copytree(FIXTURES, copy)
    return copy


@pytest.mark.parametrize("run", MAPPED)
def test_an_old_run_loads_as_its_named_model_and_predicts_as_before(old, run, monkeypatch):
    run_dir = old / "runs" / run
    before = pd.read_csv(FIXTURES / "runs" / run / "predictions_all.csv", keep_default_na=False)
    (run_dir / "predictions_all.csv").unlink()
    monkeypatch.chdir(ROOT)
    assert run_main(inference, "--model_path", run_dir, "--data_dir", old / "data", "--device", "cpu") == ""
    after = pd.read_csv(run_dir / "predictions_all.csv", keep_default_na=False)
    assert after["prediction"].tolist() == before["prediction"].tolist()
    assert after["confidence"].tolist() == pytest.approx(before["confidence"].tolist(), abs=1e-5)
    model, *_ = models.load_run(run_dir)
    assert model.config.name == MAPPED[run]


@pytest.mark.parametrize("run", MAPPED)
def test_an_old_run_gives_the_training_loss_it_gave(old, run):
    """The loss of the first 16 training rows in training mode with the saved weights, as 1b90e4d computed it."""
    model, tokenizer, config, answers, run_dir = models.load_run(old / "runs" / run)
    df = select_rows(read_data(str(old / "data"), run_dir), "train", "all").head(16)
    images = ImageCache(str(old / "data"), df["image"], config["img_size"], progress=False)
    dataset = make_dataset(model, df, images, tokenizer, answers, config["max_token"], training=True)
    batch = to_device(next(iter(make_loader(dataset, 16, 0, torch.device("cpu")))), torch.device("cpu"))
    model.train()
    torch.manual_seed(0)  # the text encoder's dropout draws from it, as it did in train_losses.py
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["image"], batch.get("triples"))
        loss = model.loss(out, batch, build_loss(config["loss"], gamma=config["gamma"]))
    expected = json.loads((FIXTURES / "train_losses.json").read_text())[run]
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("run", RETIRED)
def test_an_old_run_with_a_retired_part_is_refused_naming_it(old, run, monkeypatch):
    monkeypatch.chdir(ROOT)
    message = run_main(inference, "--model_path", old / "runs" / run, "--data_dir", old / "data")
    assert message.startswith("error: ") and "\n" not in message
    assert RETIRED[run] in message and f"git checkout {models.RETIRED_BY}" in message
