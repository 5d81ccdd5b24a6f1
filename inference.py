"""Test accuracy of a trained run, overall and per question type (A/B) and category (vqa/triple/abstract).

    python inference.py --model_path results/all_1228_1734 --infer_data all|abstract|triple|vqa

Writes <run>/predictions_<infer_data>.csv and <run>/eval_<infer_data>.json.
"""
import argparse
import os
import sys

import torch

import plots
import report
import util
from model import OfflineError
from vqa_dataset import DataError, ImageCache, VQADataset, read_data, select_rows, validate


def load_run(model_path=None, device="cpu", results_dir="results"):
    """(model, tokenizer, config, answers, run_dir) from a run directory or its weights; no training data needed."""
    from transformers import AutoTokenizer

    from train import build_model

    run_dir, weights = util.find_run(model_path, results_dir)
    for name in (util.CONFIG_FILE, util.ANSWERS_FILE, util.TOKENIZER_DIR, util.TEXT_CONFIG_DIR):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"{run_dir} has no {name}: weights are used from the run directory main.py "
                                    f"wrote them to, with its config.json, answers.json, tokenizer/ and text_encoder/.")
    config = util.read_json(os.path.join(run_dir, util.CONFIG_FILE))
    answers = util.read_json(os.path.join(run_dir, util.ANSWERS_FILE))
    if len(answers) != config["num_answers"]:
        raise ValueError(f"{run_dir}: answers.json has {len(answers)} answers but config.json says "
                         f"{config['num_answers']}; the run directory is inconsistent.")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(run_dir, util.TOKENIZER_DIR))
    model = build_model(config, run_dir=run_dir)
    util.load_weights(model, weights, config, answers)
    return model.to(device, memory_format=torch.channels_last).eval(), tokenizer, config, answers, run_dir


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="run directory or its .safetensors weights (default: newest run)")
    p.add_argument("--infer_data", default="all", choices=["all", "abstract", "triple", "vqa"],
                   help="category of test questions to evaluate")
    p.add_argument("--data_dir", default=None, help="data directory (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split to evaluate")
    p.add_argument("--results_dir", default="results", help="where to look for the newest run")
    p.add_argument("--batch_size", type=int, default=256, help="batch size")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--skip_bad", action="store_true",
                   help="leave out rows with problems instead of stopping; written to skipped_rows_<infer_data>.csv")
    args = p.parse_args()
    import train

    device = util.pick_device(args.device)
    try:
        model, tokenizer, config, answers, run_dir = load_run(args.model_path, device, args.results_dir)
        data_dir = args.data_dir or config["data_dir"]
        df = select_rows(read_data(data_dir), args.split, config["train_data"], args.infer_data, config.get("lang", "bi"))
        df, skipped = validate(df, data_dir, args.skip_bad)
        if len(df) == 0:
            sys.exit(f"error: no {args.split} rows for --infer_data {args.infer_data} "
                     f"(train_data {config['train_data']}) in {data_dir}/data.csv.")
        images = ImageCache(data_dir, df["image"], config["img_size"])
    except (OfflineError, DataError, util.CheckpointError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if len(skipped):
        skipped.to_csv(os.path.join(run_dir, f"skipped_rows_{args.infer_data}.csv"), index=False)
        print(f"--skip_bad: skipped {len(skipped)} row(s) with problems, listed in "
              f"{run_dir}/skipped_rows_{args.infer_data}.csv")
    answer_to_id = {a: i for i, a in enumerate(answers)}
    dataset = VQADataset(df, images, tokenizer, answer_to_id, config["max_token"])
    loader = train.make_loader(dataset, args.batch_size, False, args.num_workers, device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    result = train.predict(model, loader, device, precision, top_k=1, desc=args.split)

    df["prediction"] = [answers[i] for i in result["pred"][:, 0].tolist()]
    df["confidence"] = result["prob"][:, 0].tolist()
    df["correct"] = df["prediction"] == df["answer"]
    unknown = int((~df["answer"].isin(answer_to_id)).sum())
    summary = {"accuracy": float(df["correct"].mean()), "n": int(len(df)), "by_type": report.accuracy_table(df),
               "unknown_answers": unknown, "skipped_rows": len(skipped), "model": run_dir, "data_dir": data_dir,
               "split": args.split, "infer_data": args.infer_data}
    df.drop(columns=["split"]).to_csv(os.path.join(run_dir, f"predictions_{args.infer_data}.csv"), index=False)
    util.write_json(os.path.join(run_dir, f"eval_{args.infer_data}.json"), summary)
    image = report.add_test_section(run_dir, summary, df)
    plots.plot_by_type(summary["by_type"], os.path.join(run_dir, image), overall=summary,
                       title=f"{args.split} accuracy, infer_data {args.infer_data}")

    print(f"{args.split} accuracy ({args.infer_data}): {100 * summary['accuracy']:.2f}% on {summary['n']} questions")
    if unknown:
        print(f"{unknown} {args.split} answers never occur in training; they count as wrong")
    print(f"{'type':<10}{'accuracy':>10}{'n':>8}")
    for name, row in summary["by_type"].items():
        print(f"{name:<10}{100 * row['accuracy']:>9.2f}%{row['n']:>8}")
    print(f"wrote {run_dir}/predictions_{args.infer_data}.csv, eval_{args.infer_data}.json, {image} and report.md")


if __name__ == "__main__":
    main()
