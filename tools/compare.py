"""Models compared side by side: each model (a registered name, or a config file of configs/) trained with each seed
and, with --folds, validated on each fold in turn (BOK-VQA's protocol rotates the valid fold; HiLINK reports the mean
over folds 1-5), evaluated on its test split, and tabulated by report.py --compare as mean ± std over the seeds and
folds.

    python tools/compare.py --data_dir data/sample --kge_dir results/kge_sample --out results/models \\
        --models baseline hilink hilink_kb
    python tools/compare.py --data_dir data/bokvqa/ko --kge_dir results/kge_bokvqa --kb all_triple.csv \\
        --out results/bokvqa_folds --models hilink --folds 1 2 3 4 5 --seeds 42 -- --preset bokvqa

A run that already has its eval_all.json is kept and an interrupted one resumed (main.py --resume), so an
interrupted comparison continues where it stopped. Writes OUT/<model>_seed<seed>[_fold<K>]/<run>/ and
OUT/comparison.md, comparison.csv, comparison_seeds.csv.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import main as main_py  # noqa: E402  (a config file's model settings)
import models  # noqa: E402  (what each model reads: KG embeddings, a knowledge base)


def model_options(name, args):
    """main.py's options for a model name or a configs/ file stem, with --kge_dir and --kb where it reads them."""
    path = os.path.join(ROOT, "configs", f"{name}.yaml")
    if name in models.MODELS:
        chosen, config = ["--model", name], models.MODELS[name]
    elif os.path.isfile(path):
        values = models.read_config_file(path)
        settings, _ = main_py.config_file_flags(values, path)
        chosen, config = ["--config", path], models.named(values.get("model", "baseline"), settings, path)
    else:
        sys.exit(f"error: {name} is neither a model ({', '.join(models.MODELS)}) nor a config in configs/.")
    return chosen + (["--kge_dir", args.kge_dir] if config.reads_kge() and args.kge_dir else []) + (
        ["--kb", args.kb] if config.uses_kb() and args.kb else [])


def run(name, seed, fold, args):
    """Trains and evaluates one model, seed and fold unless that was done (an interrupted run is resumed); returns
    its run directory."""
    out = os.path.join(args.out, f"{name}_seed{seed}" + (f"_fold{fold}" if fold else ""))
    started = glob.glob(os.path.join(out, "*", "config.json"))
    if started and os.path.isfile(os.path.join(os.path.dirname(started[0]), "eval_all.json")):
        return os.path.dirname(started[0])
    if not started:
        command = ["main.py", "--preset", args.preset, "--data_dir", args.data_dir, "--seed", str(seed),
                   "--results_dir", out, *model_options(name, args), *(["--valid_fold", str(fold)] if fold else []),
                   *args.main_args]
    elif "weights" not in json.load(open(started[0], encoding="utf-8")):  # written when training has finished
        command = ["main.py", "--resume", os.path.dirname(started[0])]
    else:
        command = None
    if command:
        print(" ".join(command), flush=True)
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
    (run_dir,) = {os.path.dirname(p) for p in glob.glob(os.path.join(out, "*", "config.json"))}
    subprocess.run([sys.executable, "inference.py", "--model_path", run_dir], cwd=ROOT, check=True)
    return run_dir


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="the data to train and test on")
    p.add_argument("--kge_dir", default=None, help="KG embeddings from kge.py, for the models that read them")
    p.add_argument("--kb", default=None, help="knowledge base CSV (h, r, t) of the models that read one "
                                              "(default: main.py's: the data's triples.csv, else its triples)")
    p.add_argument("--out", required=True, help="where the runs and the comparison go")
    p.add_argument("--models", nargs="+", default=["baseline", "hilink", "hilink_kb"],
                   help="models (registered names) or configs/ file stems")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="seeds of every model")
    p.add_argument("--folds", type=int, nargs="+", default=None,
                   help="valid folds to rotate over (main.py --valid_fold; default: the data's split)")
    p.add_argument("--preset", default="sample", help="main.py --preset of every run")
    p.add_argument("main_args", nargs="*", help="further main.py options for every run (after --)")
    args = p.parse_args()
    runs = [run(name, seed, fold, args) for name in args.models for seed in args.seeds for fold in args.folds or [None]]
    subprocess.run([sys.executable, "report.py", "--compare", *runs, "--out", args.out], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
