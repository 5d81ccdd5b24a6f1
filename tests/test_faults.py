"""Knowledge inputs, options and faults (the bug classes of a probe of 110 inputs): each bad input is one clear
`error:` line or the right behaviour, nothing is silently wrong, no file is left half-written. Hypothesis draws fresh
members of the classes that parse and validate; the others are checked at one training step at most."""
import math
import os
import shutil
import unicodedata

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inference
import inference_each
import kb
import kge
import main
import util
import vqa_dataset
from conftest import TINY_TRAIN, only_run, run_main
from vocab import NO_KNOWLEDGE, KnowledgeVocab
from vqa_dataset import DataError, clean_text

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None,
                max_examples=25)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- 1. a knowledge base with no usable triple

BLANK_CELL = st.sampled_from(["", " ", "\t", "  ", "\u200b", "\ufeff", "\u00a0"])


@settings(**SETTINGS)
@given(rows=st.lists(st.tuples(BLANK_CELL, BLANK_CELL, BLANK_CELL), min_size=1, max_size=5))
def test_a_knowledge_base_of_blank_rows_is_one_clear_error(rows, tmp_path_factory):
    path = write(tmp_path_factory.mktemp("kb") / "kb.csv", "h,r,t\n" + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(DataError) as error:
        kb.read_kb(path)
    assert str(path) in str(error.value) and "no triple" in str(error.value)


def test_main_and_inference_each_refuse_a_knowledge_base_without_a_triple(held_out_run, tmp_path):
    run_dir, data_dir = held_out_run
    empty = write(tmp_path / "kb.csv", "h,r,t\n,,\n , , \n")
    message = run_main(main, *TINY_TRAIN, "--data_dir", data_dir, "--model", "hilink_kb", "--kb", empty,
                       "--results_dir", tmp_path / "results")
    assert message.startswith("error: ") and "no triple" in message
    assert not any((tmp_path / "results").iterdir())  # no half-made run directory
    message = run_main(inference_each, "--model_path", run_dir, "--index", "0", "--kb", empty)
    assert message.startswith("error: ") and "no triple" in message


# ---------------------------------------------------------------- 2, 3. one reader for every file that holds names

NAME = st.text(alphabet=st.sampled_from(list("ab 가각") + ["\u200b", "\u00a0", "\u0301", "\t"]), min_size=1,
               max_size=8).filter(lambda s: clean_text(s) and not vqa_dataset.is_placeholder(clean_text(s)))


def spelled(name, form):
    """A name as a user's file may hold it: NFD (a Mac's), with a doubled space or an invisible character."""
    return {"nfd": unicodedata.normalize("NFD", name), "space": name.replace(" ", "  "),
            "invisible": name + "\u200b", "plain": name}[form]


@settings(**SETTINGS)
@given(facts=st.lists(st.tuples(NAME, NAME, NAME), min_size=1, max_size=4),
       form=st.sampled_from(["nfd", "space", "invisible", "plain"]))
def test_a_knowledge_base_reads_names_by_data_csvs_rules(facts, form, tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("kb") / "kb.csv"
    pd.DataFrame([[spelled(n, form) for n in fact] for fact in facts], columns=["h", "r", "t"]).to_csv(path,
                                                                                                       index=False)
    triples = kb.read_kb(path)
    assert triples == list(dict.fromkeys(tuple(clean_text(n) for n in fact) for fact in facts))
    changed = sum(spelled(n, form) != clean_text(spelled(n, form)) for fact in facts for n in fact)
    out = capsys.readouterr().out
    assert ("normalised" in out) == bool(changed)


@settings(**SETTINGS)
@given(facts=st.lists(st.tuples(NAME, NAME, NAME), min_size=1, max_size=4),
       form=st.sampled_from(["nfd", "space", "invisible"]))
def test_kge_reads_data_csvs_triples_as_main_py_does(facts, form, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    cells = [vqa_dataset.format_triples([tuple(spelled(n, form) for n in fact)]) for fact in facts]
    pd.DataFrame({"image": "a.jpg", "question": [f"q{i}" for i in range(len(cells))], "answer": "x",
                  "triple": cells}).to_csv(data / "data.csv", index=False)
    triples, _ = kge.load_triples(kge.build_parser().parse_args(["--data_dir", str(data), "--out", "o"]))
    read = vqa_dataset.read_data(data)  # main.py's reader
    assert triples == list(dict.fromkeys(t for cell in read["triple"] for t in vqa_dataset.parse_triples(cell)))


# ---------------------------------------------------------------- 4. a user's name that is an internal one

def test_a_relation_named_like_the_no_knowledge_class_is_a_relation_of_its_own():
    df = pd.DataFrame({"triple": [f"a|{NO_KNOWLEDGE}|b", "c|is|d", ""]})
    vocab = KnowledgeVocab.from_rows(df, predicting=True)
    user = vocab.index[1][NO_KNOWLEDGE]
    assert vocab.no_knowledge != user and vocab.sizes[1] == 3  # (no knowledge), is, and the class of none
    assert vocab.ids(f"a|{NO_KNOWLEDGE}|b", 1) == [[0, user, 0]]
    assert vocab.ids("", 1)[0][1] == vocab.no_knowledge
    assert vocab.names([0, user, 0]) == ("a", NO_KNOWLEDGE, "b")
    again = KnowledgeVocab.from_json(vocab.to_json())  # as a run saves and loads it
    assert again.no_knowledge == vocab.no_knowledge and again.index == vocab.index


# ---------------------------------------------------------------- 5. the lang column

@settings(**SETTINGS)
@given(lang=st.text(alphabet=st.sampled_from(list("koenKRrkt -_") + ["\u00a0"]), max_size=8))
def test_a_lang_that_is_not_ko_or_en_is_a_row_fault(lang, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    pd.DataFrame({"image": ["a.jpg"], "question": ["q"], "answer": ["x"], "lang": [lang]}).to_csv(data / "data.csv",
                                                                                                index=False)
    df = vqa_dataset.read_data(data)
    problems = vqa_dataset.lang_problems(df)
    assert bool(problems.any()) == (clean_text(lang) not in ("", "ko", "en"))


# ---------------------------------------------------------------- 8. a training batch of one

@pytest.mark.parametrize("n, batch", [(9, 4), (5, 4), (8, 4), (1, 4), (3, 2)])
def test_a_lone_last_sample_joins_the_batch_before_it(n, batch):
    from loaders import LoneLastMerged, batch_count

    batches = list(LoneLastMerged(range(n), batch))
    assert sorted(i for b in batches for i in b) == list(range(n))  # every sample, once
    assert all(len(b) > 1 for b in batches) or n == 1
    assert len(batches) == len(LoneLastMerged(range(n), batch)) == batch_count(n, batch)


def test_a_run_whose_last_batch_would_hold_one_sample_trains(sample_dir, tmp_path):
    """--img_size 32 gives a 1x1 feature map, where BatchNorm cannot normalise one sample."""
    train_rows = len(vqa_dataset.select_rows(vqa_dataset.read_data(sample_dir), "train"))
    message = run_main(main, *TINY_TRAIN, "--n_epoch", "1", "--img_size", "32", "--batch_size", train_rows - 1,
                       "--data_dir", sample_dir, "--results_dir", tmp_path)
    assert message == ""


# ---------------------------------------------------------------- 9. inf and nan

FLOAT_OPTIONS = ["--lr", "--gamma", "--label_smoothing", "--weight_decay", "--warmup", "--clip_grad", "--dropout"]


@settings(**SETTINGS)
@given(option=st.sampled_from(FLOAT_OPTIONS), value=st.sampled_from(["inf", "-inf", "nan", "NaN", "1e999", "+inf"]))
def test_a_non_finite_option_is_refused(option, value):
    with pytest.raises(SystemExit) as stop:
        main.build_parser().parse_args([option, value])
    assert stop.value.code == 2  # argparse's error: names the option


@settings(**SETTINGS)
@given(value=st.sampled_from([math.inf, -math.inf, math.nan]))
def test_a_non_finite_setting_is_refused(value):
    import models

    with pytest.raises(util.UsageError):
        models.named("hilink", {"kb_constrained": True, "triple_noise": value})


def test_a_loss_that_turns_non_finite_stops_the_run_keeping_the_last_good_checkpoint(sample_dir, tmp_path,
                                                                                    monkeypatch):
    import train

    real, steps = train.optimize, []

    def poisoned(wrapped, optimizer, loss, clip_grad, lr):  # the epoch-2 steps' losses are NaN
        steps.append(1)
        return real(wrapped, optimizer, loss * math.nan if len(steps) > 4 else loss, clip_grad, lr)
    monkeypatch.setattr(train, "optimize", poisoned)
    message = run_main(main, *TINY_TRAIN, "--batch_size", "128", "--data_dir", sample_dir, "--results_dir", tmp_path)
    assert message.startswith("error: ") and "not finite" in message and "--resume" in message
    run_dir = only_run(tmp_path)
    import checkpoints

    history = checkpoints.read_metadata(str(run_dir / checkpoints.LAST_CHECKPOINT))["history"]
    assert len(history) == 1 and all(math.isfinite(row["train_loss"]) for row in history)
    best = list(run_dir.glob(checkpoints.WEIGHTS_GLOB))
    assert len(best) == 1 and all(torch.isfinite(t).all() for t in checkpoints.read_safetensors(str(best[0]))[0]
                                  .values() if t.is_floating_point())


# ---------------------------------------------------------------- 10. --device

@pytest.mark.parametrize("device", ["gpu", "cuda" if not torch.cuda.is_available() else "cuda:99", "cpu:x", "tpu"])
def test_an_unusable_device_is_one_clear_error_before_any_work(device, trained_run, tmp_path):
    message = run_main(main, *TINY_TRAIN, "--device", device, "--results_dir", tmp_path)
    assert message.startswith("error: --device") and not any(tmp_path.iterdir())
    for script in (inference, inference_each):
        message = run_main(script, "--model_path", trained_run, "--device", device)
        assert message.startswith("error: --device"), message


def test_pick_device_names_what_is_wrong():
    for name in ("gpu", "cuda:x", ""):
        with pytest.raises(util.UsageError, match="--device"):
            util.pick_device(name)
    assert util.pick_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------- 6. inference's outputs on a full disk

@pytest.mark.parametrize("fail_on", ["predictions_all.csv", "eval_all.json", "report.md"])
def test_inference_on_a_full_disk_is_one_error_and_leaves_no_half_written_file(trained_run, tmp_path, fail_on,
                                                                               monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for name in ("predictions_all.csv", "eval_all.json"):
        (run_dir / name).unlink(missing_ok=True)
    real = util.atomic_write

    def full(path, data):
        if os.path.basename(path) == fail_on:
            raise util.CheckpointError(f"cannot write {path}: No space left on device; nothing was changed.")
        return real(path, data)
    monkeypatch.setattr(util, "atomic_write", full)
    message = run_main(inference, "--model_path", run_dir)
    assert message.startswith("error: ") and "No space left" in message and "\n" not in message
    assert not (run_dir / fail_on).exists() or fail_on == "report.md"
    assert all(p.stat().st_size > 0 for p in run_dir.iterdir() if p.is_file())


# ---------------------------------------------------------------- 7. one parser for knowledge input

@pytest.mark.parametrize("text, ok", [("a|b|c", True), ("a|b", False), ("a|b|c|d", False), ("nan|b|c", False),
                                      ("a|b|c\\", False), ("", True)])
def test_the_demo_and_inference_each_read_a_triple_alike(text, ok):
    from answering import knowledge_input

    if ok:
        assert knowledge_input(text, "")[0] == text
    else:
        with pytest.raises(DataError) as error:
            knowledge_input(text, "")
        assert "head|relation|tail" in str(error.value)


def test_under_torchrun_every_rank_stops_at_a_non_finite_loss(sample_dir, tmp_path):
    """Each rank sees the same all-reduced gradient, so all stop at the same step: no rank waits on the others."""
    import subprocess
    import sys

    from conftest import ROOT

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py",
               *TINY_TRAIN, "--data_dir", str(sample_dir), "--results_dir", str(tmp_path), "--lr", "1e30",
               "--warmup", "0", "--freeze_text_epochs", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0 and result.stderr.count("error: the training loss or its gradient is not "
                                                          "finite") == 2, result.stderr[-3000:]
