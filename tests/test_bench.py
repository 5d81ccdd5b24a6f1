"""bench.py end to end at a tiny size on the CPU: it runs, generates its data in the canonical format, prints
both pipelines' throughput and ends with the speedup line. No timing assertions: speed is bench.py's job."""
import re

import pandas as pd

from conftest import run_script

TINY = ["--device", "cpu", "--quick", "--n_images", "6", "--width", "160", "--height", "120", "--batch_size", "4",
        "--warmup_steps", "1", "--steps", "2", "--num_workers", "1"]


def test_bench_runs_and_reports_speedup(tmp_path):
    data_dir = tmp_path / "bench"
    result = run_script("bench.py", *TINY, "--data_dir", data_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup: \d+\.\dx", lines[-1]), result.stdout
    assert re.search(r"^\(a\) original-style: +[\d.]+ samples/s", result.stdout, re.M), result.stdout
    assert re.search(r"^\(b\) fast path: +[\d.]+ samples/s", result.stdout, re.M), result.stdout
    assert re.search(r"^model only \(b\): +[\d.]+ samples/s .* GFLOP per sample", result.stdout, re.M), result.stdout

    df = pd.read_csv(data_dir / "data.csv", dtype=str)
    assert list(df.columns) == ["image", "question", "answer", "split"] and len(df) == 12
    assert all((data_dir / "image" / name).is_file() for name in df["image"])
    assert "image cache: built" in result.stdout
