"""The knowledge comparison: configurations of --knowledge trained with each seed, evaluated on their test split,
and tabulated by report.py --compare (mean ± std over the seeds).

    python tools/knowledge_runs.py --data_dir data/sample --kge_dir results/kge_sample --out results/knowledge
    python tools/knowledge_runs.py --data_dir data/bok_proxy/ko --kge_dir results/bok_proxy/kge \
        --kb data/bok_proxy/kb.csv --out results/bok_proxy/ko --configs none gel --seeds 42

A run that already has its eval_all.json is kept and an interrupted one resumed (main.py --resume), so an
interrupted comparison continues where it stopped.
Writes OUT/<config>_seed<seed>/<run>/ and OUT/comparison.md, comparison.csv, comparison_seeds.csv.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import knowledge as kn  # noqa: E402  (which modes read KG embeddings and keep a KB: decided there)

# name: main.py options; --kge_dir is added where KG embeddings are read, --kb where a knowledge base is
CONFIGS = {
    "none": ["--knowledge", "none"],  # the baseline
    "text": ["--knowledge", "text"],  # gold knowledge as words (an upper bound)
    # ... withheld in training from half the rows, so that the answer path also learns to read the image
    "text_dropout": ["--knowledge", "text", "--knowledge_dropout", "0.5"],
    # ... and the answer copied from the row's triple: a held-out fact's answer is in no vocabulary
    "text_dropout_copy": ["--knowledge", "text", "--knowledge_dropout", "0.5", "--answer_from_kb"],
    # ... every row with knowledge text also trained to answer from its question alone (an added text pass)
    "text_free_copy": ["--knowledge", "text", "--knowledge_free_loss", "--answer_from_kb"],
    # ... only the rows whose knowledge text training did not withhold (the others already answer without it)
    "text_dropout_free_copy": ["--knowledge", "text", "--knowledge_dropout", "0.5", "--knowledge_free_loss",
                               "--answer_from_kb"],
    # ... the rows with knowledge text answered by a head of their own: knowledge never retrains type A's head
    "text_dropout_own_copy": ["--knowledge", "text", "--knowledge_dropout", "0.5", "--knowledge_head", "own",
                              "--answer_from_kb"],
    # ... whose gradient also stops at the fused feature: the encoders learn only from the rows without knowledge
    "text_dropout_detached_copy": ["--knowledge", "text", "--knowledge_dropout", "0.5", "--knowledge_head", "detached",
                                   "--answer_from_kb"],
    "text_dropout08_copy": ["--knowledge", "text", "--knowledge_dropout", "0.8", "--answer_from_kb"],
    "ideal": ["--knowledge", "ideal"],  # the gold triple's KG embeddings, GEL-VQA's product fusion (an upper bound)
    "ideal_concat_copy": ["--knowledge", "ideal", "--knowledge_fusion", "concat", "--answer_from_kb"],
    # ... the gold triples withheld in training from half the rows, as text_dropout_copy
    "ideal_dropout_concat_copy": ["--knowledge", "ideal", "--knowledge_dropout", "0.5", "--knowledge_fusion", "concat",
                                  "--answer_from_kb"],
    # ... every row with gold triples also trained to answer without them, the baseline's task, from the same features
    "ideal_free_concat_copy": ["--knowledge", "ideal", "--knowledge_free_loss", "--knowledge_fusion", "concat",
                               "--answer_from_kb"],
    # ... and a head of their own: type A's head then gets exactly the baseline's loss
    "ideal_free_own_concat_copy": ["--knowledge", "ideal", "--knowledge_free_loss", "--knowledge_head", "own",
                                   "--knowledge_fusion", "concat", "--answer_from_kb"],
    # ... and the encoders trained by the baseline's loss (and the copy gate's) alone
    "ideal_free_detached_concat_copy": ["--knowledge", "ideal", "--knowledge_free_loss", "--knowledge_head", "detached",
                                        "--knowledge_fusion", "concat", "--answer_from_kb"],
    "ideal_free_concat": ["--knowledge", "ideal", "--knowledge_free_loss", "--knowledge_fusion", "concat"],
    "gel": ["--knowledge", "gel"],  # GEL-VQA as published
    "gel_text_cascade_kb": ["--knowledge", "gel_text", "--triple_head", "cascade", "--kb_constrained"],
    "gel_text_kb_copy": ["--knowledge", "gel_text", "--kb_constrained", "--answer_from_kb"],  # GEL-VQA's heads
    "gel_text_cascade_kb_copy": ["--knowledge", "gel_text", "--triple_head", "cascade", "--kb_constrained",
                                 "--answer_from_kb"],
    # the head trained with logit adjustment by p(h | r): held-out facts' heads can be predicted
    "gel_text_kb_copy_adjust": ["--knowledge", "gel_text", "--kb_constrained", "--answer_from_kb",
                                "--head_logit_adjustment"],
    "gel_text_cascade_kb_copy_adjust": ["--knowledge", "gel_text", "--triple_head", "cascade", "--kb_constrained",
                                        "--answer_from_kb", "--head_logit_adjustment"],
    # the triple predicted by encoders of its own (HiLINK's triple predictor is a network of its own)
    "gel_text_own_kb_copy_adjust": ["--knowledge", "gel_text", "--triple_encoder", "own", "--kb_constrained",
                                    "--answer_from_kb", "--head_logit_adjustment"],
    # the head also learns from the rows without a triple whose answer names a head (type A questions)
    "gel_text_kb_copy_adjust_answers": ["--knowledge", "gel_text", "--kb_constrained", "--answer_from_kb",
                                        "--head_logit_adjustment", "--head_from_answers"],
    "gel_text_own_kb_copy_adjust_answers": ["--knowledge", "gel_text", "--triple_encoder", "own", "--kb_constrained",
                                            "--answer_from_kb", "--head_logit_adjustment", "--head_from_answers"],
    "gel_text_own_cascade_kb_copy_adjust": ["--knowledge", "gel_text", "--triple_encoder", "own", "--triple_head",
                                            "cascade", "--kb_constrained", "--answer_from_kb",
                                            "--head_logit_adjustment"],
    # the KB triple scored by the tail classifier's own p(t), so that the tail a question names also picks the relation
    "gel_text_cascade_kb_copy_product": ["--knowledge", "gel_text", "--triple_head", "cascade", "--kb_constrained",
                                         "--kb_score", "product", "--answer_from_kb"],
    # the answer pass trained on the model's runner-up KB triple at 0.3, about the valid triple error (1 - valid_hrt)
    "gel_text_cascade_kb_copy_noise": ["--knowledge", "gel_text", "--triple_head", "cascade", "--kb_constrained",
                                       "--answer_from_kb", "--triple_noise", "0.3"],
    "gel_text_own_cascade_kb_copy_adjust_noise": ["--knowledge", "gel_text", "--triple_encoder", "own",
                                                  "--triple_head", "cascade", "--kb_constrained", "--answer_from_kb",
                                                  "--head_logit_adjustment", "--triple_noise", "0.3"],
    "gel_text_kb_copy_adjust_answers_noise": ["--knowledge", "gel_text", "--kb_constrained", "--answer_from_kb",
                                              "--head_logit_adjustment", "--head_from_answers",
                                              "--triple_noise", "0.3"],
    # the tail copied from the predicted head's KB fact whose relation a classifier of the answer's chooses
    "gel_text_own_cascade_kb_copy_adjust_noise_relation": ["--knowledge", "gel_text", "--triple_encoder", "own",
                                                           "--triple_head", "cascade", "--kb_constrained",
                                                           "--answer_from_kb", "--head_logit_adjustment",
                                                           "--triple_noise", "0.3", "--answer_relation"],
}
DEFAULT = ["none", "text", "ideal", "gel", "gel_text_cascade_kb"]


def options(config, args):
    chosen = CONFIGS[config]
    knowledge = chosen[chosen.index("--knowledge") + 1]
    extra = ["--kge_dir", args.kge_dir] if kn.embeds(knowledge) else []
    flags = {"knowledge": knowledge, "kb_constrained": "--kb_constrained" in chosen,
             "answer_from_kb": "--answer_from_kb" in chosen}
    if args.kb and kn.uses_kb(flags):
        extra += ["--kb", args.kb]
    return chosen + extra


def run(config, seed, args):
    """Trains and evaluates one configuration and seed unless that was done (an interrupted run is resumed);
    returns its run directory."""
    out = os.path.join(args.out, f"{config}_seed{seed}")
    started = glob.glob(os.path.join(out, "*", "config.json"))
    if started and os.path.isfile(os.path.join(os.path.dirname(started[0]), "eval_all.json")):
        return os.path.dirname(started[0])
    if not started:
        command = ["main.py", "--preset", args.preset, "--data_dir", args.data_dir, "--seed", str(seed),
                   "--results_dir", out, *options(config, args), *args.main_args]
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
    p.add_argument("--kge_dir", required=True, help="KG embeddings from kge.py, for ideal and gel")
    p.add_argument("--kb", default=None, help="knowledge base CSV (h, r, t) of the configurations that use one "
                                              "(default: main.py's: the data's triples.csv, else its triples)")
    p.add_argument("--out", required=True, help="where the runs and the comparison go")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="seeds of every configuration")
    p.add_argument("--configs", nargs="+", default=DEFAULT, choices=list(CONFIGS), help="configurations to run")
    p.add_argument("--preset", default="sample", help="main.py --preset of every run")
    p.add_argument("main_args", nargs="*", help="further main.py options for every run (after --)")
    args = p.parse_args()
    runs = [run(config, seed, args) for config in args.configs for seed in args.seeds]
    subprocess.run([sys.executable, "report.py", "--compare", *runs, "--out", args.out], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
