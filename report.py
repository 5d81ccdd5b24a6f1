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
    predicted = [(parse_triples(cell) or [("",) * 3])[0] for cell in rows["predicted_triple"]]  # '': none predicted
    hits = pd.DataFrame([[g[i] == p[i] for i in range(3)] for g, p in zip(gold, predicted)], columns=list("hrt"),
                        index=rows.index, dtype=bool).assign(hrt=lambda d: d.all(axis=1))
    groups = [("all", rows.index)] + [(value, rows.index[rows[column] == value])
                                       for column, values in [("question_type", ["A", "B"]),
                                                              ("category", ["vqa", "triple", "abstract"])]
                                       for value in values if (rows[column] == value).any()]
    return {name: {**{k: float(hits.loc[index, k].mean()) for k in ("h", "r", "t", "hrt")}, "n": len(index)}
            for name, index in groups if len(index)}


def seen_table(df, train):
    """{"unseen": {"triple": {"accuracy", "n"}, "answer": ...}, "seen": ...}: accuracy on the rows whose (first)
    triple, or whose answer, never occurs in the training rows (train), and on the others; df has triple, answer and
    correct. A row without a triple counts for neither triple group."""
    known = {t for cell in train["triple"] for t in parse_triples(cell)}
    first = df["triple"].map(lambda cell: (parse_triples(cell) or [None])[0])
    has_triple = first.notna()
    unseen = {"triple": has_triple & ~first.isin(known), "answer": ~df["answer"].isin(set(train["answer"]))}
    seen = {"triple": has_triple & first.isin(known), "answer": ~unseen["answer"]}

    def accuracy(mask):
        return {"accuracy": float(df.loc[mask, "correct"].mean()) if mask.any() else None, "n": int(mask.sum())}
    return {group: {kind: accuracy(masks[kind]) for kind in ("triple", "answer")}
            for group, masks in (("unseen", unseen), ("seen", seen))}


def path_table(df):
    """{path: {"share", "accuracy", "n"}}: how often each path (the vocabulary, a copied head or tail) answered, and
    how often it was right; df has answered_from and correct."""
    return {path: {"share": len(rows) / len(df), "accuracy": float(rows["correct"].mean()), "n": len(rows)}
            for path, rows in df.groupby("answered_from", sort=False)}


def data_statistics(df):
    """Rows per split and type (A/B) and category (vqa/triple/abstract), as a markdown table."""
    counts = pd.concat([pd.crosstab(df["split"], df["question_type"]), pd.crosstab(df["split"], df["category"])],
                       axis=1)
    counts = counts.reindex(columns=[t for t in TYPES if t in counts.columns], fill_value=0)
    counts.insert(0, "rows", df["split"].value_counts())
    counts = counts.reindex([s for s in ("train", "valid", "test") if s in counts.index])
    return markdown_table(counts.reset_index().values.tolist(), ["split"] + list(counts.columns))


def markdown_table(rows, header):
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def type_rows(overall, n, by_type):
    return [["all", f"{100 * overall:.2f}%", n]] + [[t, f"{100 * v['accuracy']:.2f}%", v["n"]]
                                                     for t, v in by_type.items()]


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


def evaluation_name(split, infer_data):
    """What an evaluation's files are named after (eval_NAME.json, predictions_NAME.csv, its report section): its
    --infer_data on the test split, else split_infer_data, so that evaluating another split never replaces the test's
    evaluation, which report.py --compare and tools/knowledge_runs.py read."""
    return infer_data if split == "test" else f"{split}_{infer_data}"


def add_test_section(run_dir, report, df):
    """Adds (or replaces) the section of one split and --infer_data: accuracy per type, by_type.png, frequent
    confusions."""
    infer_data, name = report["infer_data"], evaluation_name(report["split"], report["infer_data"])
    wrong = df[~df["correct"]]
    confusions = wrong.groupby(["answer", "prediction"]).size().sort_values(ascending=False).head(10)
    image = "by_type.png" if name == "all" else f"by_type_{name}.png"
    section = "\n\n".join([
        f"<!-- test:{name} -->\n## Test ({report['split']} split, infer_data {infer_data})",
        f"Accuracy {100 * report['accuracy']:.2f}% on {report['n']} questions"
        + (f"; {report['unknown_answers']} answers never seen in training count as wrong"
           if report["unknown_answers"] else "")
        + ".\n\n" + markdown_table(type_rows(report["accuracy"], report["n"], report["by_type"]),
                                   ["type", "accuracy", "n"]),
        f"![accuracy per type]({image})",
        *([seen_section(report["unseen"], report["seen"])] if "unseen" in report else []),
        *([triple_section(report["triple_accuracy"])] if "triple_accuracy" in report else []),
        *([path_section(report["answered_from"])] if "answered_from" in report else []),
        "Most frequent confusions:\n\n" + (markdown_table([[g, p, c] for (g, p), c in confusions.items()],
                                                         ["gold", "predicted", "count"])
                                           if len(confusions) else "none"),
    ]) + "\n<!-- /test -->\n"
    path = os.path.join(run_dir, REPORT_FILE)
    text = re.sub(rf"<!-- test:{name} -->.*?<!-- /test -->\n", "", _read(path), flags=re.S)
    util.atomic_write(path, (text.rstrip("\n") + "\n\n" + section).encode("utf-8"))
    return image


def seen_section(unseen, seen):
    def cells(row):
        return [f"{100 * row['accuracy']:.1f}%" if row["accuracy"] is not None else "", row["n"]]
    rows = [[f"{kind} {group} in training", *cells(table[kind])]
            for kind in ("triple", "answer") for group, table in (("unseen", unseen), ("seen", seen))]
    return ("Rows whose triple, or whose answer, never occurs in the training rows, and the others:\n\n"
            + markdown_table(rows, ["rows", "accuracy", "n"]))


def triple_section(accuracy):
    rows = [[name, *[f"{100 * row[k]:.1f}%" for k in ("h", "r", "t", "hrt")], row["n"]]
            for name, row in accuracy.items()]
    return ("Predicted triple against the first gold triple, on the rows that have one:\n\n"
            + markdown_table(rows, ["type", "head", "relation", "tail", "triple", "n"]))


def path_section(paths):
    rows = [[path, f"{100 * row['share']:.1f}%", f"{100 * row['accuracy']:.1f}%", row["n"]]
            for path, row in paths.items()]
    return ("Where the answers came from (--answer_from_kb): the answer vocabulary, or the name of the triple's head "
            "or tail:\n\n" + markdown_table(rows, ["path", "share", "accuracy", "n"]))


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# sizes derived from the data and the models: left out of the comparison's columns of differing options too
NOT_OPTIONS = RUN_SUMMARY | {"num_answers", "image_arch", "knowledge_sizes", "kge_widths", "knowledge_missing_in_kge",
                             "kb_triples", "num_entities", "num_relations",
                             "command"}  # the command line is the run's record: it names the seed and folders too
TEST_COLUMNS = ["all", "A", "B", "vqa", "triple", "abstract"]
METRICS = (["best_valid"] + [f"test_{t}" for t in TEST_COLUMNS] + [f"test_triple_{k}" for k in ("h", "r", "t", "hrt")]
           + ["test_unseen_triple", "test_unseen_answer", "train_seconds"])


def compare(run_dirs):
    """One row per run: the options that differ between the runs, best valid accuracy, test accuracy overall and per
    type (its eval_all.json from inference.py), the predicted triple's accuracy where there is one, and the
    training time (the epochs' seconds in history.json)."""
    runs = []
    for run_dir in run_dirs:
        if not os.path.isfile(os.path.join(run_dir, util.CONFIG_FILE)):  # kge output, a results folder's other files
            print(f"note: left out {run_dir}: not a run directory of main.py (no {util.CONFIG_FILE})")
            continue
        config = options_of(util.read_json(os.path.join(run_dir, util.CONFIG_FILE)))
        path = os.path.join(run_dir, "eval_all.json")
        history = os.path.join(run_dir, "history.json")
        runs.append((run_dir, config, util.read_json(path) if os.path.isfile(path) else {},
                     util.read_json(history) if os.path.isfile(history) else []))
    if not runs:
        raise FileNotFoundError(f"none of {list(run_dirs)[:5]} is a run directory of main.py (no config.json).")
    keys = sorted({k for _, config, _, _ in runs for k in config} - NOT_OPTIONS)
    differing = [k for k in keys if len({json.dumps(util.run_option(c, k), sort_keys=True) for _, c, _, _ in runs}) > 1]
    table = []
    for run_dir, config, test, history in runs:
        row = {"run": os.path.normpath(run_dir), **{k: util.run_option(config, k) for k in differing},
               "best_valid": config.get("best_valid_acc")}
        by_type = {"all": {"accuracy": test["accuracy"]}, **test["by_type"]} if test else {}
        row.update({f"test_{t}": by_type[t]["accuracy"] if t in by_type else None for t in TEST_COLUMNS})
        triple = test.get("triple_accuracy", {}).get("all", {})
        row.update({f"test_triple_{k}": triple.get(k) for k in ("h", "r", "t", "hrt")})
        row.update({f"test_unseen_{k}": test.get("unseen", {}).get(k, {}).get("accuracy")
                    for k in ("triple", "answer")})
        row["train_seconds"] = sum(r["seconds"] for r in history) if history else None
        table.append(row)
    return pd.DataFrame(table)


def options_of(config):
    """A run's config with its model's settings as options of their own (model.<setting>), for the comparison."""
    model = config.get("model")
    if not isinstance(model, dict):  # a run of a version before models had names
        return config
    return {**{k: v for k, v in config.items() if k != "model"}, "model": model.get("name"),
            **{f"model.{k}": v for k, v in model.items() if k != "name"}}


def group_seeds(table):
    """The runs that differ only in --seed or --valid_fold as one row each: the mean and standard deviation of every
    metric over them, and their number (runs)."""
    options = [c for c in table.columns if c not in METRICS and c not in ("run", "seed", "valid_fold")]
    key = table[options].apply(lambda row: json.dumps(row.tolist(), default=str), axis=1) if options else \
        pd.Series("", index=table.index)
    rows = []
    for _, group in table.groupby(key, sort=False):
        metrics = group[METRICS].apply(pd.to_numeric)
        row = {**group.iloc[0][options].to_dict(), "runs": len(group)}
        for metric in METRICS:
            row[metric], row[f"{metric}_std"] = metrics[metric].mean(), metrics[metric].std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows)


def cell(value, std=None, metric=False):
    """A table cell: a metric as a percentage (± its std), an option as it was given."""
    if value is None or value != value:  # absent, NaN
        return ""
    if metric:
        return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None and std == std else "")
    return value if isinstance(value, str) else f"`{value}`"


def comparison_markdown(table):
    header = [c.replace("test_", "test ").replace("best_valid", "best valid") for c in table.columns]
    rows = [[cell(v, metric=c in METRICS) if c != "train_seconds" else
             (f"{v:.0f} s" if v == v and v is not None else "") for c, v in zip(table.columns, row)]
            for row in table.itertuples(index=False)]
    return markdown_table(rows, header) + \
        "\n\nAccuracies in %; test from each run's eval_all.json (python inference.py --model_path RUN)."


def seeds_markdown(grouped):
    """The grouped table: every metric as mean ± standard deviation over the seeds and folds."""
    shown = [c for c in grouped.columns if not c.endswith("_std")]
    rows = []
    for row in grouped.to_dict("records"):  # each column's own type: iterrows would make runs a float
        rows.append([(f"{row[c]:.0f} ± {row[c + '_std']:.0f} s" if row["runs"] > 1 else f"{row[c]:.0f} s")
                     if c == "train_seconds" and row[c] == row[c] else
                     cell(row[c], row.get(f"{c}_std"), c in METRICS) for c in shown])
    header = [c.replace("test_", "test ").replace("best_valid", "best valid") for c in shown]
    return markdown_table(rows, header) + ("\n\nMean ± standard deviation over the runs that differ only in --seed or "
                                           "--valid_fold; accuracies in %.")


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", nargs="+", required=True, metavar="RUN_DIR", help="run directories to tabulate")
    p.add_argument("--out", default="results", help="where comparison.md and comparison.csv go")
    p.add_argument("--force", action="store_true",
                   help="replace a comparison.md or comparison.csv in --out that this repo did not write")
    args = p.parse_args()
    try:
        outputs = util.OutputFolder(args.out, args.force).check(["comparison.md", "comparison.csv",
                                                                 "comparison_seeds.csv"])
        table = compare(args.compare)
        text = comparison_markdown(table)
        grouped = group_seeds(table)
        written = ["comparison.md", "comparison.csv"]
        if (grouped["runs"] > 1).any():
            text = "## Mean over seeds and folds\n\n" + seeds_markdown(grouped) + "\n\n## Every run\n\n" + text
            outputs.write("comparison_seeds.csv", util.csv_bytes(grouped))
            written.append("comparison_seeds.csv")
        outputs.write("comparison.md", (text + "\n").encode("utf-8"))
        outputs.write("comparison.csv", util.csv_bytes(table))
    except (FileNotFoundError, util.CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    print(text)
    print(f"wrote {', '.join(os.path.join(args.out, name) for name in written)}")


if __name__ == "__main__":
    main()
