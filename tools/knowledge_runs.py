"""The knowledge comparison: each configuration below trained with each seed, evaluated on its test split, and
tabulated by report.py --compare (mean ± std over the seeds).

    python tools/knowledge_runs.py --data_dir data/sample --kge_dir results/kge_sample --out results/knowledge
    python tools/knowledge_runs.py --data_dir data/bok_proxy/ko --kge_dir ... --out ... --seeds 42 43 44

A run that already has its eval_all.json is kept, so an interrupted comparison continues where it stopped.
Writes OUT/<config>_seed<seed>/<run>/ and OUT/comparison.md, comparison.csv, comparison_seeds.csv.
"""
import argparse
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: main.py options (--kge_dir is added for the modes that inject KG embeddings)
CONFIGS = {
    "none": ["--knowledge", "none"],
    "text": ["--knowledge", "text"],
    "ideal": ["--knowledge", "ideal"],
    "ideal_film": ["--knowledge", "ideal", "--knowledge_fusion", "film"],
    "gel": ["--knowledge", "gel"],
    "gel_cascade_kb_film": ["--knowledge", "gel", "--triple_head", "cascade", "--kb_constrained",
                            "--knowledge_fusion", "film"],
    "gel_text_cascade_kb": ["--knowledge", "gel_text", "--triple_head", "cascade", "--kb_constrained"],
}
EMBEDDING = ("ideal", "gel")


def run(config, options, seed, args):
    """Trains and evaluates one configuration and seed unless that was done; returns its run directory."""
    out = os.path.join(args.out, f"{config}_seed{seed}")
    done = glob.glob(os.path.join(out, "*", "eval_all.json"))
    if done:
        return os.path.dirname(done[0])
    for stale in glob.glob(os.path.join(out, "*")):  # an unfinished run: trained again from the start
        subprocess.run(["rm", "-rf", stale], check=True)
    knowledge = options[options.index("--knowledge") + 1]
    extra = ["--kge_dir", args.kge_dir] if knowledge in EMBEDDING else []
    command = [sys.executable, "main.py", "--preset", args.preset, "--data_dir", args.data_dir, "--seed", str(seed),
               "--results_dir", out, *options, *extra, *args.main_args]
    print(" ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    (run_dir,) = glob.glob(os.path.join(out, "*"))
    subprocess.run([sys.executable, "inference.py", "--model_path", run_dir], cwd=ROOT, check=True)
    return run_dir


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="the data to train and test on")
    p.add_argument("--kge_dir", required=True, help="KG embeddings from kge.py, for ideal and gel")
    p.add_argument("--out", required=True, help="where the runs and the comparison go")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="seeds of every configuration")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configurations to run")
    p.add_argument("--preset", default="sample", help="main.py --preset of every run")
    p.add_argument("main_args", nargs="*", help="further main.py options for every run (after --)")
    args = p.parse_args()
    runs = [run(config, CONFIGS[config], seed, args) for config in args.configs for seed in args.seeds]
    subprocess.run([sys.executable, "report.py", "--compare", *runs, "--out", args.out], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
