"""Two CPU processes under torchrun (DistributedDataParallel, gloo) train one run: from data that has no split yet
(rank 0 makes split.csv, the other rank reads it), with validation sharded over the ranks."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_TRAIN
from answering import make_dataset, predict
from models import load_run
from images import ImageCache
from splits import SPLIT_FILE
from loaders import make_loader
from vqa_dataset import read_data, select_rows


@pytest.fixture
def fresh_data(sample_dir, tmp_path):
    """The tiny sample without its split.csv and caches, as on a fresh clone after `download.py --sample`."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(sample_dir / "data.csv", data / "data.csv")
    (data / "image").symlink_to(sample_dir / "image")
    return data


def test_torchrun_two_processes(fresh_data, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py",
               *TINY_TRAIN, "--n_epoch", "2", "--data_dir", str(fresh_data), "--results_dir", str(results)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (fresh_data / SPLIT_FILE).is_file() and result.stdout.count("made a seeded split") == 1
    assert "made a seeded split by image {'train': " in result.stdout and "np.int64" not in result.stdout
    assert not list(fresh_data.rglob("*.tmp"))
    runs = list(results.iterdir())
    assert len(runs) == 1  # one run directory, written by rank 0 only
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["world_size"] == 2
    history = json.loads((runs[0] / "history.json").read_text())
    assert len(history) == 2
    # each rank saw half of the training rows per epoch; together they saw them all
    assert history[0]["train_samples"] == config["data_stats"]["train"]
    assert len(list(runs[0].glob("infer_model_*.safetensors"))) == 1

    # validation ran on both ranks' shards: together they are the whole valid split, each row once, so the best
    # epoch's accuracy and loss are those of its weights evaluated by one process
    model, tokenizer, config, answers, _ = load_run(str(runs[0]))
    valid = select_rows(read_data(fresh_data), "valid")
    images = ImageCache(str(fresh_data), valid["image"], config["img_size"], progress=False)
    dataset = make_dataset(model, valid, images, tokenizer, answers, config["max_token"])
    from focal import build_loss

    single = predict(model, make_loader(dataset, 64, 0, torch.device("cpu")), torch.device("cpu"),
                     loss_fn=build_loss(config["loss"], gamma=config["gamma"]))
    best = max(history, key=lambda row: row["valid_acc"])
    assert best["valid_acc"] == pytest.approx(single["accuracy"], abs=1e-9)
    assert best["valid_loss"] == pytest.approx(single["loss"], rel=1e-5)
    report = (runs[0] / "report.md").read_text()
    assert f"| all | {100 * single['accuracy']:.2f}% | {len(valid)} |" in report


def history(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in json.loads((run_dir / "history.json").read_text())]


def test_main_py_starts_its_processes_itself_as_torchrun_does_and_resumes_them(sample_dir, tmp_path):
    """python main.py --nproc 2 (gloo on the CPU) trains as torchrun --nproc_per_node 2 main.py does; SIGTERM to the
    launching process reaches both workers, and --resume starts as many again by itself, to the same history."""
    import signal

    from conftest import only_run
    from test_resume import TORCHRUN, TRAIN, Script

    args = [*TRAIN, "--device", "cpu", "--data_dir", sample_dir]
    code, _, stderr = Script(*TORCHRUN, "main.py", *args, "--results_dir", tmp_path / "torchrun").finish()
    assert code == 0, stderr[-3000:]
    code, stdout, stderr = Script("main.py", *args, "--nproc", "2", "--results_dir", tmp_path / "nproc").finish()
    assert code == 0, stderr[-3000:]
    runs = [only_run(tmp_path / name) for name in ("torchrun", "nproc")]  # one run directory each
    assert json.loads((runs[1] / "config.json").read_text())["world_size"] == 2
    reference = history(runs[0])
    assert len(history(runs[1])) == len(reference)
    for got, want in zip(history(runs[1]), reference):
        assert got == pytest.approx(want, abs=1e-6)

    script = Script("main.py", *args, "--nproc", "2", "--results_dir", tmp_path / "stopped")
    script.wait_until_training(epoch=2)
    script.process.send_signal(signal.SIGTERM)
    code, _, stderr = script.finish(timeout=120)
    assert code == 128 + signal.SIGTERM and stderr.count("stopped by SIGTERM") == 2, stderr[-3000:]
    run_dir = only_run(tmp_path / "stopped")
    code, stdout, stderr = Script("main.py", "--resume", run_dir).finish()
    assert code == 0 and "starting 2 training processes" in stdout, stderr[-3000:]
    assert len(history(run_dir)) == len(reference)
    for got, want in zip(history(run_dir), reference):
        assert got == pytest.approx(want, abs=1e-6)


def test_more_processes_than_visible_gpus_is_one_error_before_any_work(tmp_path, monkeypatch):
    import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit) as stop:
        main.main(["--nproc", "3", "--results_dir", str(tmp_path / "results")])
    assert str(stop.value.code).startswith("error: --nproc 3: 2 CUDA GPU(s) are visible")
    assert not (tmp_path / "results").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SystemExit) as stop:
        main.main(["--nproc", "2", "--device", "cuda", "--results_dir", str(tmp_path / "results")])
    assert "no CUDA GPU(s) are visible" in str(stop.value.code) and not (tmp_path / "results").exists()
    args = main.parse_args([])
    assert main.processes(args) == 1  # auto on a CPU
