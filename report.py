"""The run report, <run>/report.md: options, data statistics and training curve from main.py; test accuracy per type,
its bar chart and the most frequent confusions from inference.py (one section per --infer_data, replaced on rerun).

    python report.py --compare results/*      # runs side by side, as markdown and CSV (comparison.md, comparison.csv)
"""
import json
import os
import re

import pandas as pd

import util
from vqa_dataset import parse_triples

REPORT_FILE = "report.md"
RUN_SUMMARY = {"data_stats", "weights", "best_epoch", "best_valid_acc"}  # what config.json says of a run, not options
TYPES = ["A", "B", "vqa", "triple", "abstract"]


def accuracy_table(df):
    """{"A": {"accuracy", "n"}, "B": ..., "vqa": ..., "triple": ..., "abstract": ...} for the types present;
    df has question_type, category and a boolean correct column."""
    table = {}
    for column, values in [("question_type", ["A", "B"]), ("category", ["vqa", "triple", "abstract"])]:
        for value in values:
            rows = df[df[column] == value]
            if len(rows):
                table[value] = {"accuracy": float(rows["correct"].mean()), "n": int(len(rows))}
    return table


def triple_accuracy(df):
    """{"all": {"h", "r", "t", "hrt", "n"}, "A": ..., "B": ..., "triple": ...}: how often the predicted triple's head,
    relation, tail and all three equal the first gold triple's, on the rows with a gold triple (a part unseen in
    training is never equal); df has triple, predicted_triple, question_type and category."""
    rows = df[df["triple"] != ""]
    gold = [parse_triples(cell)[0] for cell in rows["triple"]]
    predicted = [parse_triples(cell)[0] for cell in rows["predicted_triple"]]
    hits = pd.DataFrame([[g[i] == p[i] for i in range(3)] for g, p in zip(gold, predicted)], columns=list("hrt"),
                        index=rows.index, dtype=bool).assign(hrt=lambda d: d.all(axis=1))
    groups = [("all", rows.index)] + [(value, rows.index[rows[column] == value])
                                       for column, values in [("question_type", ["A", "B"]),
                                                              ("category", ["vqa", "triple", "abstract"])]
                                       for value in values if (rows[column] == value).any()]
    return {name: {**{k: float(hits.loc[index, k].mean()) for k in ("h", "r", "t", "hrt")}, "n": len(index)}
            for name, index in groups if len(index)}


def data_statistics(df):
    """Rows per split and type (A/B) and category (vqa/triple/abstract), as a markdown table."""
    counts = pd.concat([pd.crosstab(df["split"], df["question_type"]), pd.crosstab(df["split"], df["category"])], axis=1)
    counts = counts.reindex(columns=[t for t in TYPES if t in counts.columns], fill_value=0)
    counts.insert(0, "rows", df["split"].value_counts())
    counts = counts.reindex([s for s in ("train", "valid", "test") if s in counts.index])
    return markdown_table(counts.reset_index().values.tolist(), ["split"] + list(counts.columns))


def markdown_table(rows, header):
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def type_rows(overall, n, by_type):
    return [["all", f"{100 * overall:.2f}%", n]] + [[t, f"{100 * v['accuracy']:.2f}%", v["n"]] for t, v in by_type.items()]


def write_training_report(run_dir, config, data, answers, answer_counts, history, valid_by_type):
    """report.md's training part; keeps any test sections inference.py added before (a resumed run)."""
    best = max(history, key=lambda r: r["valid_acc"])
    options = {k: v for k, v in config.items() if k not in RUN_SUMMARY}
    frequent = ", ".join(f"{a} ({answer_counts[a]})" for a in answers[:10])
    text = "\n\n".join([
        f"# Run {os.path.basename(os.path.normpath(run_dir))}",
        "## Options\n\n" + markdown_table([[k, f"`{v}`"] for k, v in options.items()], ["option", "value"]),
        f"## Data\n\n{config['data_dir']}/data.csv, train_data {config['train_data']}, lang {config['lang']}; "
        f"{config['data_stats']['skipped_rows']} rows skipped (--skip_bad).\n\n" + data_statistics(data),
        f"Answer vocabulary: {len(answers)} answers from the training split. Most frequent: {frequent}.",
        f"## Training\n\nBest epoch {best['epoch']} of {len(history)}: valid accuracy {100 * best['valid_acc']:.2f}% "
        f"(weights `{config.get('weights') or ''}`).\n\n![curves](curves.png)",
        "### Validation accuracy per type (best epoch)\n\n"
        + markdown_table(type_rows(best["valid_acc"], config["data_stats"]["valid"], valid_by_type),
                         ["type", "accuracy", "n"]),
    ])
    path = os.path.join(run_dir, REPORT_FILE)
    tests = "".join(re.findall(r"<!-- test:\w+ -->.*?<!-- /test -->\n", _read(path), flags=re.S))
    util.atomic_write(path, (text + "\n\n" + tests).encode("utf-8"))


def add_test_section(run_dir, report, df):
    """Adds (or replaces) the section of one --infer_data: accuracy per type, by_type.png, frequent confusions."""
    infer_data = report["infer_data"]
    wrong = df[~df["correct"]]
    confusions = wrong.groupby(["answer", "prediction"]).size().sort_values(ascending=False).head(10)
    image = "by_type.png" if infer_data == "all" else f"by_type_{infer_data}.png"
    section = "\n\n".join([
        f"<!-- test:{infer_data} -->\n## Test ({report['split']} split, infer_data {infer_data})",
        f"Accuracy {100 * report['accuracy']:.2f}% on {report['n']} questions"
        + (f"; {report['unknown_answers']} answers never seen in training count as wrong" if report["unknown_answers"] else "")
        + ".\n\n" + markdown_table(type_rows(report["accuracy"], report["n"], report["by_type"]), ["type", "accuracy", "n"]),
        f"![accuracy per type]({image})",
        *([triple_section(report["triple_accuracy"])] if "triple_accuracy" in report else []),
        "Most frequent confusions:\n\n" + (markdown_table([[g, p, c] for (g, p), c in confusions.items()],
                                                         ["gold", "predicted", "count"]) if len(confusions) else "none"),
    ]) + "\n<!-- /test -->\n"
    path = os.path.join(run_dir, REPORT_FILE)
    text = re.sub(rf"<!-- test:{infer_data} -->.*?<!-- /test -->\n", "", _read(path), flags=re.S)
    util.atomic_write(path, (text.rstrip("\n") + "\n\n" + section).encode("utf-8"))
    return image


def triple_section(accuracy):
    rows = [[name, *[f"{100 * row[k]:.1f}%" for k in ("h", "r", "t", "hrt")], row["n"]] for name, row in accuracy.items()]
    return ("Predicted triple (GEL-VQA) against the first gold triple, on the rows that have one:\n\n"
            + markdown_table(rows, ["type", "head", "relation", "tail", "triple", "n"]))


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# sizes derived from the data and the models: left out of the comparison's columns of differing options too
NOT_OPTIONS = RUN_SUMMARY | {"num_answers", "image_arch", "num_entities", "num_relations", "kge_widths",
                             "knowledge_missing_in_kge"}
TEST_COLUMNS = ["all", "A", "B", "vqa", "triple", "abstract"]


def compare(run_dirs):
    """One row per run: the options that differ between the runs, best valid accuracy, test accuracy overall and per
    type (its eval_all.json from inference.py), and the predicted triple's accuracy where there is one."""
    runs = []
    for run_dir in run_dirs:
        if not os.path.isfile(os.path.join(run_dir, util.CONFIG_FILE)):  # kge output, a results folder's other files
            print(f"note: left out {run_dir}: not a run directory of main.py (no {util.CONFIG_FILE})")
            continue
        config = util.read_json(os.path.join(run_dir, util.CONFIG_FILE))
        path = os.path.join(run_dir, "eval_all.json")
        runs.append((run_dir, config, util.read_json(path) if os.path.isfile(path) else {}))
    if not runs:
        raise FileNotFoundError(f"none of {list(run_dirs)[:5]} is a run directory of main.py (no config.json).")
    keys = sorted({k for _, config, _ in runs for k in config} - NOT_OPTIONS)
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for _, c, _ in runs}) > 1]
    table = []
    for run_dir, config, test in runs:
        row = {"run": os.path.normpath(run_dir), **{k: config.get(k) for k in differing},
               "best_valid": config.get("best_valid_acc")}
        by_type = {"all": {"accuracy": test["accuracy"]}, **test["by_type"]} if test else {}
        row.update({f"test_{t}": by_type[t]["accuracy"] if t in by_type else None for t in TEST_COLUMNS})
        row["test_triple_hrt"] = test.get("triple_accuracy", {}).get("all", {}).get("hrt")
        table.append(row)
    return pd.DataFrame(table)


def comparison_markdown(table):
    def cell(value):
        if value is None or value != value:  # absent, NaN
            return ""
        if isinstance(value, float):
            return f"{100 * value:.1f}"
        return value if isinstance(value, str) else f"`{value}`"
    header = [c.replace("test_", "test ").replace("best_valid", "best valid") for c in table.columns]
    return markdown_table([[cell(v) for v in row] for row in table.itertuples(index=False)], header) + \
        "\n\nAccuracies in %; test from each run's eval_all.json (python inference.py --model_path RUN)."


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", nargs="+", required=True, metavar="RUN_DIR", help="run directories to tabulate")
    p.add_argument("--out", default="results", help="where comparison.md and comparison.csv go")
    p.add_argument("--force", action="store_true",
                   help="replace a comparison.md or comparison.csv in --out that this repo did not write")
    args = p.parse_args()
    try:
        outputs = util.OutputFolder(args.out, args.force).check(["comparison.md", "comparison.csv"])
        table = compare(args.compare)
        text = comparison_markdown(table)
        outputs.write("comparison.md", (text + "\n").encode("utf-8"))
        outputs.write("comparison.csv", util.csv_bytes(table))
    except (FileNotFoundError, util.CheckpointError) as e:
        raise SystemExit(f"error: {e}")
    print(text)
    print(f"wrote {args.out}/comparison.md and {args.out}/comparison.csv")


if __name__ == "__main__":
    main()
