"""Shared fixtures: a tiny synthetic data set and a tiny trained run, built once per pytest run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tools"))  # tools/ scripts the tests import (check_docs)
# No test may reach a model hub, here or on a machine with internet: the tests and every script they start run
# offline (the offline tests set it again where they rely on it).
os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test's workers share the cores: one thread each, and their scripts
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

import sample_data  # noqa: E402

REAL_CSV = ROOT.parent / "shared" / "real-csv"  # real CSVs of this data family, beside the checkout (not in CI)

# Small and quick: the sample preset's model, a few epochs on a few hundred questions.
TINY_TRAIN = ["--preset", "sample", "--n_epoch", "3", "--freeze_text_epochs", "1", "--batch_size", "32",
              "--num_workers", "0", "--device", "cpu"]


def run_script(*args, env=None, timeout=600):
    """Runs a repo script as a user would, from the repo root; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def run_main(module, *args):
    """A script's main() in this process, as its command line would run it (quicker than run_script): '' on
    success, else its exit message; any other exception fails the test."""
    argv = sys.argv
    sys.argv = [f"{module.__name__}.py", *map(str, args)]
    try:
        module.main()
    except SystemExit as e:
        return "" if e.code in (0, None) else str(e.code)
    finally:
        sys.argv = argv
    return ""


def script_output(capsys, module, *args):
    """What a script's main() prints, run in this process (run_main); the test fails unless it succeeds."""
    capsys.readouterr()
    message = run_main(module, *args)
    assert message == "", message
    return capsys.readouterr().out


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "sample"
    # the earlier sample (no held-out facts): no split column, so the seeded split and its file are exercised
    sample_data.generate(str(out), n_images=150, questions_per_image=4, seed=0, progress=False, held_out_facts=False)
    return out


@pytest.fixture(scope="session")
def trained_run(sample_dir, tmp_path_factory):
    """A run directory trained by main.py on the tiny sample."""
    import main

    results = tmp_path_factory.mktemp("results")
    run_dir = main.main(TINY_TRAIN + ["--data_dir", str(sample_dir), "--results_dir", str(results)])
    return Path(run_dir)


def only_run(results):
    """The one run directory under results."""
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="session")
def kge_dir(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kge") / "kge"
    result = run_script("kge.py", "--data_dir", sample_dir, "--out", out, "--dim", "16", "--epochs", "20", "--lr",
                        "0.01", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def held_out_run(tmp_path_factory):
    """A short hilink_kb run, which answers from its knowledge base, on a tiny sample with held-out facts; (run
    directory, data directory)."""
    import main

    data = tmp_path_factory.mktemp("held_out") / "sample"
    sample_data.generate(str(data), n_images=150, seed=0, progress=False)
    results = tmp_path_factory.mktemp("held_out_results")
    main.main(TINY_TRAIN + ["--n_epoch", "4", "--data_dir", str(data), "--results_dir", str(results),
                            "--model", "hilink_kb"])
    return only_run(results), data


# the knowledge models with a short run of their own (hilink_kb's is held_out_run's)
KNOWLEDGE_MODELS = ["gel_vqa", "hilink", "oracle_triple", "oracle_text"]


@pytest.fixture(scope="session")
def knowledge_runs(sample_dir, kge_dir, tmp_path_factory):
    """A short run of each knowledge model on the tiny sample."""
    import main
    import models

    runs = {}
    for name in KNOWLEDGE_MODELS:
        results = tmp_path_factory.mktemp(name)
        options = ["--kge_dir", str(kge_dir)] if models.MODELS[name].embeds else []
        main.main(TINY_TRAIN + ["--data_dir", str(sample_dir), "--results_dir", str(results), "--model", name,
                                *options])
        runs[name] = only_run(results)
    return runs
