"""Knowledge in the model (BOK-VQA): the text, ideal and GEL-VQA modes, their losses and inputs, short runs of each,
a resumed GEL-VQA run, and inference from a run directory alone."""
import json
import shutil
import signal

import pandas as pd
import pytest
import torch

import test_model
import train
from conftest import REAL_CSV, TINY_TRAIN, only_run, run_script
from focal import build_loss, triple_loss
from model import run_config, train_tokenizer
from test_resume import Script, assert_same_as, outcome, resume
from vqa_dataset import ABSENT, KnowledgeVocab, encode_questions, read_data, select_rows

ENTITIES, RELATIONS = 5, 3


def tiny_model(knowledge, widths=(8, 4)):
    """test_model's tiny model with the given knowledge mode, its KG embeddings random rather than zero."""
    model = test_model.tiny_model(knowledge=knowledge, num_entities=ENTITIES, num_relations=RELATIONS,
                                  kge_widths=widths)
    if knowledge in ("ideal", "gel"):
        with torch.no_grad():
            model.entity_kge[:-1].normal_()
            model.relation_kge[:-1].normal_()
    return model


def tiny_batch():
    """test_model's tiny batch and each row's gold triples."""
    triples = torch.tensor([[[0, 1, 2], [3, 0, 4]], [[1, 2, 3], [ABSENT] * 3], [[ABSENT] * 3] * 2, [[4, -1, 0], [ABSENT] * 3]])
    return *test_model.tiny_batch(), triples


@pytest.mark.parametrize("knowledge", ["none", "text", "ideal", "gel"])
def test_every_mode_runs_forward_and_backward(knowledge):
    model = tiny_model(knowledge)
    out = model(*tiny_batch())
    assert out["answer"].shape == (test_model.BATCH, test_model.ANSWERS)
    assert set(out) == ({"answer", "h", "r", "t"} if knowledge == "gel" else {"answer"})
    loss = out["answer"].logsumexp(-1).mean() + (triple_loss(out, tiny_batch()[3]) if knowledge == "gel" else 0)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # DistributedDataParallel needs them all
    if knowledge in ("ideal", "gel"):
        assert not any(n.endswith("_kge") for n, _ in model.named_parameters())  # frozen: buffers, saved with weights
        assert {"entity_kge", "relation_kge"} <= {n for n, _ in model.named_buffers()}


def test_ideal_uses_the_gold_triples_and_the_no_knowledge_vector_without_one():
    model = tiny_model("ideal").eval()
    ids, mask, image, triples = tiny_batch()
    base = model(ids, mask, image, triples)["answer"]
    other = triples.clone()
    other[0, 0] = torch.tensor([2, 2, 2])  # another gold triple for row 0
    changed = model(ids, mask, image, other)["answer"]
    assert not torch.allclose(base[0], changed[0]) and torch.allclose(base[1:], changed[1:])
    with torch.no_grad():
        model.no_knowledge.mul_(2)
    doubled = model(ids, mask, image, triples)["answer"]
    assert not torch.allclose(base[2], doubled[2]) and torch.allclose(base[[0, 1, 3]], doubled[[0, 1, 3]])


def test_gel_ignores_the_gold_triples_and_uses_its_prediction():
    model = tiny_model("gel").eval()
    ids, mask, image, triples = tiny_batch()
    assert torch.equal(model(ids, mask, image, triples)["answer"], model(ids, mask, image, triples.flip(0))["answer"])
    out = model(ids, mask, image, triples)
    with torch.no_grad():  # the predicted head's KG embedding moves the answer
        model.entity_kge[out["h"].argmax(-1)[0]] += 3
    assert not torch.allclose(out["answer"][0], model(ids, mask, image, triples)["answer"][0])


def test_triple_loss_leaves_out_rows_without_a_triple_and_unseen_parts():
    torch.manual_seed(0)
    out = {"h": torch.randn(4, ENTITIES), "r": torch.randn(4, RELATIONS), "t": torch.randn(4, ENTITIES)}
    triples = tiny_batch()[3]  # rows 0, 1 known; row 2 none; row 3 with an unseen relation
    import torch.nn.functional as F

    expected = (F.cross_entropy(out["h"][[0, 1, 3]], torch.tensor([0, 1, 4]))
                + F.cross_entropy(out["r"][[0, 1]], torch.tensor([1, 2]))
                + F.cross_entropy(out["t"][[0, 1, 3]], torch.tensor([2, 3, 0])))
    assert triple_loss(out, triples).item() == pytest.approx(expected.item(), rel=1e-6)
    none = torch.full((4, 1, 3), ABSENT)
    assert triple_loss(out, none).item() == 0.0  # not NaN


def test_text_mode_keeps_the_question_whole():
    questions = ["원의 색깔은?", "사각형과 같은 색의 과일은? " * 6]
    tokenizer = train_tokenizer(questions + ["빨간색 대표 과일 딸기 " * 5])
    df = pd.DataFrame({"question": questions, "triple": ["빨간색|대표 과일|딸기;" * 3 + "a|b|c", "x|y|z"],
                       "abstract": ["", ""]})
    max_token = 20
    alone = encode_questions(tokenizer, df, max_token)
    paired = encode_questions(tokenizer, df, max_token, "text")
    question = tokenizer(questions[0], add_special_tokens=False)["input_ids"]
    assert paired[0][1:1 + len(question)] == question and len(paired[0]) == max_token  # knowledge cut, not question
    assert len(paired[0]) > len(alone[0])
    assert paired[1] == alone[1]  # a question that fills max_token is read alone


def test_gel_runs_one_forward_per_step(tiny_setup_gel):
    args, rt, data, tokenizer, model, loader = tiny_setup_gel
    calls = []
    model.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    model.image_encoder.register_forward_hook(lambda *a: calls.append(2))
    optimizer = train.build_optimizer(model, args, rt.device)
    batch = next(iter(loader))
    loss_fn = build_loss(args.loss, gamma=args.gamma)
    train.train_step(model, optimizer, loss_fn, batch, rt.device, rt.precision, args.clip_grad, args.lr)
    assert sorted(calls) == [1, 2]


@pytest.fixture
def tiny_setup_gel(sample_dir, kge_dir):
    import main

    args = main.parse_args(TINY_TRAIN + ["--data_dir", str(sample_dir), "--knowledge", "gel", "--kge_dir", str(kge_dir)])
    rt = train.setup(args)
    data = train.load_training_data(args, rt)
    tokenizer = train_tokenizer(list(data.train["question"]))
    config = run_config(args, len(data.answers))
    vocab = train.knowledge_config(args, config, data, rt)
    model = train.initial_model(config, tokenizer, vocab)
    loader, _ = train.make_loaders(args, rt, data, tokenizer, vocab)
    return args, rt, data, tokenizer, model, loader


@pytest.mark.parametrize("knowledge", ["text", "ideal", "gel"])
def test_a_short_run_of_each_mode_learns(knowledge_runs, sample_dir, knowledge):
    history = json.loads((knowledge_runs[knowledge] / "history.json").read_text())
    valid = select_rows(read_data(sample_dir), "valid")
    majority = valid["answer"].value_counts().iloc[0] / len(valid)
    assert max(row["valid_acc"] for row in history) > 2 * majority


def test_each_mode_is_evaluated_from_its_run_directory_alone(knowledge_runs, sample_dir, kge_dir, tmp_path):
    moved = tmp_path / "kge_elsewhere"
    shutil.move(kge_dir, moved)  # the run directory holds the embeddings it used
    try:
        for knowledge, run_dir in knowledge_runs.items():
            result = run_script("inference.py", "--model_path", run_dir, "--data_dir", sample_dir)
            assert result.returncode == 0, result.stderr[-2000:]
            report = json.loads((run_dir / "eval_all.json").read_text())
            assert report["knowledge"] == knowledge and ("triple_accuracy" in report) == (knowledge == "gel")
            each = run_script("inference_each.py", "--model_path", run_dir, "--index", "0", "--data_dir", sample_dir)
            assert each.returncode == 0, each.stderr[-2000:]
            assert ("predicted knowledge:" in each.stdout) == (knowledge == "gel")
        gel = json.loads((knowledge_runs["gel"] / "eval_all.json").read_text())["triple_accuracy"]
        predictions = pd.read_csv(knowledge_runs["gel"] / "predictions_all.csv", dtype=str, keep_default_na=False)
        with_triple = predictions[predictions["triple"] != ""]
        heads = [p.split("|")[0] == g.split("|")[0] for p, g in zip(with_triple["predicted_triple"], with_triple["triple"])]
        assert gel["all"]["n"] == len(with_triple) and gel["all"]["h"] == pytest.approx(sum(heads) / len(heads))
        assert "Predicted triple (GEL-VQA)" in (knowledge_runs["gel"] / "report.md").read_text()
    finally:
        shutil.move(moved, kge_dir)


def test_compare_tabulates_the_runs(knowledge_runs, tmp_path):
    result = run_script("report.py", "--compare", *knowledge_runs.values(), "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert sorted(table["knowledge"]) == ["gel", "ideal", "text"] and "best_valid" in table
    assert "| knowledge |" in (tmp_path / "comparison.md").read_text()


def test_an_unseen_head_relation_or_tail_is_counted_not_a_crash():
    vocab = KnowledgeVocab(["빨간색", "딸기"], ["대표 과일"])
    assert vocab.ids("빨간색|대표 과일|딸기;파란색|대표 과일|블루베리", 3) == [[0, 0, 1], [-1, 0, -1], [ABSENT] * 3]
    model = tiny_model("ideal")
    ids, mask, image, _ = tiny_batch()
    unseen = torch.tensor([[[-1, -1, -1]]] * test_model.BATCH)
    assert torch.isfinite(model(ids, mask, image, unseen)["answer"]).all()


def test_a_stopped_and_resumed_gel_run_ends_as_an_uninterrupted_one(sample_dir, kge_dir, tmp_path):
    args = [*TINY_TRAIN, "--n_epoch", "4", "--knowledge", "gel", "--kge_dir", kge_dir, "--data_dir", sample_dir]
    code, _, stderr = Script("main.py", *args, "--results_dir", tmp_path / "reference").finish()
    assert code == 0, stderr[-3000:]
    reference = outcome(only_run(tmp_path / "reference"), sample_dir)
    script = Script("main.py", *args, "--results_dir", tmp_path / "stopped")
    script.wait_until_training(epoch=2)
    script.process.send_signal(signal.SIGTERM)
    assert script.finish(timeout=120)[0] == 128 + signal.SIGTERM
    run_dir = only_run(tmp_path / "stopped")
    resume(run_dir)
    assert_same_as(reference, run_dir, sample_dir)


@pytest.mark.skipif(not REAL_CSV.is_dir(), reason="../shared/real-csv is not present")
def test_bok_vqa_gel_and_ideal_for_each_language(tmp_path):
    """BOK-VQA's ko and en files imported, a KGE trained on their triples, gel and ideal for --lang ko, en and bi, on
    placeholder images (the real images are not public)."""
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
                        "2", "--device", "cpu", "--eval_fraction", "0.05")
    assert result.returncode == 0, result.stderr[-2000:]
    for lang in ("ko", "en", "bi"):
        for knowledge in ("gel", "ideal"):
            results = tmp_path / f"{knowledge}_{lang}"
            result = run_script("main.py", *TINY_TRAIN, "--n_epoch", "1", "--data_dir", tmp_path / "data", "--lang", lang,
                                "--knowledge", knowledge, "--kge_dir", tmp_path / "kge", "--results_dir", results)
            assert result.returncode == 0, result.stderr[-2000:]
            run_dir = only_run(results)
            result = run_script("inference.py", "--model_path", run_dir, "--split", "valid")
            assert result.returncode == 0, result.stderr[-2000:]
            report = json.loads((run_dir / "eval_all.json").read_text())
            assert report["n"] == len(select_rows(read_data(tmp_path / "data"), "valid", lang=lang)) > 0
            assert ("triple_accuracy" in report) == (knowledge == "gel")
