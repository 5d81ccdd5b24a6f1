"""The knowledge families on tiny models: every registered model's forward and backward, GEL-VQA's codes, augmentation
and KG embeddings, the oracles' knowledge-free loss and copying, the knowledge base and its copy gate, and the triple
heads' loss."""
import math

import pandas as pd
import pytest
import torch

import kb
import knowledge
import models
import test_model
from focal import build_loss
from gel import GELVQA, random_crop
from hilink import HiLINK
from model import VQAModel
from oracles import OracleText, OracleTriple
from triples import head_log_prior, head_targets, triple_loss
from vocab import ABSENT, NO_KNOWLEDGE, KnowledgeVocab
from vqa_dataset import encode_questions

SIZES = (5, 4, 6)  # heads, relations (the last is NO_KNOWLEDGE in the models that predict), tails
WIDTHS = (8, 8)
NAMES = (["apple", "bear", "cat", "dog", "eel"], ["is", "has", "eats", NO_KNOWLEDGE],
         ["red", "fur", "fish", "big", "wet", "fast"])
KB = [("apple", "has", "fur"), ("bear", "eats", "fish"), ("dog", "is", "big")]


def tiny_vocab(predicting):
    heads, relations, tails = NAMES
    return KnowledgeVocab(heads, relations[:-1], tails, no_knowledge=predicting)


def tiny_tokenizer():
    """Small enough for test_model's text encoder (50 token ids)."""
    from encoders import train_tokenizer

    return train_tokenizer(["what is the animal", " ".join(w for names in NAMES for w in names)], vocab_size=50)


def tiny_kge():
    """Random KG embeddings of the tiny vocabulary's entities and relations (a kge.KGE, as kge.load_kge gives), scored
    as TransE's (a scoring function without tensors of its own)."""
    import kge

    entities = NAMES[0] + NAMES[2] + ["zebra"]  # zebra: known to the embeddings, in no training triple
    relations = NAMES[1][:-1]
    torch.manual_seed(2)
    transe = {"interaction": {"name": "TransEInteraction", "kwargs": {"p": 1, "power_norm": False}}}
    return kge.KGE(torch.randn(len(entities), WIDTHS[0]), torch.randn(len(relations), WIDTHS[0]),
                   {e: i for i, e in enumerate(entities)}, {r: i for i, r in enumerate(relations)}, transe, {})


def tiny_model(name, kb_triples=None, pretrained=False, text_pool="cls", **settings):
    """test_model's tiny model of the registered model name with the given settings changed, its vocabulary, KG
    embeddings and knowledge base (kb_triples, where the model reads one) attached."""
    config = models.named(name, settings)
    network = models.NETWORKS[type(config)]
    inputs = {"knowledge_sizes": tiny_vocab(config.predicts).sizes, "kge_widths": WIDTHS, "pretrained": pretrained}
    model = test_model.tiny_model(network, config, text_pool=text_pool,
                                  **{k: inputs[k] for k in models.NETWORK_INPUTS.get(network, [])})
    if config.vocab:
        knowledge.attach(model, tiny_vocab(config.predicts), tiny_tokenizer(), 16,
                         kb_triples if config.uses_kb() else None, tiny_kge())
    return model


def tiny_batch(predicting=False):
    """test_model's tiny batch and each row's gold triples: two, one, none and one with an unseen relation."""
    none = [ABSENT, 3, ABSENT] if predicting else [ABSENT] * 3
    triples = torch.tensor([[[0, 1, 2], [3, 0, 4]], [[1, 2, 3], [ABSENT] * 3], [none, [ABSENT] * 3],
                            [[4, -1, 0], [ABSENT] * 3]])
    return *test_model.tiny_batch(), triples


def loss_batch(model, predicting):
    """A batch dict as train_step gives the loss: labels, triples and the targets training adds."""
    triples = tiny_batch(predicting)[3]
    batch = {"label": torch.tensor([0, 3, -1, 5]), "triples": triples[:, :1].clone()}
    batch["triples"][3, 0, 1] = 0  # a training row's parts are all in the vocabulary
    batch["copy"] = torch.tensor([1, 2, 0, 0])
    if getattr(model.config, "head_from_answers", False):
        batch["head"] = torch.tensor([0, 1, 2, 4])
    return batch


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_registered_model_runs_forward_and_backward(name):
    model = tiny_model(name, KB).train()
    predicting = model.config.predicts
    ids, mask, image, triples = tiny_batch(predicting)
    batch = loss_batch(model, predicting)
    out = model(ids, mask, image, batch["triples"])
    assert out["answer"].shape == (test_model.BATCH, test_model.ANSWERS)
    assert ("triple" in out) == predicting and ("gate" in out) == getattr(model.config, "answer_from_kb", False)
    loss = model.loss(out, batch, build_loss("focal"))
    loss.backward()
    assert torch.isfinite(loss)
    # DistributedDataParallel needs every trained parameter to take part
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any("_table" in n or "kge" in n for n in model.state_dict())  # the run's kge/, not its weights


def test_a_models_outputs_and_loss_are_its_familys():
    """Each family's loss is the answer's and its own terms: the baseline's the answer's alone."""
    model = tiny_model("baseline").train()
    out = model(*tiny_batch()[:3])
    batch = loss_batch(model, False)
    assert torch.equal(model.loss(out, batch, build_loss("ce")), build_loss("ce")(out["answer"], batch["label"]))
    for name in ("gel_vqa", "hilink"):
        model = tiny_model(name, KB).train()
        batch = loss_batch(model, True)
        out = model(*tiny_batch(True)[:3], batch["triples"])
        answer = build_loss("ce")(out["answer"], batch["label"])
        assert torch.allclose(model.loss(out, batch, build_loss("ce")), answer + triple_loss(out, batch["triples"]))


# ---------------------------------------------------------------- GEL-VQA and the KG codes

def baseline_and(name, **settings):
    """A baseline model and a knowledge model holding the baseline's weights, in eval mode."""
    base = test_model.tiny_model().eval()
    other = tiny_model(name, **settings).eval()
    missing, unexpected = other.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and all(n.startswith(("codes.", "injection.", "triple_heads.", "copy_gate."))
                                    for n in missing)
    return base, other


def test_concat_starts_as_the_baseline():
    """So does mul where the code's width differs from the fused feature's (its projection starts at 1)."""
    for fusion in ("concat", "mul"):
        base, oracle = baseline_and("oracle_triple", fusion=fusion, answer_from_kb=False)
        ids, mask, image, triples = tiny_batch()
        assert torch.allclose(oracle(ids, mask, image, triples)["answer"], base(ids, mask, image)["answer"], atol=1e-6)
        with torch.no_grad():  # once the projection learns, the knowledge moves the answers of the rows with some
            oracle.injection.project.weight.normal_()
        moved = oracle(ids, mask, image, triples)["answer"]
        changed = (moved - base(ids, mask, image)["answer"]).abs().amax(-1) > 1e-4
        assert changed.tolist() == [True, True, False, True]  # row 2 has no triple


@pytest.mark.parametrize("fusion", ["mul", "concat"])
def test_rows_gel_vqa_predicts_no_knowledge_for_pass_through_unchanged(fusion):
    """Type A questions (a predicted NO_KNOWLEDGE) get exactly the baseline's answer."""
    base, gel = baseline_and("gel_vqa", fusion=fusion)
    with torch.no_grad():
        gel.injection.project.weight.normal_() if fusion != "mul" else None
        gel.triple_heads.r.bias[gel.no_knowledge] = 100.0  # every row predicts no knowledge
    ids, mask, image, triples = tiny_batch(True)
    out = gel(ids, mask, image, triples)
    assert (out["triple"][:, 0] == ABSENT).all()
    assert torch.allclose(out["answer"], base(ids, mask, image)["answer"], atol=1e-6)


def test_gel_vqa_ignores_the_gold_triples_and_uses_its_prediction():
    model = tiny_model("gel_vqa").eval()
    with torch.no_grad():  # as after training: mul's projection starts at the constant 1
        model.injection.project.weight.normal_()
        model.triple_heads.r.bias[model.no_knowledge] = -100.0  # every row predicts a triple
    ids, mask, image, triples = tiny_batch(True)
    assert torch.equal(model(ids, mask, image, triples)["answer"], model(ids, mask, image, triples.flip(0))["answer"])
    out = model(ids, mask, image, triples)
    with torch.no_grad():  # the predicted head's KG embedding moves the answer
        model.codes.head_table[out["triple"][0, 0]] += 3
    assert not torch.allclose(out["answer"][0], model(ids, mask, image, triples)["answer"][0])


def test_the_oracle_reads_the_gold_triples_and_unseen_parts_the_unknown_vector():
    vocab = tiny_vocab(False)
    assert vocab.ids("apple|is|red;zebra|is|striped", 3) == [[0, 0, 0], [-1, 0, -1], [ABSENT] * 3]
    model = tiny_model("oracle_triple", answer_from_kb=False).eval()
    with torch.no_grad():
        model.injection.project.weight.normal_()
    ids, mask, image, triples = tiny_batch()  # row 3: an unseen relation
    base = model(ids, mask, image, triples)["answer"]
    other = triples.clone()
    other[0, 0] = torch.tensor([2, 2, 2])  # another gold triple for row 0
    assert not torch.allclose(base[0], model(ids, mask, image, other)["answer"][0])
    code, present = model.codes(triples)
    expected = torch.cat([model.codes.head_table[4], model.codes.relation_unknown, model.codes.tail_table[0]])
    assert torch.equal(code[3], expected) and present.tolist() == [True, True, False, True]
    with torch.no_grad():
        model.codes.relation_unknown.add_(1.0)
    after = model(ids, mask, image, triples)["answer"]
    assert not torch.allclose(base[3], after[3]) and torch.allclose(base[1:3], after[1:3])


def test_a_name_the_kg_embeddings_lack_is_embedded_from_its_relations():
    facts = KB + [("apple", "has", "stripes"), ("bear", "has", "stripes"), ("yak", "is", "tall")]  # new names
    model = tiny_model("oracle_triple", facts, fusion="mul")  # mul: the codes as they are (concat normalises them)
    embeddings, vocab, codes = tiny_kge(), model.vocab, model.codes
    stripes = vocab.index[2]["stripes"]
    linked = embeddings.entity[[embeddings.entity_to_id["apple"], embeddings.entity_to_id["bear"]]].mean(0)
    assert torch.allclose(codes.tail_table[stripes], linked) and not codes.tail_missing[stripes]
    assert codes.head_missing[vocab.index[0]["yak"]] and codes.tail_missing[vocab.index[2]["tall"]]  # no known link
    ids, mask, image, _ = tiny_batch()
    triples = torch.tensor([[[vocab.index[0]["yak"], 0, vocab.index[2]["tall"]]]] * test_model.BATCH)
    assert torch.equal(codes(triples)[0][0, :WIDTHS[0]], codes.head_unknown)  # the unknown vector, not zeros
    assert torch.isfinite(model(ids, mask, image, triples)["answer"]).all()


def test_gel_vqa_crops_a_random_square_of_a_larger_image_in_training_only():
    config = models.named("gel_vqa")
    assert config.train_size(224) == 356 and config.train_size(64) == 102  # the paper's Resize(356), at 64 px
    assert models.named("gel_vqa", {"augment": False}).train_size(64) == 64
    assert models.named("baseline").train_size(64) == 64
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float).reshape(2, 3, 10, 10)
    torch.manual_seed(0)
    crops = random_crop(images, 4)
    assert crops.shape == (2, 3, 4, 4)
    for image, crop in zip(images, crops):  # each a 4 x 4 square of its own image
        y, x = divmod(int(crop[0, 0, 0]) % 100, 10)
        assert torch.equal(crop, image[:, y:y + 4, x:x + 4])
    torch.manual_seed(0)
    assert torch.equal(random_crop(images, 4), crops)  # torch's generator: a resumed run crops alike
    model = tiny_model("gel_vqa")
    seen = []
    model.image_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[-1]))
    ids, mask, _, triples = tiny_batch(True)
    large = torch.randn(test_model.BATCH, 3, config.train_size(test_model.IMG), config.train_size(test_model.IMG))
    model.train()(ids, mask, large, triples)
    model.eval()(ids, mask, tiny_batch()[2], triples)
    assert seen == [test_model.IMG, test_model.IMG]  # cropped in training, as it comes at test


def test_kge_py_makes_gel_vqas_kg_embeddings_by_default():
    """ConvKB of dimension 256, Adam 1e-4 with weight decay 1e-5, batch 512, margin 0.5, 50,000 steps (the paper's
    code); gel_vqa says where a run's embeddings differ."""
    import kge

    defaults = kge.build_parser().parse_args(["--data_dir", "d", "--out", "o"])
    assert {k: getattr(defaults, k) for k in kge.GEL_VQA} == kge.GEL_VQA
    assert kge.GEL_VQA == {"model": "convkb", "dim": 256, "lr": 1e-4, "weight_decay": 1e-5, "batch_size": 512,
                           "margin": 0.5, "steps": 50000}
    assert models.named("gel_vqa").kge_settings is kge.GEL_VQA


# ---------------------------------------------------------------- the oracles

def test_the_knowledge_free_answer_is_the_baselines_in_training_only():
    base, oracle = baseline_and("oracle_triple", answer_from_kb=False)
    with torch.no_grad():  # the codes move the answers of the rows that have some
        oracle.injection.project.weight.normal_()
    ids, mask, image, triples = tiny_batch()
    for model in (base, oracle):  # train mode, without dropout's randomness
        model.train().drop.p = 0.0
        model.text_encoder.eval()
        model.image_encoder.eval()
    out = oracle(ids, mask, image, triples)
    assert out["knowledge_rows"].tolist() == [True, True, False, True]  # row 2 has no triple
    assert torch.allclose(out["answer_without_knowledge"], base(ids, mask, image)["answer"][out["knowledge_rows"]],
                          atol=1e-5)
    assert not torch.allclose(out["answer"][:2], out["answer_without_knowledge"][:2], atol=1e-4)
    assert "answer_without_knowledge" not in oracle.eval()(ids, mask, image, triples)


@pytest.mark.parametrize("loss", ["focal", "ce"])
def test_the_knowledge_free_loss_weighs_each_row_as_the_baselines_mean_does(loss):
    """With the answers of the rows without knowledge, the knowledge-free answers make up the baseline's loss."""
    loss_fn = build_loss(loss)
    model = tiny_model("oracle_triple", answer_from_kb=False)
    g = torch.Generator().manual_seed(0)
    answers, label = torch.randn(6, 5, generator=g), torch.tensor([0, 3, -1, 2, 4, 1])  # -1: outside the vocabulary
    rows = torch.tensor([True, False, True, True, False, False])
    zero = torch.zeros_like(answers)  # the answers with knowledge left out: their loss is the answers' own
    out = {"answer": zero, "answer_without_knowledge": answers[rows], "knowledge_rows": rows}
    free = model.loss(out, {"label": label}, loss_fn) - loss_fn(zero, label)
    known_without = int((label[~rows] >= 0).sum())
    without = loss_fn(answers[~rows], label[~rows]) * known_without / int((label >= 0).sum())
    assert torch.allclose(without + free, loss_fn(answers, label))


def text_batch(questions, triples):
    """(each question's ids encoded alone, and the padded ids and attention mask of the questions paired with their
    triples as oracle_text encodes them) with the tiny tokenizer; the first row's knowledge text must fit."""
    tokenizer = tiny_tokenizer()
    df = pd.DataFrame({"question": questions, "triple": triples, "abstract": [""] * len(questions)})
    alone = encode_questions(tokenizer, df["question"], 16)
    paired = tiny_model("oracle_text").encode(tokenizer, df, 16)
    assert len(paired[0]) > len(alone[0])  # the knowledge text fits
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(row) for row in paired], batch_first=True,
                                          padding_value=tokenizer.pad_token_id)
    return alone, ids, (ids != tokenizer.pad_token_id).long()


def test_the_knowledge_free_answer_of_the_text_oracle_reads_the_question_alone_in_one_added_pass():
    alone, ids, mask = text_batch(["the animal", "what colour"], ["bear|eats|fish", ""])
    model = tiny_model("oracle_text", text_pool="mean")
    model.train().drop.p = 0.0  # train mode, without dropout's randomness
    model.text_encoder.eval()
    model.image_encoder.eval()
    image = test_model.tiny_batch()[2][:2]
    passes = []
    model.text_encoder.register_forward_hook(lambda module, args, kwargs, output: passes.append(
        kwargs["attention_mask"]), with_kwargs=True)
    out = model(ids, mask, image)
    assert out["knowledge_rows"].tolist() == [True, False]  # the second row has no knowledge text
    batch_pass, alone_pass = passes  # the knowledge rows' questions again, the knowledge text cut off, not masked
    assert len(alone_pass) == 1 and alone_pass.shape[1] == len(alone[0]) < batch_pass.shape[1]
    q_alone = torch.tensor(alone[:1])
    expected = model.eval()(q_alone, torch.ones_like(q_alone), image[:1])["answer"]
    assert torch.allclose(out["answer_without_knowledge"], expected, atol=1e-5)
    assert "answer_without_knowledge" not in model(ids, mask, image)


def test_the_text_oracle_keeps_the_question_whole():
    from encoders import train_tokenizer

    questions = ["원의 색깔은?", "사각형과 같은 색의 과일은? " * 6]
    tokenizer = train_tokenizer(questions + ["빨간색 대표 과일 딸기 " * 5])
    df = pd.DataFrame({"question": questions, "triple": ["빨간색|대표 과일|딸기;" * 3 + "a|b|c", "x|y|z"],
                       "abstract": ["", ""]})
    alone = encode_questions(tokenizer, df["question"], 20)
    paired = tiny_model("oracle_text").encode(tokenizer, df, 20)
    question = tokenizer(questions[0], add_special_tokens=False)["input_ids"]
    assert paired[0][1:1 + len(question)] == question and len(paired[0]) == 20  # knowledge cut, not question
    assert paired[1] == alone[1]  # a question that fills max_token is read alone


def test_the_oracles_copy_from_the_rows_gold_triple():
    df = pd.DataFrame({"triple": ["Taro|family|Araceae", ""], "answer": ["Araceae", "red"]})
    for name in ("oracle_triple", "oracle_text"):
        assert tiny_model(name, KB).copy_candidates({}, df) == [("Taro", "Araceae", False), None]


# ---------------------------------------------------------------- the knowledge base and copying

def test_the_kb_constraint_only_ever_yields_kb_triples():
    vocab = tiny_vocab(True)
    facts = KB + [("zebra", "is", "striped")]  # names no training row has: ids past the heads' classes
    facts += [("apple", "has", "red")]  # a second tail of (apple, has)
    extended = vocab.extended(*zip(*facts))
    knowledge_base = kb.KnowledgeBase(facts, extended)
    ids = knowledge_base.ids
    assert ids.tolist()[3] == [5, 0, 6] and kb.beyond_classes(facts, extended) == 1
    torch.manual_seed(0)
    for _ in range(20):
        out = {k: torch.randn(64, n) * 3 for k, n in zip("hrt", SIZES)}
        chosen = kb.choose_triple(out, vocab.no_knowledge, knowledge_base, extended)
        predicted = chosen[:, 0] >= 0
        assert {tuple(t) for t in chosen[predicted].tolist()} <= {tuple(t) for t in ids.tolist()}
        logp = [torch.cat([out[p].log_softmax(-1), torch.full((64, n - SIZES[i]), -math.log(SIZES[i]))], -1)
                for i, (p, n) in enumerate(zip("hrt", extended.sizes))]

        def tail(i, k, logp=logp):  # p(t | h, r, KB), among the KB's tails of the triple's head and relation
            tails = [j for j in range(len(ids)) if ids[j, :2].tolist() == ids[k, :2].tolist()]
            return logp[2][i, ids[k, 2]] - torch.logsumexp(logp[2][i, ids[tails, 2]], 0)
        best = [max(range(len(ids)), key=lambda k: logp[0][i, ids[k, 0]] + logp[1][i, ids[k, 1]] + tail(i, k))
                for i in range(64)]
        assert chosen[predicted].tolist() == ids[best][predicted].tolist()  # the most probable KB triple
        none = out["r"].argmax(-1) == vocab.no_knowledge
        assert torch.equal(~predicted, none)  # a predicted NO_KNOWLEDGE relation keeps its row without knowledge


def test_triple_noise_reads_the_kb_triple_the_model_scores_highest_among_the_others():
    vocab = tiny_vocab(True)
    knowledge_base = kb.KnowledgeBase(KB + [("apple", "is", "red")], vocab)
    torch.manual_seed(0)
    out = {k: torch.randn(8, n) * 3 for k, n in zip("hrt", SIZES)}
    order = knowledge_base.scores(out, vocab).argsort(-1, descending=True)
    best, second = knowledge_base.ids[order[:, 0]], knowledge_base.ids[order[:, 1]]
    read = best.clone()
    read[0] = second[0]  # a row that reads another triple than the model's best (the gold one, teacher-forced)
    read[1] = torch.tensor([ABSENT, 3, ABSENT])  # a row without knowledge keeps it
    misread = kb.misread(out, read, knowledge_base, vocab, 0.999)
    assert torch.equal(misread[0], best[0]) and torch.equal(misread[1], read[1])
    assert torch.equal(misread[2:], second[2:])
    assert torch.equal(kb.misread(out, read, knowledge_base, vocab, 1e-9), read)


def test_the_copy_gate_learns_where_the_answer_is_the_triples_head_or_tail_of_the_triple_read():
    df = pd.DataFrame({"triple": ["Arena|subject|Sports_Facilities", "Taro|family|Araceae", "Taro|family|Araceae", ""],
                       "answer": ["arena", "Araceae", "monocot", "red"]})
    assert kb.copy_targets(df).tolist() == [1, 2, 0, 0]  # case and underscores do not matter; no triple: vocabulary
    assert kb.answer_key("Sports_Facilities") == kb.answer_key("sports  facilities") == "sports facilities"
    copy = torch.tensor([1, 1, 2, 2, 0, 2])  # vocabulary 0, head 1, tail 2
    gold = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 2, 2], [3, 3, 3]])
    read = torch.tensor([[0, 1, 2], [4, 0, 0], [2, 2, 1], [1, 1, 5], [0, 0, 0], [3, 3, 3]])
    assert kb.read_copy_targets(copy, read, gold).tolist() == [1, 0, 2, 0, 0, 2]


def test_a_copied_name_outside_the_vocabulary_can_be_the_right_answer():
    answers = ["red", "arena", "Arena", "blue"]  # "arena" is the more frequent spelling: copies map to it
    chooser = kb.AnswerChooser(answers)
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 3)
    gate = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])  # copy head, copy tail, vocabulary
    rows = chooser.choose(probs, gate, [("ARENA", "Araceae", False), ("Arena", "Araceae", False),
                                        ("Arena", "Araceae", False)], top_k=2)
    assert [row[0][0] for row in rows] == ["arena", "Araceae", "red"]
    assert [kb.SOURCES[row[0][2]] for row in rows] == ["head", "tail", "vocabulary"]
    inferred = chooser.choose(probs[1:2], gate[1:2], [("Arena", "Araceae", True)], top_k=1)[0][0]
    assert kb.SOURCES[inferred[2]] == "inferred tail"
    assert sum(p for _, p, _ in rows[0]) <= 1 + 1e-6 and rows[0][0][1] > 0.9
    assert kb.copied_right("Araceae", 2, "araceae") and not kb.copied_right("Araceae", 0, "araceae")
    no_triple = chooser.choose(probs[:1], gate[:1], [None], top_k=1)[0][0]
    assert no_triple[0] == "red" and no_triple[1] == pytest.approx(0.7)  # the gate is moot without a triple


def test_a_tail_the_kb_lacks_is_link_predicted_and_marked_inferred():
    model = tiny_model("hilink_kb", KB, kb_constrained=False, triple_head="cascade").eval()
    with torch.no_grad():
        heads = model.triple_heads
        heads.h[-1].bias[:] = torch.tensor([0.0, 0.0, 0.0, 100.0, 0.0])  # dog
        heads.r_given.out.bias[:] = torch.tensor([0.0, 100.0, 0.0, 0.0])  # has: (dog, has, ?) is not in the KB
    ids, mask, image, triples = tiny_batch(True)
    out = model(ids, mask, image, triples)
    expected = kb.link_prediction(model.kge, "dog", "has")
    assert expected is not None and model.copy_candidates(out, None) == [("dog", expected, True)] * test_model.BATCH
    with torch.no_grad():
        heads.h[-1].bias[:] = torch.tensor([0.0, 100.0, 0.0, 0.0, 0.0])  # bear
        heads.r_given.out.bias[:] = torch.tensor([0.0, 0.0, 100.0, 0.0])  # eats: (bear, eats, fish) is in the KB
    out = model(ids, mask, image, triples)
    assert model.copy_candidates(out, None) == [("bear", "fish", False)] * test_model.BATCH


# ---------------------------------------------------------------- the triple's loss and targets

def test_triple_loss_leaves_out_rows_without_a_triple_and_unseen_parts():
    import torch.nn.functional as F

    torch.manual_seed(0)
    out = {k: torch.randn(4, n) for k, n in zip("hrt", SIZES)}
    triples = tiny_batch(True)[3]  # rows 0, 1 known; row 2 none (its relation: NO_KNOWLEDGE); row 3 unseen relation
    expected = (F.cross_entropy(out["h"][[0, 1, 3]], torch.tensor([0, 1, 4]))
                + F.cross_entropy(out["r"][[0, 1, 2]], torch.tensor([1, 2, 3]))
                + F.cross_entropy(out["t"][[0, 1, 3]], torch.tensor([2, 3, 0])))
    assert triple_loss(out, triples).item() == pytest.approx(expected.item(), rel=1e-6)
    assert triple_loss(out, torch.full((4, 1, 3), ABSENT)).item() == 0.0  # not NaN


def test_head_logit_adjustment_takes_no_gradient_toward_heads_a_relation_never_had():
    # relation 1 had only head 2 in training; relation 0 had heads 0 and 1
    triples = torch.tensor([[[2, 1, 2]]] * 1000 + [[[0, 0, 0]], [[1, 0, 1]]])
    prior = head_log_prior(triples, SIZES)
    assert torch.allclose(prior.exp().sum(1), torch.ones(SIZES[1]))
    assert prior[1].exp().tolist() == pytest.approx([1 / 1005, 1 / 1005, 1001 / 1005, 1 / 1005, 1 / 1005])
    assert prior[0].exp().tolist() == pytest.approx([2 / 7, 2 / 7, 1 / 7, 1 / 7, 1 / 7])  # add-one smoothed
    grads = []
    for head_prior in (None, prior):
        out = {k: torch.zeros(1, n, requires_grad=True) for k, n in zip("hrt", SIZES)}
        triple_loss(out, torch.tensor([[[2, 1, 2]]]), head_prior).backward()
        grads.append(out["h"].grad[0])
    # without: the heads relation 1 never had are pushed down (gradient 1/5 each); with: hardly at all
    assert grads[0][0].item() == pytest.approx(0.2) and 0 < grads[1][0].item() < 0.001
    assert grads[1][2].item() < 0  # the gold head is still learned


def test_head_from_answers_teaches_the_head_on_rows_whose_answer_names_a_head():
    vocab = tiny_vocab(True)
    df = pd.DataFrame({"triple": ["apple|is|red", "", "", "", "zebra|is|red"],
                       "answer": ["red", "Bear", "fish", "apple pie", "red"]})
    # a triple's own head (-1 where it is unseen); an answer naming a head by answer_key (case folded); a tail's
    # name and a name that is no head give no target
    heads = head_targets(df, vocab)
    assert heads.tolist() == [0, 1, ABSENT, ABSENT, -1]
    torch.manual_seed(0)
    out = {k: torch.randn(5, n, requires_grad=True) for k, n in zip("hrt", SIZES)}
    triples = torch.tensor([[vocab.ids(cell, 1)[0]] for cell in df["triple"]])
    triple_loss(out, triples, heads=heads).backward()
    assert (out["h"].grad.abs().sum(-1) > 0).tolist() == [True, True, False, False, False]
    assert out["h"].grad[1, 1] < 0  # toward the head its answer names
    # the prior of head_logit_adjustment counts such a head under the relation of rows without knowledge
    prior = head_log_prior(triples, SIZES, heads).exp()
    assert prior[vocab.no_knowledge, 1].item() == pytest.approx(2 / 6) == prior[0, 0].item()
    model = tiny_model("hilink_kb", KB)
    df = df.head(4)  # a training row's triple is in the vocabulary's classes
    targets = model.targets(df.assign(question="", abstract=""), training=True)
    assert targets["head"].tolist() == head_targets(df, model.vocab).tolist() and "copy" in targets
    assert set(model.targets(df, training=False)) == {"triples"}  # at test only what the forward pass reads
    note = model.start_training(targets)
    assert model.head_prior.shape == (SIZES[1], SIZES[0]) and "1 of 4 training rows" in note[0]


def test_the_networks_are_the_registered_families():
    assert {models.NETWORKS[type(config)] for config in models.MODELS.values()} == {VQAModel, GELVQA, HiLINK,
                                                                                   OracleTriple, OracleText}
