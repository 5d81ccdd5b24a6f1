"""Models by name: the registry, typed configs and config files, what each model needs refused at once where it is
missing, the model saved with a run and read back by every script, and short runs of each model."""
import json
import shutil

import pandas as pd
import pytest

import kb
import knowledge
import main
import models
import util
from conftest import REAL_CSV, ROOT, TINY_TRAIN, only_run, run_main, run_script, script_output
from model import ConfigError
from vqa_dataset import read_data, select_rows

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def parse(*argv):
    """main.py's options, or its one error line."""
    try:
        return main.parse_args([str(a) for a in argv])
    except SystemExit as stop:
        return str(stop.code)


def test_each_model_is_a_name_with_typed_checked_settings():
    assert list(models.MODELS) == ["baseline", "gel_vqa", "hilink", "hilink_kb", "oracle_triple", "oracle_text"]
    assert parse().model_config == models.MODELS["baseline"]  # the original's model by default
    for name, config in models.MODELS.items():
        assert config.name == name and models.named(name) == config
        assert models.named(name) is not config  # a copy: the registry is not changed
    hilink = models.named("hilink", {"triple_noise": 0.3, "kb_constrained": True})
    assert hilink.triple_noise == 0.3 and models.MODELS["hilink"].triple_noise == 0.0
    for settings, words in [({"augment": True}, ["hilink has no setting augment", "teacher_forcing"]),
                            ({"triple_head": "tree"}, ["triple_head", "independent, cascade"]),
                            ({"kb_constrained": "yes"}, ["kb_constrained", "not a bool"]),
                            ({"triple_noise": 1.0, "kb_constrained": True}, ["triple_noise", "[0.0, 1.0)"]),
                            ({"triple_noise": float("nan"), "kb_constrained": True}, ["triple_noise"]),
                            ({"triple_noise": 0.3}, ["triple_noise", "kb_constrained"])]:
        with pytest.raises(ConfigError) as error:
            models.named("hilink", settings)
        assert all(w in str(error.value) for w in words), error.value
    with pytest.raises(ConfigError, match="no model named 'gel'"):
        models.named("gel")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_file_is_valid_for_its_model(path):
    values = models.read_config_file(path)
    args = parse("--config", path, "--kge_dir", "kge")
    if isinstance(args, str):  # a model that reads no KG embeddings refuses --kge_dir
        assert "reads no KG embeddings" in args
        args = parse("--config", path)
    assert not isinstance(args, str), args
    assert args.model_config.name == values.get("model", "baseline")
    settings = {k: v for k, v in values.items() if k != "model"}
    assert {k: getattr(args.model_config, k) for k in settings} == settings


def test_a_config_file_sets_settings_and_options_and_explicit_flags_win(tmp_path):
    path = tmp_path / "ablation.yaml"
    path.write_text("model: hilink\ntriple_head: independent\nlr: 0.01\nuse_transformer_layer: false\n"
                    "image_cache: false\n")
    args = parse("--preset", "sample", "--config", path)
    assert args.model_config.triple_head == "independent" and args.lr == 0.01 and not args.image_cache
    assert parse("--preset", "sample", "--config", path, "--lr", "0.5").lr == 0.5  # the command line wins
    assert parse("--config", path, "--model", "hilink_kb").model_config.kb_constrained  # its settings on hilink_kb
    for text, words in [("model: hilink\naugment: true\n", ["--config", "hilink has no setting augment"]),
                        ("resume: x\n", ["resume is not for a config file"]),
                        ("lr: fast\n", ["lr 'fast'", "float"]),
                        ("image_cache: 3\n", ["image_cache", "true or false"]),
                        ("- a list\n", ["a mapping of settings"]),
                        ("model: [unclosed\n", ["not valid YAML"]),
                        ("model: hilink\nlr: .nan\n", ["lr", "finite"])]:
        path.write_text(text)
        message = parse("--config", path)
        assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message.strip(), message
        assert all(w in message for w in words), message
    assert "cannot be read" in parse("--config", tmp_path / "missing.yaml")


def test_what_a_model_reads_is_refused_at_once_where_missing_or_unused():
    message = parse("--model", "gel_vqa")
    assert "--model gel_vqa reads KG embeddings" in message and knowledge.KGE_COMMAND in message
    assert "--model baseline reads no KG embeddings" in parse("--kge_dir", "kge")
    assert "--model hilink reads no knowledge base" in parse("--model", "hilink", "--kb", "all_triple.csv")
    assert "--model hilink_kb reads no KG embeddings" in parse("--model", "hilink_kb", "--kge_dir", "kge")
    assert not isinstance(parse("--model", "hilink_kb", "--kb", "kb.csv"), str)
    assert not isinstance(parse("--model", "oracle_triple", "--kge_dir", "kge", "--kb", "kb.csv"), str)


def test_main_py_keeps_to_its_options_budget():
    """At most 42 options (the original's six among them), and four that say what knowledge a model reads."""
    options = [a.dest for a in main.build_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(options) <= 42, options
    assert {"model", "config", "kge_dir", "kb"} <= set(options)
    assert not {"knowledge", "knowledge_fusion", "triple_head", "kb_constrained", "ablate"} & set(options)


def test_preset_bokvqa_sets_the_papers_values():
    args = parse("--preset", "bokvqa", "--model", "gel_vqa", "--kge_dir", "kge")
    paper = dict(text_model="xlm-roberta-base", image_model="resnet50", pretrained=True, img_size=224, max_token=50,
                 lr=5e-5, batch_size=128, n_epoch=50, schedule="constant", warmup=0.0, clip_grad=0.0, loss="ce",
                 dropout=0.2, dim_h=1024, freeze_text_epochs=0, text_pool="first")
    assert {k: getattr(args, k) for k in paper} == paper
    assert args.model_config.fusion == "mul" and args.model_config.augment
    assert parse("--preset", "bokvqa", "--lr", "1e-4").lr == 1e-4  # explicit flags win


def test_a_runs_model_is_saved_in_its_config_and_rebuilt_from_it():
    from encoders import small_text_config

    args = parse("--preset", "sample", "--model", "hilink_kb", "--config", ROOT / "configs" / "hilink_kb_noise.yaml")
    config = {**models.run_config(args, args.model_config, num_answers=3), "knowledge_sizes": [5, 4, 6]}
    assert config["model"] == {**models.MODELS["hilink_kb"].to_json(), "triple_noise": 0.3}
    saved = json.loads(json.dumps(config))  # as config.json holds it
    text_config = small_text_config(50, 16, hidden=32, layers=1, heads=2)
    trained = models.build_model(config, text_config, from_sources=True)
    rebuilt = models.build_model(saved, text_config)
    assert rebuilt.config == args.model_config and trained.state_dict().keys() == rebuilt.state_dict().keys()
    saved["model"]["name"] = "hilink_xl"
    with pytest.raises(Exception, match="not registered"):
        models.build_model(saved, text_config)


def test_a_short_run_of_each_model_learns(knowledge_runs, sample_dir):
    valid = select_rows(read_data(sample_dir), "valid")
    majority = valid["answer"].value_counts().iloc[0] / len(valid)
    for name, run_dir in knowledge_runs.items():
        history = json.loads((run_dir / "history.json").read_text())
        assert max(row["valid_acc"] for row in history) > 2 * majority, name
        if models.MODELS[name].predicts:  # the triple's accuracy is logged every epoch
            assert all({"valid_h", "valid_r", "valid_t", "valid_hrt", "train_hrt"} <= set(row) for row in history)
            assert history[-1]["valid_r"] > 0.5


def test_each_model_is_evaluated_from_its_run_directory_alone(knowledge_runs, sample_dir, kge_dir, tmp_path, capsys):
    import inference
    import inference_each

    moved = tmp_path / "kge_elsewhere"
    shutil.move(kge_dir, moved)  # the run directory holds the embeddings it used
    try:
        for name, run_dir in knowledge_runs.items():
            assert run_main(inference, "--model_path", run_dir, "--data_dir", sample_dir) == ""
            report = json.loads((run_dir / "eval_all.json").read_text())
            config = models.MODELS[name]
            assert report["model_name"] == name and ("triple_accuracy" in report) == config.predicts
            assert ("answered_from" in report) == getattr(config, "answer_from_kb", False)
            each = script_output(capsys, inference_each, "--model_path", run_dir, "--index", "0", "--data_dir",
                                 sample_dir)
            assert ("predicted knowledge:" in each) == config.predicts and ("knowledge:" in each) == (
                config.predicts or config.gold)
        for name in ("gel_vqa", "hilink"):
            accuracy = json.loads((knowledge_runs[name] / "eval_all.json").read_text())["triple_accuracy"]
            predictions = pd.read_csv(knowledge_runs[name] / "predictions_all.csv", dtype=str, keep_default_na=False)
            with_triple = predictions[predictions["triple"] != ""]
            heads = [p.split("|")[0] == g.split("|")[0]
                     for p, g in zip(with_triple["predicted_triple"], with_triple["triple"])]
            assert accuracy["all"]["n"] == len(with_triple)
            assert accuracy["all"]["h"] == pytest.approx(sum(heads) / len(heads))
            assert "Predicted triple" in (knowledge_runs[name] / "report.md").read_text()
    finally:
        shutil.move(moved, kge_dir)


def test_editing_a_fact_changes_the_answer_without_training_again(held_out_run, tmp_path, capsys):
    """inference_each.py answers a test question with the tail its knowledge base gives; with that fact's tail
    changed in a copy of the KB (--kb), the answer is the new tail."""
    import inference_each

    run_dir, data_dir = held_out_run
    test = select_rows(read_data(data_dir, run_dir), "test")
    for index in (i for i, cell in enumerate(test["triple"]) if cell):
        each = script_output(capsys, inference_each, "--model_path", run_dir, "--index", index)
        first = next(line for line in each.splitlines() if line.startswith("  1. "))
        if "(copied: tail)" in first:
            break
    else:
        pytest.fail("no test question was answered with a copied tail")
    predicted = next(line for line in each.splitlines() if line.startswith("predicted knowledge:"))
    head, relation, tail = (part.strip() for part in predicted.split(":", 1)[1].split("(gold")[0].split("|"))
    facts = pd.read_csv(run_dir / knowledge.KB_FILE, dtype=str, keep_default_na=False)
    fact = (facts["h"] == head) & (facts["r"] == relation)
    assert (facts.loc[fact, "t"] == tail).any() and first.split()[1] != "새보석"
    facts.loc[fact, "t"] = "새보석"  # the fact edited: a tail no run has seen
    facts.to_csv(tmp_path / "kb.csv", index=False)
    edited = script_output(capsys, inference_each, "--model_path", run_dir, "--index", index, "--kb",
                           tmp_path / "kb.csv")
    first = next(line for line in edited.splitlines() if line.startswith("  1. "))
    assert first.split()[1] == "새보석" and "(copied: tail)" in first, edited
    again = script_output(capsys, inference_each, "--model_path", run_dir, "--index", index)  # its own KB as it was
    assert next(line for line in again.splitlines() if line.startswith("  1. ")).split()[1] == tail


def test_held_out_facts_are_answered_from_the_kb_and_reported_apart(held_out_run):
    import inference

    run_dir, data_dir = held_out_run
    assert run_main(inference, "--model_path", run_dir) == ""
    report = json.loads((run_dir / "eval_all.json").read_text())
    assert report["unseen"]["answer"]["n"] > 0 and report["unseen"]["triple"]["n"] > 0
    assert {"vocabulary", "tail"} <= set(report["answered_from"])
    predictions = pd.read_csv(run_dir / "predictions_all.csv", dtype=str, keep_default_na=False)
    answers = set(json.loads((run_dir / "answers.json").read_text()))
    outside = predictions[~predictions["answer"].isin(answers)]
    assert (outside.loc[outside["answered_from"] == "vocabulary", "correct"] == "False").all()
    known = set(pd.read_csv(run_dir / knowledge.KB_FILE, dtype=str).agg("|".join, axis=1))
    assert set(predictions["predicted_triple"]) - {""} <= known  # kb_constrained: only KB triples
    assert "Rows whose triple, or whose answer, never occurs" in (run_dir / "report.md").read_text()


def fake_run(path, seed, model, accuracy, **settings):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"seed": seed, "model": {"name": model, **settings}, "lr": 1e-3,
                                                  "best_valid_acc": accuracy}))
    (path / "eval_all.json").write_text(json.dumps({"accuracy": accuracy, "n": 10, "by_type": {
        "A": {"accuracy": accuracy, "n": 5}, "B": {"accuracy": accuracy / 2, "n": 5}}}))
    (path / "history.json").write_text(json.dumps([{"epoch": 1, "seconds": 10 * seed}]))
    return path


def test_compare_groups_runs_that_differ_only_in_seed(tmp_path):
    runs = [fake_run(tmp_path / f"{k}_{seed}", seed, k, acc, **settings) for k, seed, acc, settings in
            [("baseline", 1, 0.5, {}), ("baseline", 2, 0.7, {}), ("baseline", 3, 0.6, {}),
             ("hilink", 1, 0.8, {"triple_noise": 0.3}), ("hilink", 2, 0.9, {"triple_noise": 0.3})]]
    result = run_script("report.py", "--compare", *runs, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    grouped = pd.read_csv(tmp_path / "out" / "comparison_seeds.csv")
    assert grouped["model"].tolist() == ["baseline", "hilink"] and grouped["runs"].tolist() == [3, 2]
    assert grouped["test_all"].tolist() == pytest.approx([0.6, 0.85])
    assert grouped["test_all_std"].tolist() == pytest.approx([0.1, 0.0707107], rel=1e-5)
    assert grouped["test_B"].tolist() == pytest.approx([0.3, 0.425]) and grouped["train_seconds"][0] == 20
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "| baseline |  | `3` | 60.0 ± 10.0" in text and "20 ± 10 s" in text
    assert "| hilink | `0.3` | `2` | 85.0" in text and "| hilink | `0.3` | `1` | 80.0 |" in text  # not as percentages
    assert len(pd.read_csv(tmp_path / "out" / "comparison.csv")) == 5  # every run, too


def test_compare_tabulates_the_runs(knowledge_runs, tmp_path):
    result = run_script("report.py", "--compare", *knowledge_runs.values(), "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert sorted(table["model"]) == sorted(knowledge_runs) and "best_valid" in table
    assert "| model |" in (tmp_path / "comparison.md").read_text()


def test_the_kb_a_run_reads_is_its_own_unless_given(held_out_run, tmp_path):
    run_dir, _ = held_out_run
    model, *_ = models.load_run(run_dir)
    assert len(model.kb.ids) == len(pd.read_csv(run_dir / knowledge.KB_FILE))
    h, r, t = pd.read_csv(run_dir / knowledge.KB_FILE, dtype=str).iloc[0]
    (tmp_path / "kb.csv").write_text(f"h,r,t\n{h},{r},새보석\n")
    model, *_ = models.load_run(run_dir, kb=str(tmp_path / "kb.csv"))
    assert len(model.kb.ids) == 1 and kb.read_kb(tmp_path / "kb.csv") == [(h, r, "새보석")]
    (tmp_path / "other.csv").write_text("h,r,t\nx,y,z\n")  # no name of the run's: its facts cannot be told apart
    with pytest.raises(util.UsageError, match="shares no name"):
        models.load_run(run_dir, kb=str(tmp_path / "other.csv"))


@pytest.mark.skipif(not REAL_CSV.is_dir(), reason="../shared/real-csv is not present")
def test_bok_vqa_gel_vqa_and_hilink_for_each_language(tmp_path):
    """BOK-VQA's ko and en files imported, a KGE trained on their triples, gel_vqa and hilink for --lang ko, en and
    bi, on placeholder images (the real images are not public)."""
    from test_import import placeholder_images

    ko = pd.read_csv(REAL_CSV / "BOKVQA_data_ko.csv", dtype=str, keep_default_na=False).sample(240, random_state=0)
    en = pd.read_csv(REAL_CSV / "BOKVQA_data_en.csv", dtype=str, keep_default_na=False).loc[ko.index]  # same questions
    ko.to_csv(tmp_path / "ko.csv", index=False)
    en.to_csv(tmp_path / "en.csv", index=False)
    placeholder_images(tmp_path / "img", sorted(set(ko["img_name"])))
    result = run_script("download.py", "--from_csv", tmp_path / "ko.csv", tmp_path / "en.csv", "--image_dir",
                        tmp_path / "img", "--out", tmp_path / "data")
    assert result.returncode == 0, result.stderr[-2000:]
    pd.concat([ko, en])[["h", "r", "t"]].to_csv(tmp_path / "data" / "triples.csv", index=False)
    result = run_script("kge.py", "--data_dir", tmp_path / "data", "--out", tmp_path / "kge", "--dim", "16", "--epochs",
                        "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    for lang in ("ko", "en", "bi"):
        for name in ("gel_vqa", "hilink"):
            results = tmp_path / f"{name}_{lang}"
            kge = ["--kge_dir", tmp_path / "kge"] if name == "gel_vqa" else []
            result = run_script("main.py", *TINY_TRAIN, "--n_epoch", "1", "--data_dir", tmp_path / "data",
                                "--lang", lang, "--model", name, *kge, "--results_dir", results)
            assert result.returncode == 0, result.stderr[-2000:]
            run_dir = only_run(results)
            result = run_script("inference.py", "--model_path", run_dir, "--split", "valid")
            assert result.returncode == 0, result.stderr[-2000:]
            report = json.loads((run_dir / "eval_valid_all.json").read_text())
            assert report["n"] == len(select_rows(read_data(tmp_path / "data"), "valid", lang=lang)) > 0
            assert "triple_accuracy" in report
