"""Two CPU processes under torchrun (DistributedDataParallel, gloo) train one run."""
import json
import os
import subprocess
import sys

from conftest import ROOT, TINY_TRAIN


def test_torchrun_two_processes(sample_dir, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py",
               *TINY_TRAIN, "--n_epoch", "2", "--data_dir", str(sample_dir), "--results_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1  # one run directory, written by rank 0 only
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["world_size"] == 2
    history = json.loads((runs[0] / "history.json").read_text())
    assert len(history) == 2
    # each rank saw half of the training rows per epoch; together they saw them all
    assert history[0]["train_samples"] == config["data_stats"]["train"]
    assert len(list(runs[0].glob("infer_model_*.safetensors"))) == 1
