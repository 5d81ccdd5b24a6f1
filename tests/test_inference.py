"""inference.py and inference_each.py on a tiny trained run: as a user runs them (a process of their own) where the
command line itself is tested, else their main() in this process (quicker)."""
import json
import shutil
import unicodedata

import pandas as pd
from PIL import Image

import inference
import inference_each
import util
from conftest import run_script, script_output
from vqa_dataset import read_data, select_rows


def test_inference_all(trained_run, sample_dir):
    result = run_script("inference.py", "--model_path", trained_run, "--infer_data", "all", "--data_dir", sample_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads((trained_run / "eval_all.json").read_text())
    predictions = pd.read_csv(trained_run / "predictions_all.csv", dtype=str, keep_default_na=False)
    test = select_rows(read_data(sample_dir), "test")
    assert report["n"] == len(test) == len(predictions)
    assert report["accuracy"] == (predictions["prediction"] == predictions["answer"]).mean()
    assert set(report["by_type"]) == {"A", "B", "vqa", "triple", "abstract"}
    for name, column in [("A", "question_type"), ("B", "question_type"), ("triple", "category")]:
        rows = predictions[predictions[column] == name]
        assert report["by_type"][name]["n"] == len(rows)
        assert report["by_type"][name]["accuracy"] == (rows["prediction"] == rows["answer"]).mean()
    assert f"{100 * report['accuracy']:.2f}%" in result.stdout
    # the run report gains the test table, its bar chart and the most frequent confusions
    assert Image.open(trained_run / "by_type.png").size[0] > 300
    text = (trained_run / "report.md").read_text()
    section = text[text.index("<!-- test:all -->"):]
    assert f"Accuracy {100 * report['accuracy']:.2f}% on {report['n']} questions" in section
    assert f"| B | {100 * report['by_type']['B']['accuracy']:.2f}% | {report['by_type']['B']['n']} |" in section
    wrong = predictions[predictions["prediction"] != predictions["answer"]]
    (gold, predicted), count = next(iter(wrong.groupby(["answer", "prediction"]).size().sort_values(
        ascending=False).items()))
    assert f"| {count} |" in section and "![accuracy per type](by_type.png)" in section


def test_another_split_is_written_beside_the_test_evaluation(trained_run, sample_dir, capsys):
    script_output(capsys, inference, "--model_path", trained_run, "--data_dir", sample_dir)
    test_files = {name: (trained_run / name).read_bytes() for name in ("eval_all.json", "predictions_all.csv")}
    printed = script_output(capsys, inference, "--model_path", trained_run, "--data_dir", sample_dir, "--split",
                            "valid")
    assert {name: (trained_run / name).read_bytes() for name in test_files} == test_files  # the test's, unchanged
    report = json.loads((trained_run / "eval_valid_all.json").read_text())
    valid = select_rows(read_data(sample_dir), "valid")
    assert report["split"] == "valid" and report["n"] == len(valid) == len(pd.read_csv(
        trained_run / "predictions_valid_all.csv"))
    assert "eval_valid_all.json" in printed and (trained_run / "by_type_valid_all.png").is_file()
    text = (trained_run / "report.md").read_text()
    assert text.count("<!-- test:all -->") == text.count("<!-- test:valid_all -->") == 1
    assert "## Test (valid split, infer_data all)" in text


def test_inference_one_category_with_weights_file(trained_run, sample_dir, capsys):
    weights = next(trained_run.glob("infer_model_*.safetensors"))
    script_output(capsys, inference, "--model_path", weights, "--infer_data", "triple", "--data_dir", sample_dir)
    report = json.loads((trained_run / "eval_triple.json").read_text())
    assert set(report["by_type"]) == {"B", "triple"}
    assert report["by_type"]["triple"]["n"] == report["n"] > 0
    # a second --infer_data adds its own section; running one again replaces it rather than repeating it
    script_output(capsys, inference, "--model_path", weights, "--infer_data", "triple", "--data_dir", sample_dir)
    text = (trained_run / "report.md").read_text()
    assert text.count("<!-- test:triple -->") == 1 and (trained_run / "by_type_triple.png").is_file()


def test_answers_unseen_in_training_count_as_wrong(trained_run, sample_dir, tmp_path, capsys):
    data = pd.read_csv(sample_dir / "data.csv", dtype=str, keep_default_na=False)
    data["split"] = read_data(sample_dir)["split"]
    test_rows = data.index[data["split"] == "test"][:5]
    data.loc[test_rows, "answer"] = "never-seen-answer"
    (tmp_path / "image").symlink_to(sample_dir / "image")
    data.to_csv(tmp_path / "data.csv", index=False)
    printed = script_output(capsys, inference, "--model_path", trained_run, "--data_dir", tmp_path)
    report = json.loads((trained_run / "eval_all.json").read_text())
    assert report["unknown_answers"] == 5
    assert "5 test answers never occur in training" in printed
    predictions = pd.read_csv(trained_run / "predictions_all.csv", dtype=str, keep_default_na=False)
    assert (predictions.loc[predictions["answer"] == "never-seen-answer", "correct"] == "False").all()


def test_inference_each_on_a_test_sample(trained_run, sample_dir, capsys):
    printed = script_output(capsys, inference_each, "--model_path", trained_run, "--index", "3", "--data_dir",
                            sample_dir)
    test = select_rows(read_data(sample_dir), "test")
    assert f"question: {test.loc[3, 'question']}" in printed
    assert f"gold:     {test.loc[3, 'answer']}" in printed
    shown = [line for line in printed.splitlines() if line.strip()[:2] in {"1.", "2.", "3.", "4.", "5."}]
    assert len(shown) == 5
    probabilities = [float(line.rsplit(None, 1)[-1].rstrip("%")) for line in shown]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.01
    # the probabilities line up in a terminal: Hangul takes two columns
    assert any(unicodedata.east_asian_width(c) == "W" for line in shown for c in line)
    columns = {sum(2 if unicodedata.east_asian_width(c) == "W" else 1 for c in line) for line in shown}
    assert len(columns) == 1, shown


def test_inference_each_on_an_image_and_question(trained_run, sample_dir, capsys):
    image = sample_dir / "image" / "scene_00001.jpg"
    printed = script_output(capsys, inference_each, "--model_path", trained_run, "--image", image,
                            "--question", "이미지에 도형이 몇 개 있어?")
    assert "question: 이미지에 도형이 몇 개 있어?" in printed and "gold" not in printed


def test_bad_model_path_is_a_clear_error(tmp_path):
    pickled = tmp_path / "infer_model_57.15.pt"
    pickled.write_bytes(b"not really a pickle")
    result = run_script("inference.py", "--model_path", pickled)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "has no config.json" in result.stderr
    result = run_script("inference_each.py", "--model_path", tmp_path / "missing")
    assert result.returncode != 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_every_script_answers_in_the_runs_precision(trained_run, sample_dir, tmp_path, capsys):
    """inference.py, inference_each.py and the demo (model.answer) all compute in the precision the run chose."""
    import shutil

    import torch

    from answering import answer, make_dataset, predict
    from models import load_run
    from images import ImageCache
    from loaders import make_loader

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["precision"] = "bf16"  # as a run trained with --precision bf16 has it
    (run_dir / "config.json").write_text(json.dumps(config))
    script_output(capsys, inference, "--model_path", run_dir, "--data_dir", sample_dir, "--device", "cpu")
    confidence = pd.read_csv(run_dir / "predictions_all.csv")["confidence"].to_numpy()

    model, tokenizer, config, answers, _ = load_run(str(run_dir))
    test = select_rows(read_data(sample_dir), "test")
    images = ImageCache(str(sample_dir), test["image"], config["img_size"], progress=False)
    dataset = make_dataset(model, test, images, tokenizer, answers, config["max_token"])
    loader = make_loader(dataset, 256, 0, torch.device("cpu"))
    bf16, fp32 = (predict(model, loader, torch.device("cpu"), p)["prob"][:, 0].numpy() for p in ("bf16", "fp32"))
    assert abs(bf16 - fp32).max() > 1e-4  # the two precisions can be told apart here
    assert abs(confidence - bf16).max() < 1e-6

    row = test.iloc[3]
    image = str(sample_dir / "image" / row["image"])
    top = answer(model, tokenizer, config, answers, image, row["question"], "cpu")
    top_fp32 = answer(model, tokenizer, {**config, "precision": "fp32"}, answers, image, row["question"], "cpu")
    assert max(abs(p - q) for (_, p), (_, q) in zip(top, top_fp32)) > 1e-4
    lines = script_output(capsys, inference_each, "--model_path", run_dir, "--index", "3", "--data_dir", sample_dir,
                          "--device", "cpu").splitlines()
    for rank, (text, prob) in enumerate(top, 1):
        assert any(line.startswith(f"  {rank}. {text} ") and line.endswith(f" {100 * prob:6.2f}%") for line in lines)


def test_a_run_is_evaluated_on_its_own_split_after_rows_are_added(trained_run, sample_dir, tmp_path, capsys):
    """Rows added to data.csv after training, here new questions on training images, do not enter the run's test
    set, and the data's split.csv is left as it was: inference.py, inference_each.py and the demo take the test rows
    the run saved in its run directory."""
    import demo
    from vqa_dataset import read_test_split

    run_dir, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(trained_run, run_dir)
    data.mkdir()
    (data / "image").symlink_to(sample_dir / "image")
    for name in ("data.csv", "split.csv", util.WRITTEN_FILE):  # a copy of the data the run was trained on
        shutil.copy(sample_dir / name, data / name)
    split_before = (data / "split.csv").read_bytes()
    original = read_data(sample_dir)
    run_test = select_rows(original, "test")
    train_images = original.loc[original["split"] == "train", "image"].unique()[:20]
    added = pd.DataFrame({"image": train_images, "question": [f"새 질문 {i}" for i in range(20)], "answer": "빨간색"})
    rows = pd.read_csv(sample_dir / "data.csv", dtype=str, keep_default_na=False)
    pd.concat([rows, added]).to_csv(data / "data.csv", index=False)

    printed = script_output(capsys, inference, "--model_path", run_dir, "--data_dir", data)
    assert "20 rows of data.csv are not in it (added since) and are left out" in printed
    predictions = pd.read_csv(run_dir / "predictions_all.csv", dtype=str, keep_default_na=False)
    assert sorted(predictions["question"] + predictions["image"]) == sorted(run_test["question"] + run_test["image"])
    assert (data / "split.csv").read_bytes() == split_before
    config = json.loads((run_dir / "config.json").read_text())
    _, test = read_test_split(config, run_dir, data)
    assert test["question"].tolist() == run_test["question"].tolist()
    assert [s[2] for s in demo.load_samples(config, run_dir, data, 5)] == run_test["question"].tolist()[:5]


def test_a_run_of_an_earlier_version_is_evaluated_on_the_datas_split(trained_run, sample_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "split.csv").unlink()  # runs before this version saved no split
    printed = script_output(capsys, inference, "--model_path", run_dir, "--data_dir", sample_dir)
    assert "trained by an earlier version" in printed
    assert json.loads((run_dir / "eval_all.json").read_text())["n"] == len(select_rows(read_data(sample_dir), "test"))


def test_each_evaluation_writes_the_runs_model_card(trained_run, tmp_path):
    """README.md in the Hugging Face layout: front matter whose model-index has the test accuracy of each --infer_data
    evaluated (eval_<infer_data>.json's, in %), then the model, data, split, command and results."""
    import shutil

    import inference
    from conftest import run_main
    from model_card import read_model_card

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for earlier in [*run_dir.glob("eval_*.json"), *run_dir.glob("README.md")]:  # other tests evaluate the shared run
        earlier.unlink()
    for infer_data in ("all", "vqa"):
        assert run_main(inference, "--model_path", run_dir, "--infer_data", infer_data) == ""
    assert run_main(inference, "--model_path", run_dir, "--split", "valid") == ""  # not a test result
    front, body = read_model_card(run_dir / "README.md")
    assert front["license"] == "mit" and front["library_name"] == "pytorch" and front["metrics"] == ["accuracy"]
    assert front["language"] == ["ko"] and front["datasets"] == [json.loads(
        (run_dir / "config.json").read_text())["data_dir"].rstrip("/").split("/")[-1]]
    results = {r["dataset"]["config"]: r["metrics"][0]["value"] for r in front["model-index"][0]["results"]}
    for infer_data in ("all", "vqa"):
        accuracy = json.loads((run_dir / f"eval_{infer_data}.json").read_text())["accuracy"]
        assert results[infer_data] == round(100 * accuracy, 2)
    assert set(results) == {"all", "vqa"}
    for section in ("## Model", "## Data", "## Split", "## Command", "## Results", "## License"):
        assert section in body
    assert "python main.py" in body and "MIT" in body
