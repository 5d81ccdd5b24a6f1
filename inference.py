"""Test accuracy of a trained run, overall and per question type (A/B) and category (vqa/triple/abstract).

    python inference.py --model_path results/all_1228_1734 --infer_data all|abstract|triple|vqa

Writes <run>/predictions_<infer_data>.csv and <run>/eval_<infer_data>.json (with --split train or valid,
predictions_<split>_<infer_data>.csv and eval_<split>_<infer_data>.json, beside the test's); for a model that
predicts the triple (gel_vqa, hilink, hilink_kb) also the accuracy of the predicted triple's head, relation, tail and
whole (hrt) on the rows with a gold triple.
"""
import argparse
import os
import sys

import kb
import knowledge
import plots
import report
import util
from answering import make_dataset, predict, say_truncation
from encoders import OfflineError
from images import ImageCache
from splits import report_shared_images
from model_card import write_model_card
from models import load_run
from loaders import make_loader
from vqa_dataset import DataError, format_triples, read_data, run_data_dir, select_rows, validate


def add_predictions(df, result, vocab):
    """Adds each row's answer, its probability, whether it is right, with a copy gate where it came from, and,
    where the model predicts one, the predicted triple ('' for a prediction of no knowledge)."""
    df["prediction"], df["confidence"] = result["answer"], result["confidence"]
    df["correct"] = result["right"].numpy()
    if "source" in result:
        df["answered_from"] = [kb.SOURCES[i] for i in result["source"].tolist()]
    if "triple" in result:
        names = [vocab.names(ids) for ids in result["triple"].tolist()]  # None: no knowledge predicted
        df["predicted_triple"] = [format_triples([n]) if n else "" for n in names]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="run directory or its .safetensors weights (default: newest run)")
    p.add_argument("--infer_data", default="all", choices=["all", "abstract", "triple", "vqa"],
                   help="category of test questions to evaluate")
    p.add_argument("--data_dir", default=None, help="data directory (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split to evaluate")
    p.add_argument("--results_dir", default="results", help="where to look for the newest run")
    p.add_argument("--batch_size", type=util.at_least(1), default=256, help="batch size")
    p.add_argument("--num_workers", type=util.at_least(0), default=0, help="DataLoader worker processes")
    p.add_argument("--kb", default=None, help=kb.KB_OPTION_HELP)
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, ...; the precision is the run's (--precision of main.py) on this device")
    p.add_argument("--skip_bad", action="store_true",
                   help="leave out rows with problems instead of stopping; written to skipped_rows_<infer_data>.csv "
                        "(skipped_rows_<split>_<infer_data>.csv for --split train or valid)")
    args = p.parse_args()
    try:
        summary, run_dir, evaluation, image = evaluate(args)
    except (OfflineError, DataError, util.CheckpointError, util.UsageError, FileNotFoundError, ValueError,
            OSError) as e:
        sys.exit(f"error: {e}")
    show(summary, args)
    print(f"wrote {run_dir}/predictions_{evaluation}.csv, eval_{evaluation}.json, {image}, report.md and README.md "
          f"(the model card)")


def evaluate(args):
    """Evaluates the run on its split and writes its predictions, eval json, report section and figure (each
    atomically: a fault leaves no half-written file); returns (summary, run directory, evaluation name, figure)."""
    evaluation = report.evaluation_name(args.split, args.infer_data)  # its files: eval_<evaluation>.json, ...
    device = util.pick_device(args.device)
    model, tokenizer, config, answers, run_dir = load_run(args.model_path, device, args.results_dir, args.kb)
    precision = util.pick_precision(device, util.run_option(config, "precision"))
    data_dir = run_data_dir(config, args.data_dir)
    data = read_data(data_dir, run_dir)
    report_shared_images(select_rows(data, lang=config.get("lang", "bi")))
    df = select_rows(data, args.split, config["train_data"], args.infer_data, config.get("lang", "bi"))
    df, skipped = validate(df, data_dir, args.skip_bad)
    if len(df) == 0:
        raise DataError(f"no {args.split} rows for --infer_data {args.infer_data} (train_data "
                        f"{config['train_data']}) in {data_dir}/data.csv.")
    images = ImageCache(data_dir, df["image"], config["img_size"], user=run_dir)
    say_truncation(model, tokenizer, df, config["max_token"])
    dataset = make_dataset(model, df, images, tokenizer, answers, config["max_token"])
    loader = make_loader(dataset, args.batch_size, args.num_workers, device)
    result = predict(model, loader, device, precision, top_k=1, desc=args.split)

    add_predictions(df, result, model.vocab)
    summary = {"accuracy": float(df["correct"].mean()), "n": int(len(df)), "by_type": report.accuracy_table(df),
               "unknown_answers": int((~df["answer"].isin(set(answers))).sum()), "skipped_rows": len(skipped),
               "model": run_dir, "data_dir": data_dir, "split": args.split, "infer_data": args.infer_data,
               "model_name": model.config.name,
               "kb": args.kb or (os.path.join(run_dir, knowledge.KB_FILE) if model.config.uses_kb() else None)}
    if "predicted_triple" in df:
        summary["triple_accuracy"] = report.triple_accuracy(df)
        summary["unseen_triples"] = dataset.unseen()
    if "answered_from" in df:
        summary["answered_from"] = report.path_table(df)
    summary.update(report.seen_table(df, select_rows(data, "train", config["train_data"],
                                                     lang=config.get("lang", "bi"))))
    if len(skipped):
        util.write_csv(os.path.join(run_dir, f"skipped_rows_{evaluation}.csv"), skipped)
        print(f"--skip_bad: skipped {len(skipped)} row(s) with problems, listed in "
              f"{run_dir}/skipped_rows_{evaluation}.csv")
    util.write_csv(os.path.join(run_dir, f"predictions_{evaluation}.csv"), df.drop(columns=["split"]))
    util.write_json(os.path.join(run_dir, f"eval_{evaluation}.json"), summary)
    image = report.add_test_section(run_dir, summary, df)
    plots.plot_by_type(summary["by_type"], os.path.join(run_dir, image), overall=summary,
                       title=f"{args.split} accuracy, infer_data {args.infer_data}")
    write_model_card(run_dir, sorted(set(df["lang"]) - {""}))
    return summary, run_dir, evaluation, image


def show(summary, args):
    """The accuracies, as a table per type, triple, seen/unseen and answer source."""
    print(f"{args.split} accuracy ({args.infer_data}): {100 * summary['accuracy']:.2f}% on {summary['n']} questions")
    unknown = summary["unknown_answers"]
    if unknown:
        print(f"{unknown} {args.split} answers never occur in training; only a copied name can get them right"
              if "answered_from" in summary else f"{unknown} {args.split} answers never occur in training; they count "
                                                 f"as wrong")
    print(f"{'type':<10}{'accuracy':>10}{'n':>8}")
    for name, row in summary["by_type"].items():
        print(f"{name:<10}{100 * row['accuracy']:>9.2f}%{row['n']:>8}")
    if "triple_accuracy" in summary:
        print(f"predicted triple on the rows with a gold triple ({summary['unseen_triples']} of them hold a "
              f"part outside the train and valid triples):\n"
              f"{'type':<10}{'head':>8}{'rel.':>8}{'tail':>8}{'triple':>8}{'n':>8}")
        for name, row in summary["triple_accuracy"].items():
            print(f"{name:<10}" + "".join(f"{100 * row[k]:>7.1f}%" for k in ("h", "r", "t", "hrt")) + f"{row['n']:>8}")
    for group in ("unseen", "seen"):
        print(f"rows whose triple / answer is {group} in training: " + " / ".join(
            f"{100 * row['accuracy']:.2f}% of {row['n']}" if row["accuracy"] is not None else "none"
            for row in summary[group].values()))
    if "answered_from" in summary:
        print(f"answered from (the copy gate):\n{'path':<12}{'share':>8}{'accuracy':>10}{'n':>8}")
        for path, row in summary["answered_from"].items():
            print(f"{path:<12}{100 * row['share']:>7.1f}%{100 * row['accuracy']:>9.1f}%{row['n']:>8}")


if __name__ == "__main__":
    main()
