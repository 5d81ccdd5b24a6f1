"""Reliability: a killed or stopped run resumes to the same result, saving never loses the last good checkpoint,
and loading never runs code from a file a user hands in."""
import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

import checkpoints
import util
from conftest import ROOT, TINY_TRAIN, only_run, run_script, script_output

N_EPOCH = 3
TRAIN = TINY_TRAIN + ["--n_epoch", str(N_EPOCH), "--freeze_text_epochs", "1"]


class Script:
    """A repo script running in the background, its output in files (a full pipe would block it)."""

    def __init__(self, *args):
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=self.out, stderr=self.err,
                                        text=True,
                                        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})

    def wait_until_training(self, epoch, timeout=300):
        """Returns once the progress bar shows steps of that epoch done (not yet its end)."""
        pattern = re.compile(rf"epoch {epoch}/\d+[^\r\n]*\| ([1-9]\d*)/(\d+)")
        deadline = time.time() + timeout
        while not any(int(done) < int(total) // 2 for done, total in pattern.findall(self.stderr_so_far())):
            assert self.process.poll() is None, self.finish()
            assert time.time() < deadline, f"epoch {epoch} never started"
            time.sleep(0.01)

    def stderr_so_far(self):
        return os.pread(self.err.fileno(), 1 << 24, 0).decode("utf-8", "replace")

    def finish(self, timeout=600):
        """(returncode, stdout, stderr) once it has ended."""
        self.process.wait(timeout)
        self.out.seek(0), self.err.seek(0)
        return self.process.returncode, self.out.read(), self.err.read()


def wait_for(results, script, pattern="*/" + checkpoints.LAST_CHECKPOINT, timeout=300):
    deadline = time.time() + timeout
    while not list(results.glob(pattern)):
        assert script.process.poll() is None, script.finish()
        assert time.time() < deadline, f"{pattern} never appeared in {results}"
        time.sleep(0.01)


def outcome(run_dir, sample_dir):
    """(history without timings, test accuracy of the best weights)."""
    from answering import make_dataset, predict
    from models import load_run
    from images import ImageCache
    from loaders import make_loader
    from vqa_dataset import read_data, select_rows

    history = json.loads((run_dir / "history.json").read_text())
    model, tokenizer, config, answers, _ = load_run(str(run_dir))
    test = select_rows(read_data(str(sample_dir)), "test")
    images = ImageCache(str(sample_dir), test["image"], config["img_size"], progress=False)
    dataset = make_dataset(model, test, images, tokenizer, answers, config["max_token"])
    accuracy = predict(model, make_loader(dataset, 64, 0, torch.device("cpu")), torch.device("cpu"))["accuracy"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history], accuracy


def resume(run_dir, *launcher):
    code, stdout, stderr = Script(*launcher, "main.py", "--resume", run_dir).finish()
    assert code == 0, stderr[-3000:]
    return stdout


@pytest.fixture(scope="module")
def reference(sample_dir, tmp_path_factory):
    """An uninterrupted run with the options the interrupted ones use."""
    results = tmp_path_factory.mktemp("reference")
    code, _, stderr = Script("main.py", *TRAIN, "--data_dir", sample_dir, "--results_dir", results).finish()
    assert code == 0, stderr[-3000:]
    return outcome(only_run(results), sample_dir)


def assert_same_as(reference, run_dir, sample_dir):
    history, accuracy = outcome(run_dir, sample_dir)
    assert [row["epoch"] for row in history] == list(range(1, N_EPOCH + 1))
    for got, want in zip(history, reference[0]):
        assert got == pytest.approx(want, abs=1e-6)
    assert abs(accuracy - reference[1]) <= 0.01
    assert len(list(run_dir.glob("infer_model_*.safetensors"))) == 1
    assert not list(run_dir.rglob("*.tmp"))


def tensorboard_scalars(run_dir):
    """{tag: [(step, value), ...]} as TensorBoard reads RUN/tb (with what a crashed run logged after its checkpoint
    purged); the number of event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return scalars, len(list((run_dir / "tb").glob("events.out.tfevents.*")))


def assert_curves_match_history(run_dir, sample_dir):
    """--report_to tensorboard: one point per optimizer step and per epoch, none twice, with history.json's values."""
    scalars, _ = tensorboard_scalars(run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    steps = [step for step, _ in scalars["train/loss"]]
    steps_per_epoch = len(steps) // N_EPOCH
    assert steps == list(range(1, N_EPOCH * steps_per_epoch + 1))  # every step once, in order, across the restart
    assert [step for step, _ in scalars["train/lr"]] == steps
    for tag, key in [("train/epoch_loss", "train_loss"), ("train/acc", "train_acc"), ("valid/loss", "valid_loss"),
                     ("valid/acc", "valid_acc")]:
        assert scalars[tag] == [(row["epoch"] * steps_per_epoch, pytest.approx(row[key], rel=1e-5)) for row in history]
    by_type = [dict(scalars[f"valid/acc_{t}"]) for t in "AB"]
    from vqa_dataset import read_data, select_rows

    n = select_rows(read_data(str(sample_dir)), "valid")["question_type"].value_counts()[list("AB")].tolist()
    for row in history:  # the per-type accuracies make up the whole
        step = row["epoch"] * steps_per_epoch
        assert (by_type[0][step] * n[0] + by_type[1][step] * n[1]) / sum(n) == pytest.approx(row["valid_acc"], 1e-5)


@pytest.mark.parametrize("when", ["first epoch", "later"])
def test_sigkill_then_resume_ends_as_an_uninterrupted_run(reference, sample_dir, tmp_path, when):
    """With --report_to tensorboard: the resumed run's curves continue the first's, with no step twice."""
    script = Script("main.py", *TRAIN, "--report_to", "tensorboard", "--data_dir", sample_dir, "--results_dir",
                    tmp_path)
    if when == "first epoch":  # before any checkpoint: the run starts again in its directory
        wait_for(tmp_path, script, "*/config.json")
    else:  # in epoch 3, after two checkpoints and best weights were written
        script.wait_until_training(epoch=3)
    script.process.send_signal(signal.SIGKILL)
    script.finish()
    run_dir = only_run(tmp_path)
    assert str(run_dir) in resume(run_dir)
    assert_same_as(reference, run_dir, sample_dir)
    assert_curves_match_history(run_dir, sample_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_and_stop_cleanly(reference, sample_dir, tmp_path, signum):
    script = Script("main.py", *TRAIN, "--report_to", "tensorboard", "--data_dir", sample_dir, "--results_dir",
                    tmp_path)
    script.wait_until_training(epoch=2)
    script.process.send_signal(signum)
    code, _, stderr = script.finish(timeout=120)
    assert code == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    run_dir = only_run(tmp_path)
    assert f"--resume {run_dir}" in stderr
    state = checkpoints.read_metadata(str(run_dir / checkpoints.LAST_CHECKPOINT))
    assert state["batch"] > 0  # saved at the step where it stopped, not at the end of the epoch before
    resume(run_dir)
    assert_same_as(reference, run_dir, sample_dir)
    assert_curves_match_history(run_dir, sample_dir)  # the stopped run's events were flushed


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_sigterm_under_torchrun_resumes_every_rank_to_the_uninterrupted_run(sample_dir, tmp_path):
    """Each rank gets its own partial sums and RNG states back: the whole history equals an uninterrupted run's."""
    code, _, stderr = Script(*TORCHRUN, "main.py", *TRAIN, "--data_dir", sample_dir, "--results_dir",
                             tmp_path / "reference").finish()
    assert code == 0, stderr[-3000:]
    reference = outcome(only_run(tmp_path / "reference"), sample_dir)

    script = Script(*TORCHRUN, "main.py", *TRAIN, "--report_to", "tensorboard", "--data_dir", sample_dir,
                    "--results_dir", tmp_path / "stopped")
    script.wait_until_training(epoch=2)
    script.process.send_signal(signal.SIGTERM)
    code, _, stderr = script.finish(timeout=120)
    assert code != 0
    run_dir = only_run(tmp_path / "stopped")
    assert stderr.count("stopped by SIGTERM") == 2, stderr[-3000:]  # both ranks stopped at the same step
    assert checkpoints.read_metadata(str(run_dir / checkpoints.LAST_CHECKPOINT))["batch"] > 0
    resume(run_dir, *TORCHRUN)
    assert_same_as(reference, run_dir, sample_dir)
    assert_curves_match_history(run_dir, sample_dir)
    assert tensorboard_scalars(run_dir)[1] == 2  # one event file per launch: rank 0 logs, rank 1 does not


def test_resume_refuses_changed_options(trained_run):
    result = run_script("main.py", "--resume", trained_run, "--lr", "0.1")
    assert result.returncode != 0 and "drop --lr" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
def test_full_disk_or_read_only_directory_keeps_the_last_checkpoint(sample_dir, tmp_path, monkeypatch, error,
                                                                    reference):
    import main

    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):  # writes fail once the first checkpoint exists
        if "w" in mode and list(tmp_path.glob("*/" + checkpoints.LAST_CHECKPOINT)):
            raise OSError(error, os.strerror(error))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(util, "open", failing_open, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses, so that the results compare exactly
    try:
        with pytest.raises(SystemExit) as stopped:
            main.main(TRAIN + ["--data_dir", str(sample_dir), "--results_dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    message = str(stopped.value)
    assert os.strerror(error) in message and "intact" in message and "--resume" in message
    run_dir = only_run(tmp_path)
    assert not list(run_dir.rglob("*.tmp"))
    last = str(run_dir / checkpoints.LAST_CHECKPOINT)
    assert len(checkpoints.read_metadata(last)["history"]) == 1  # the good one, of epoch 1
    if error == errno.ENOSPC:  # space freed: the run continues from that checkpoint to the same end
        monkeypatch.undo()
        resume(run_dir)
        assert_same_as(reference, run_dir, sample_dir)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("script", ["inference.py", "inference_each.py"])
def test_a_crafted_pickle_is_refused_and_runs_no_code(trained_run, tmp_path, script):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    marker = tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = marker
    with open(run_dir / "infer_model.pt", "wb") as f:
        pickle.dump({"model": payload}, f)
    result = run_script(script, "--model_path", run_dir / "infer_model.pt", "--device", "cpu")
    assert result.returncode != 0
    assert "refused" in result.stderr and "nothing in it was run" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    # the same pickle named as safetensors is not parsed as a pickle at all
    shutil.copy(run_dir / "infer_model.pt", run_dir / "renamed.safetensors")
    result = run_script(script, "--model_path", run_dir / "renamed.safetensors", "--device", "cpu")
    assert result.returncode != 0 and "not a readable safetensors file" in result.stderr
    assert not marker.exists()


def test_a_plain_state_dict_pt_loads_with_the_same_answers(trained_run, tmp_path, capsys):
    from safetensors.torch import load_file

    import inference_each

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    weights = next(run_dir.glob("infer_model_*.safetensors"))
    torch.save(load_file(weights), run_dir / "colleague.pt")
    answers = []
    for path in [weights, run_dir / "colleague.pt"]:
        answers.append(script_output(capsys, inference_each, "--model_path", path, "--index", "3", "--device", "cpu"))
    assert answers[0] == answers[1]


def test_config_or_answers_that_do_not_match_the_weights_are_named(trained_run, tmp_path):
    from models import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["use_transformer_layer"] = not config["use_transformer_layer"]
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(util.CheckpointError, match="use_transformer_layer is False in the weights but True"):
        load_run(str(run_dir))

    shutil.copy(trained_run / "config.json", run_dir / "config.json")
    answers = json.loads((run_dir / "answers.json").read_text())
    answers[0], answers[1] = answers[1], answers[0]
    (run_dir / "answers.json").write_text(json.dumps(answers, ensure_ascii=False))
    with pytest.raises(util.CheckpointError, match="answer vocabulary differs.*first difference at index 0"):
        load_run(str(run_dir))
