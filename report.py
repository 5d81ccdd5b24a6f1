"""The run report, <run>/report.md: options, data statistics and training curve from main.py; test accuracy per type,
its bar chart and the most frequent confusions from inference.py (one section per --infer_data, replaced on rerun)."""
import os
import re

import pandas as pd

import util

REPORT_FILE = "report.md"
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
    options = {k: v for k, v in config.items() if k not in ("data_stats", "weights", "best_epoch", "best_valid_acc")}
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
        "Most frequent confusions:\n\n" + (markdown_table([[g, p, c] for (g, p), c in confusions.items()],
                                                         ["gold", "predicted", "count"]) if len(confusions) else "none"),
    ]) + "\n<!-- /test -->\n"
    path = os.path.join(run_dir, REPORT_FILE)
    text = re.sub(rf"<!-- test:{infer_data} -->.*?<!-- /test -->\n", "", _read(path), flags=re.S)
    util.atomic_write(path, (text.rstrip("\n") + "\n\n" + section).encode("utf-8"))
    return image


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""
