"""What each model costs to train: seconds per training step (train.train_step on the same data's batches), measured
side by side in one process, the models taking turns in every round so that a change in the machine's load reaches
them all alike, and reported as the median over the rounds and the ratio to the first (the baseline).

    python tools/cost.py --data_dir data/sample --kge_dir results/kge_sample --out results/cost

The models are tools/compare.py's (registered names or configs/ file stems). Each is built as main.py builds it
(--preset sample by default), in a run directory under a temporary folder that is removed afterwards. Writes
OUT/cost.md and OUT/cost.csv.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import pandas as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as main_py  # noqa: E402
import train  # noqa: E402
import util  # noqa: E402
from compare import model_options  # noqa: E402
from focal import build_loss  # noqa: E402
from tqdm import tqdm  # noqa: E402


def build(name, args, results_dir):
    """(a function that runs one training step on the next batch, the main.py options) of a model."""
    argv = ["--preset", args.preset, "--data_dir", args.data_dir, "--seed", str(args.seed), "--results_dir",
            results_dir, *model_options(name, args)]
    run_args = main_py.parse_args(argv)
    rt = train.setup(run_args)
    data = train.load_training_data(run_args, rt)
    run_dir, _, tokenizer, model, _ = train.start_or_resume(run_args, rt, data)
    model = model.to(rt.device, memory_format=torch.channels_last).train()
    train_loader, _ = train.make_loaders(run_args, rt, data, tokenizer, model, run_dir)
    optimizer = train.build_optimizer(model, run_args, rt.device)
    loss_fn = build_loss(run_args.loss, gamma=run_args.gamma).to(rt.device)
    model.start_training(train_loader.dataset.targets)
    wrapped = train.wrap(model, rt, compile_model=False, text_frozen=False)  # the steps after the frozen epochs
    batches = iter(train_loader)

    def step():
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = iter(train_loader)
            batch = next(batches)
        train.train_step(wrapped, model, optimizer, loss_fn, batch, rt.device, rt.precision, run_args.clip_grad,
                         run_args.lr)
    return step, argv


def timed(step, n):
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data/sample", help="the data whose training batches are timed")
    p.add_argument("--kge_dir", default=None, help="KG embeddings from kge.py, for the models that read them")
    p.add_argument("--kb", default=None, help="knowledge base CSV of the models that read one")
    p.add_argument("--models", nargs="+", default=["baseline", "gel_vqa", "hilink", "hilink_kb", "oracle_triple",
                                                   "oracle_text"],
                   help="models (registered names or configs/ file stems) to time; the first is the ratios' base")
    p.add_argument("--preset", default="sample", help="main.py --preset of every model")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    p.add_argument("--rounds", type=util.at_least(1), default=5, help="rounds; each model is timed in each")
    p.add_argument("--steps", type=util.at_least(1), default=10, help="timed steps of a model per round")
    p.add_argument("--warmup_steps", type=util.at_least(0), default=3, help="untimed steps of each model first")
    p.add_argument("--out", default="results/cost", help="where cost.md and cost.csv go")
    args = p.parse_args()
    outputs = util.OutputFolder(args.out).check(["cost.md", "cost.csv"])
    with tempfile.TemporaryDirectory() as tmp:
        steps = {}
        for name in args.models:
            steps[name], argv = build(name, args, os.path.join(tmp, name))
            for _ in range(args.warmup_steps):
                steps[name]()
        seconds = {name: [] for name in args.models}
        for _ in tqdm(range(args.rounds), desc="rounds"):
            for name in args.models:
                seconds[name].append(timed(steps[name], args.steps))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    base = median[args.models[0]]
    table = pd.DataFrame([{"model": m, "main.py options": " ".join(model_options(m, args)),
                           "s / step": round(median[m], 4), "ratio": round(median[m] / base, 2),
                           "min s / step": round(min(seconds[m]), 4), "max s / step": round(max(seconds[m]), 4)}
                          for m in args.models])
    outputs.write("cost.csv", util.csv_bytes(table))
    header = (f"Seconds per training step (median of {args.rounds} rounds of {args.steps} steps, the models taking "
              f"turns), --preset {args.preset}, {args.data_dir}; ratio to {args.models[0]}.\n\n")
    outputs.write("cost.md", (header + table.to_markdown(index=False) + "\n").encode("utf-8"))
    print(table.to_string(index=False))
    print(f"wrote {args.out}/cost.md, {args.out}/cost.csv")


if __name__ == "__main__":
    main()
