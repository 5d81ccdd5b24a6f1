"""What each knowledge configuration costs to train: seconds per training step (train.train_step on the same data's
batches), measured side by side in one process, the configurations taking turns in every round so that a change in
the machine's load reaches them all alike, and reported as the median over the rounds and the ratio to the baseline.

    python tools/knowledge_cost.py --data_dir data/sample --kge_dir results/kge_sample --out results/knowledge_cost

The configurations are tools/knowledge_runs.py's; the first is the baseline the ratios divide by. Each is built as
main.py builds it (--preset sample by default), in a run directory under a temporary folder that is removed
afterwards. Writes OUT/cost.md and OUT/cost.csv.
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
from knowledge_runs import CONFIGS, options  # noqa: E402
from tqdm import tqdm  # noqa: E402


def build(config, args, results_dir):
    """(a function that runs one training step on the next batch, the main.py options) of a configuration."""
    argv = ["--preset", args.preset, "--data_dir", args.data_dir, "--seed", str(args.seed), "--results_dir",
            results_dir, *options(config, args)]
    run_args = main_py.parse_args(argv)
    rt = train.setup(run_args)
    data = train.load_training_data(run_args, rt)
    run_dir, _, tokenizer, model, _ = train.start_or_resume(run_args, rt, data)
    model = model.to(rt.device, memory_format=torch.channels_last).train()
    train_loader, _ = train.make_loaders(run_args, rt, data, tokenizer, model.vocab, run_dir, model.kb)
    optimizer = train.build_optimizer(model, run_args, rt.device)
    loss_fn, head_prior = train.build_losses(run_args, model, train_loader, rt.device)
    wrapped = train.wrap(model, rt, compile_model=False, text_frozen=False)  # the steps after the frozen epochs
    batches = iter(train_loader)

    def step():
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = iter(train_loader)
            batch = next(batches)
        train.train_step(wrapped, optimizer, loss_fn, batch, rt.device, rt.precision, run_args.clip_grad,
                         run_args.lr, head_prior)
    return step, argv


def timed(step, n):
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data/sample", help="the data whose training batches are timed")
    p.add_argument("--kge_dir", required=True, help="KG embeddings from kge.py, for ideal and gel")
    p.add_argument("--kb", default=None, help="knowledge base CSV of the configurations that use one")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                   default=["none", "ideal", "gel", "gel_text_kb_copy", "gel_text_own_kb_copy_adjust"],
                   help="configurations to time; the first is the baseline of the ratios")
    p.add_argument("--preset", default="sample", help="main.py --preset of every configuration")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    p.add_argument("--rounds", type=util.at_least(1), default=5, help="rounds; each configuration is timed in each")
    p.add_argument("--steps", type=util.at_least(1), default=10, help="timed steps of a configuration per round")
    p.add_argument("--warmup_steps", type=util.at_least(0), default=3, help="untimed steps of each configuration first")
    p.add_argument("--out", default="results/knowledge_cost", help="where cost.md and cost.csv go")
    args = p.parse_args()
    outputs = util.OutputFolder(args.out).check(["cost.md", "cost.csv"])
    with tempfile.TemporaryDirectory() as tmp:
        steps = {}
        for config in args.configs:
            steps[config], argv = build(config, args, os.path.join(tmp, config))
            for _ in range(args.warmup_steps):
                steps[config]()
        seconds = {config: [] for config in args.configs}
        for _ in tqdm(range(args.rounds), desc="rounds"):
            for config in args.configs:
                seconds[config].append(timed(steps[config], args.steps))
    median = {config: statistics.median(s) for config, s in seconds.items()}
    base = median[args.configs[0]]
    table = pd.DataFrame([{"configuration": c, "main.py options": " ".join(options(c, args)),
                           "s / step": round(median[c], 4), "ratio": round(median[c] / base, 2),
                           "min s / step": round(min(seconds[c]), 4), "max s / step": round(max(seconds[c]), 4)}
                          for c in args.configs])
    outputs.write("cost.csv", util.csv_bytes(table))
    header = (f"Seconds per training step (median of {args.rounds} rounds of {args.steps} steps, the configurations "
              f"taking turns), --preset {args.preset}, {args.data_dir}; ratio to {args.configs[0]}.\n\n")
    outputs.write("cost.md", (header + table.to_markdown(index=False) + "\n").encode("utf-8"))
    print(table.to_string(index=False))
    print(f"wrote {args.out}/cost.md, {args.out}/cost.csv")


if __name__ == "__main__":
    main()
