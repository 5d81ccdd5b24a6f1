"""A run's model card: its README.md in the Hugging Face layout (YAML front matter with the licence, languages, data
sets and a model-index of its test accuracies, then its model, data, split, command and results), written or updated
by inference.py each time the run is evaluated, so that a run directory can be shared as it stands."""
import glob
import os

import yaml

import util
from vqa_dataset import SOURCE_FILE

CARD_FILE = "README.md"
LICENSE = "mit"  # the repository's (LICENSE), and XLM-R's
LANGUAGES = {"ko": ["ko"], "en": ["en"], "bi": ["ko", "en"]}
DATASET_NAMES = {"BOK-VQA": "BOK-VQA", "NIA": "NIA"}  # an import's format and the data set it names


def datasets(data_dir):
    """The data sets a run's data is: BOK-VQA or NIA where its import says so, else its folder's name."""
    path = os.path.join(data_dir, SOURCE_FILE)
    formats = util.read_json(path).get("formats", []) if os.path.isfile(path) else []
    named = [DATASET_NAMES[f] for f in formats if f in DATASET_NAMES]
    return named or [os.path.basename(os.path.normpath(data_dir))]


def test_results(run_dir):
    """{infer_data: eval json} of the run's test evaluations (inference.py's eval_<infer_data>.json)."""
    results = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "eval_*.json"))):
        report = util.read_json(path)
        if report.get("split") == "test":
            results[report["infer_data"]] = report
    return results


def front_matter(config, run_dir, results, languages):
    model = config.get("model", {}).get("name", "baseline")
    names = datasets(config["data_dir"])
    index = [{"task": {"type": "visual-question-answering", "name": "Visual Question Answering"},
              "dataset": {"name": names[0], "type": names[0], "split": "test", "config": infer_data},
              "metrics": [{"type": "accuracy", "value": round(100 * report["accuracy"], 2),
                           "name": f"test accuracy ({infer_data}, {report['n']} questions)"}]}
             for infer_data, report in results.items()]
    return {"language": languages, "license": LICENSE,
            "library_name": "pytorch", "metrics": ["accuracy"], "datasets": names,
            "tags": ["visual-question-answering", "knowledge-based-vqa", model],
            "model-index": [{"name": os.path.basename(os.path.normpath(run_dir)), "results": index}]}


def body(config, run_dir, results):
    model = config.get("model", {"name": "baseline"})
    settings = ", ".join(f"{k} {v}" for k, v in model.items() if k != "name") or "none"
    stats = config.get("data_stats", {})
    rows = "\n".join(f"| {name} | {100 * r['accuracy']:.2f}% | {r['n']} |" for name, r in results.items())
    command = f"```shell\n{config['command']}\n```" if config.get("command") else \
        "The run was trained by an earlier version, which kept no command; config.json holds its options."
    return "\n\n".join([
        f"# {os.path.basename(os.path.normpath(run_dir))}",
        f"## Model\n\n`{model['name']}` of VQA_NIA (docs/knowledge.md), settings: {settings}. Text encoder "
        f"{config['text_model']}, image encoder {config['image_model']} at {config['img_size']} px"
        f"{', pretrained' if config.get('pretrained') else ', trained from scratch'}. Weights: "
        f"`{config.get('weights', 'infer_model_*.safetensors')}` (safetensors), with config.json and answers.json.",
        f"## Data\n\n`{config['data_dir']}` ({', '.join(datasets(config['data_dir']))}), question type "
        f"{config['train_data']}, language {config.get('lang', 'bi')}; {stats.get('answers', '?')} answers.",
        f"## Split\n\nThe run's own split (split.csv): {stats.get('train', '?')} train, {stats.get('valid', '?')} valid"
        f" rows; the test rows below."
        + (f" Valid fold {config['valid_fold']} of the data's folds." if config.get("valid_fold") else ""),
        f"## Command\n\n{command}",
        "## Results\n\nTest accuracy (`python inference.py --model_path RUN --infer_data ...`):\n\n"
        "| infer_data | accuracy | questions |\n|---|---|---|\n" + rows,
        "## License\n\nMIT (the VQA_NIA repository's LICENSE). The encoders keep their own: XLM-RoBERTa MIT, timm's "
        "ResNet weights Apache-2.0.",
    ])


def write_model_card(run_dir, languages=None):
    """Writes (or replaces) the run's README.md from its config.json and test evaluations; languages: those of its
    rows (default: its --lang's)."""
    config = util.read_json(os.path.join(run_dir, util.CONFIG_FILE))
    results = test_results(run_dir)
    languages = languages or LANGUAGES.get(config.get("lang", "bi"), ["ko", "en"])
    text = "---\n" + yaml.safe_dump(front_matter(config, run_dir, results, languages), allow_unicode=True,
                                    sort_keys=False) + \
        "---\n\n" + body(config, run_dir, results) + "\n"
    util.atomic_write(os.path.join(run_dir, CARD_FILE), text.encode("utf-8"))


def read_model_card(path):
    """(front matter dict, body text) of a model card."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    _, front, rest = text.split("---\n", 2)
    return yaml.safe_load(front), rest

