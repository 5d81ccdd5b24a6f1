"""Knowledge in the model (BOK-VQA): the text, ideal, gel and gel_text modes, the fusions, the triple heads, the KB
constraint, their losses and inputs, short runs of each, a resumed cascade run, inference from a run directory
alone, and the comparison over seeds."""
import itertools
import json
import math
import shutil
import signal

import pandas as pd
import pytest
import torch

import knowledge as kn
import test_model
import train
from conftest import REAL_CSV, TINY_TRAIN, only_run, run_main, run_script, script_output
from focal import build_loss, triple_loss
from model import run_config, train_tokenizer
from test_resume import Script, assert_same_as, outcome, resume
from vqa_dataset import encode_questions, read_data, select_rows

SIZES = (5, 4, 6)  # heads, relations (the last is NO_KNOWLEDGE in the modes that predict), tails
WIDTHS = (8, 8)
NAMES = (["apple", "bear", "cat", "dog", "eel"], ["is", "has", "eats", kn.NO_KNOWLEDGE],
         ["red", "fur", "fish", "big", "wet", "fast"])


def tiny_vocab(mode):
    heads, relations, tails = NAMES
    return kn.KnowledgeVocab(heads, relations if kn.predicts(mode) else relations[:-1], tails)


def tiny_tokenizer():
    """Small enough for test_model's text encoder (50 token ids)."""
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


def tiny_model(knowledge, kb=None, **options):
    """test_model's tiny model with the given knowledge mode and options, its KG codes random, vocabulary attached."""
    sizes = tiny_vocab(knowledge).sizes if kn.has_vocab(knowledge) else (0, 0, 0)
    model = test_model.tiny_model(knowledge=knowledge, knowledge_sizes=sizes, kge_widths=WIDTHS, **options)
    if kn.has_vocab(knowledge):
        kn.attach(model, tiny_vocab(knowledge), tiny_tokenizer(), 16, kb, tiny_kge())
    return model


def tiny_batch(knowledge="ideal"):
    """test_model's tiny batch and each row's gold triples: two, one, none and one with an unseen relation."""
    none = [kn.ABSENT, 3, kn.ABSENT] if kn.predicts(knowledge) else [kn.ABSENT] * 3
    triples = torch.tensor([[[0, 1, 2], [3, 0, 4]], [[1, 2, 3], [kn.ABSENT] * 3], [none, [kn.ABSENT] * 3],
                            [[4, -1, 0], [kn.ABSENT] * 3]])
    return *test_model.tiny_batch(), triples


OPTIONS = ([("none", {}), ("text", {}), ("text", {"knowledge_dropout": 0.5, "answer_from_kb": True})]
           + [("ideal", {"knowledge_fusion": f}) for f in kn.FUSIONS]
           + [("gel", {"knowledge_fusion": f, "triple_head": h, "kb_constrained": kb})
              for f, h, kb in itertools.product(kn.FUSIONS, kn.TRIPLE_HEADS, (False, True))]
           + [("gel_text", {"triple_head": h, "kb_constrained": kb})
              for h, kb in itertools.product(kn.TRIPLE_HEADS, (False, True))]
           + [("ideal", {"knowledge_fusion": "film", "answer_from_kb": True}),
              ("ideal", {"knowledge_fusion": "concat", "knowledge_dropout": 0.5, "answer_from_kb": True}),
              ("ideal", {"knowledge_fusion": "film", "knowledge_free_loss": True}),
              ("text", {"knowledge_free_loss": True, "knowledge_dropout": 0.5, "answer_from_kb": True}),
              ("ideal", {"knowledge_fusion": "concat", "knowledge_free_loss": True, "knowledge_head": "own",
                         "answer_from_kb": True}),
              ("text", {"knowledge_dropout": 0.5, "knowledge_head": "own", "answer_from_kb": True}),
              ("ideal", {"knowledge_fusion": "film", "knowledge_free_loss": True, "knowledge_head": "detached"}),
              ("gel", {"triple_head": "cascade", "kb_constrained": True, "answer_from_kb": True}),
              ("gel_text", {"answer_from_kb": True}),
              ("gel", {"triple_encoder": "own", "triple_head": "cascade"}),
              ("gel_text", {"triple_encoder": "own", "kb_constrained": True, "answer_from_kb": True}),
              ("gel_text", {"triple_head": "cascade", "kb_constrained": True, "kb_score": "product"}),
              ("gel_text", {"triple_encoder": "own", "kb_constrained": True, "answer_from_kb": True,
                            "answer_relation": True})])
KB = [("apple", "has", "fur"), ("bear", "eats", "fish"), ("dog", "is", "big")]


@pytest.mark.parametrize("knowledge, options", OPTIONS,
                         ids=[f"{k}-{'-'.join(map(str, o.values()))}" for k, o in OPTIONS])
def test_every_mode_and_option_runs_forward_and_backward(knowledge, options):
    options = dict(options)
    kb = KB if options.pop("kb_constrained", False) else None
    model = tiny_model(knowledge, kb=kb, **options)
    out = model(*tiny_batch(knowledge))
    assert out["answer"].shape == (test_model.BATCH, test_model.ANSWERS)
    expected = {"answer"} | ({"h", "r", "t", "triple"} if kn.predicts(knowledge) else set()) | (
        {"answer_without_knowledge", "knowledge_rows"} if options.get("knowledge_free_loss") else set())
    expected |= {"answer_relation"} if options.get("answer_relation") else set()
    assert set(out) == expected | ({"gate"} if options.get("answer_from_kb") else set())
    loss = out["answer"].logsumexp(-1).mean() + (triple_loss(out, tiny_batch(knowledge)[3]) if "h" in out else 0)
    loss = loss + sum(out[k].logsumexp(-1).mean() for k in ("gate", "answer_relation") if k in out)
    loss = loss + (out["answer_without_knowledge"].logsumexp(-1).mean() if "answer_without_knowledge" in out else 0)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # DistributedDataParallel needs them all
    if kn.embeds(knowledge):
        assert not any(n.endswith("_kge") for n, _ in model.named_parameters())  # frozen: buffers, saved with weights
        assert not any("kge" in n or "_table" in n for n in model.state_dict())  # in the run's kge/, not weights


def baseline_and(knowledge, **options):
    """A baseline model and a knowledge model holding the baseline's weights, in eval mode."""
    base = test_model.tiny_model().eval()
    other = tiny_model(knowledge, **options).eval()
    missing, unexpected = other.load_state_dict(base.state_dict(), strict=False)
    added = ("codes.", "injection.", "triple_heads.", "knowledge_answer.", "copy_gate.")
    assert unexpected == [] and all(n.startswith(added) for n in missing)
    return base, other


@pytest.mark.parametrize("fusion", kn.FUSIONS)
def test_film_and_concat_start_as_the_baseline(fusion):
    """So does mul where the code's width differs from the fused feature's (its projection starts at 1)."""
    base, ideal = baseline_and("ideal", knowledge_fusion=fusion)
    ids, mask, image, triples = tiny_batch()
    assert torch.allclose(ideal(ids, mask, image, triples)["answer"], base(ids, mask, image)["answer"], atol=1e-6)
    with torch.no_grad():  # once the projection learns, the knowledge moves the answers of the rows that have some
        ideal.injection.project.weight.normal_()
    moved = ideal(ids, mask, image, triples)["answer"]
    changed = (moved - base(ids, mask, image)["answer"]).abs().amax(-1) > 1e-4
    assert changed.tolist() == [True, True, False, True]  # row 2 has no triple


@pytest.mark.parametrize("fusion", kn.FUSIONS)
def test_rows_without_knowledge_pass_through_unchanged(fusion):
    """Type A questions (no triple, or a predicted NO_KNOWLEDGE) get exactly the baseline's answer, in every fusion."""
    base, gel = baseline_and("gel", knowledge_fusion=fusion)
    with torch.no_grad():
        gel.injection.project.weight.normal_() if fusion != "mul" else None
        gel.triple_heads.r.bias[gel.no_knowledge] = 100.0  # every row predicts no knowledge
    ids, mask, image, triples = tiny_batch("gel")
    out = gel(ids, mask, image, triples)
    assert (out["triple"][:, 0] == kn.ABSENT).all()
    assert torch.allclose(out["answer"], base(ids, mask, image)["answer"], atol=1e-6)


def test_ideal_uses_the_gold_triples():
    model = tiny_model("ideal").eval()
    with torch.no_grad():  # as after training: mul's projection starts at the constant 1
        model.injection.project.weight.normal_()
    ids, mask, image, triples = tiny_batch()
    base = model(ids, mask, image, triples)["answer"]
    other = triples.clone()
    other[0, 0] = torch.tensor([2, 2, 2])  # another gold triple for row 0
    changed = model(ids, mask, image, other)["answer"]
    assert not torch.allclose(base[0], changed[0]) and torch.allclose(base[1:], changed[1:])


def test_unseen_parts_use_the_unknown_vector():
    vocab = tiny_vocab("ideal")
    assert vocab.ids("apple|is|red;zebra|is|striped", 3) == [[0, 0, 0], [-1, 0, -1], [kn.ABSENT] * 3]
    model = tiny_model("ideal").eval()
    with torch.no_grad():  # as after training: mul's projection starts at the constant 1
        model.injection.project.weight.normal_()
    ids, mask, image, triples = tiny_batch()  # row 3: an unseen relation
    code, present = model.codes(triples)
    expected = torch.cat([model.codes.head_table[4], model.codes.relation_unknown, model.codes.tail_table[0]])
    assert torch.equal(code[3], expected) and present.tolist() == [True, True, False, True]
    before = model(ids, mask, image, triples)["answer"]
    with torch.no_grad():
        model.codes.relation_unknown.add_(1.0)
    after = model(ids, mask, image, triples)["answer"]
    assert not torch.allclose(before[3], after[3]) and torch.allclose(before[:3], after[:3])
    with torch.no_grad():  # a vocabulary entry the KG embeddings lack takes the unknown vector too
        model.codes.head_missing[1] = True
    assert torch.equal(model.codes(triples)[0][1, :WIDTHS[0]], model.codes.head_unknown)


def test_gel_ignores_the_gold_triples_and_uses_its_prediction():
    model = tiny_model("gel", knowledge_fusion="film").eval()
    with torch.no_grad():
        model.injection.project.weight.normal_()
        model.triple_heads.r.bias[model.no_knowledge] = -100.0  # every row predicts a triple
    ids, mask, image, triples = tiny_batch("gel")
    assert torch.equal(model(ids, mask, image, triples)["answer"], model(ids, mask, image, triples.flip(0))["answer"])
    out = model(ids, mask, image, triples)
    with torch.no_grad():  # the predicted head's KG embedding moves the answer
        model.codes.head_table[out["triple"][0, 0]] += 3
    assert not torch.allclose(out["answer"][0], model(ids, mask, image, triples)["answer"][0])


def test_cascade_conditions_the_relation_on_the_head():
    torch.manual_seed(0)
    z_iq, z_q = torch.randn(4, 24), torch.randn(4, 24)
    for kind, conditioned in (("cascade", True), ("independent", False)):
        heads = kn.TripleHeads(kind, 24, SIZES)
        before = heads(z_iq, z_q)
        with torch.no_grad():  # other head logits, the same question feature
            heads.h.weight.add_(torch.randn_like(heads.h.weight))
        after = heads(z_iq, z_q)
        assert not torch.allclose(before["h"], after["h"])
        assert (not torch.allclose(before["r"], after["r"])) == conditioned, kind
        assert (not torch.allclose(before["t"], after["t"])) == conditioned, kind  # through the relation


@pytest.mark.parametrize("kb_score", kn.KB_SCORES)
def test_the_kb_constraint_only_ever_yields_kb_triples(kb_score):
    vocab = tiny_vocab("gel")
    kb_triples = KB + [("zebra", "is", "striped")]  # names no training row has: ids past the heads' classes
    kb_triples += [("apple", "has", "red")]  # a second tail of (apple, has)
    extended = vocab.extended(*zip(*kb_triples))
    knowledge_base = kn.KnowledgeBase(kb_triples, extended)
    kb = knowledge_base.ids
    assert kb.tolist()[3] == [5, 0, 6] and kn.beyond_classes(kb_triples, extended) == 1
    torch.manual_seed(0)
    for _ in range(20):
        out = {k: torch.randn(64, n) * 3 for k, n in zip("hrt", SIZES)}
        chosen = kn.choose_triple(out, knowledge_base, vocab=extended, kb_score=kb_score)
        assert {tuple(t) for t in chosen.tolist()} <= {tuple(t) for t in kb.tolist()}
        logp = [torch.cat([out[p].log_softmax(-1), torch.full((64, n - SIZES[i]), -math.log(SIZES[i]))], -1)
                for i, (p, n) in enumerate(zip("hrt", extended.sizes))]

        def tail(i, k, logp=logp):  # pair: p(t | h, r, KB), among the KB's tails of the triple's head and relation
            if kb_score == "product":
                return logp[2][i, kb[k, 2]]
            tails = [j for j in range(len(kb)) if kb[j, :2].tolist() == kb[k, :2].tolist()]
            return logp[2][i, kb[k, 2]] - torch.logsumexp(logp[2][i, kb[tails, 2]], 0)
        best = [max(range(len(kb)), key=lambda k: logp[0][i, kb[k, 0]] + logp[1][i, kb[k, 1]] + tail(i, k))
                for i in range(64)]
        assert chosen.tolist() == kb[best].tolist()  # the most probable KB triple, a new name at 1 / classes
        assert not torch.equal(chosen, kn.choose_triple(out))


def test_kb_score_product_lets_the_tail_choose_the_relation():
    """A head with one KB tail per relation: pair scores p(h) p(r) alone, so the relation classifier decides;
    product also weighs the tail the question points at."""
    vocab = tiny_vocab("gel")
    kb_triples = [("apple", "is", "red"), ("apple", "has", "fur")]
    knowledge_base = kn.KnowledgeBase(kb_triples, vocab)
    out = {"h": torch.tensor([[9.0, 0, 0, 0, 0]]), "r": torch.tensor([[2.0, 1.0, 0, 0]]),
           "t": torch.tensor([[0, 5.0, 0, 0, 0, 0]])}  # the relation leans to "is", the tail points at "fur"
    pair, product = (kn.choose_triple(out, knowledge_base, vocab=vocab, kb_score=s) for s in kn.KB_SCORES)
    assert vocab.names(pair[0].tolist()) == ("apple", "is", "red")
    assert vocab.names(product[0].tolist()) == ("apple", "has", "fur")


def test_triple_noise_feeds_the_answer_pass_the_kb_triple_ranked_next_in_training_only():
    model = tiny_model("gel_text", kb=KB, kb_constrained=True, triple_noise=0.999)
    ids, mask, image, triples = tiny_batch("gel_text")
    read = []
    model.text_encoder.register_forward_hook(lambda module, args, kwargs, output: read.append(kwargs["input_ids"]),
                                             with_kwargs=True)
    torch.manual_seed(0)
    out = model(ids, mask, image, triples)
    order = kn.kb_triple_scores(kn.log_probs(out, model.vocab), model.kb).argsort(-1, descending=True)
    chose = out["triple"][:, 0] >= 0  # the other rows predicted no knowledge: they keep it
    assert 0 < chose.sum() < len(chose) and torch.equal(out["fed_triple"][~chose], out["triple"][~chose])
    assert torch.equal(out["triple"][chose], model.kb.ids[order[chose, 0]])
    assert torch.equal(out["fed_triple"][chose], model.kb.ids[order[chose, 1]])  # what it would have chosen next
    assert torch.equal(read[-1], model.triple_text.pair(ids, mask, out["fed_triple"])[0])  # the answer pass reads it
    model.eval()
    assert "fed_triple" not in model(ids, mask, image, triples)
    model.train().triple_noise = 0.0
    assert "fed_triple" not in model(ids, mask, image, triples)


def text_batch(questions, triples):
    """(each question's ids encoded alone, and the padded ids and attention mask of the questions paired with their
    triples as --knowledge text encodes them) with the tiny tokenizer; the first row's knowledge text must fit."""
    tokenizer = tiny_tokenizer()
    df = pd.DataFrame({"question": questions, "triple": triples, "abstract": [""] * len(questions)})
    alone, paired = (encode_questions(tokenizer, df, 16, mode) for mode in ("none", "text"))
    assert len(paired[0]) > len(alone[0])  # the knowledge text fits
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(row) for row in paired], batch_first=True,
                                          padding_value=tokenizer.pad_token_id)
    return alone, ids, (ids != tokenizer.pad_token_id).long()


@pytest.mark.parametrize("text_pool", ["cls", "mean"])
def test_knowledge_dropout_makes_the_encoder_read_the_question_alone_in_training_only(text_pool):
    alone, ids, mask = text_batch(["the animal"] * 2, ["bear|eats|fish", ""])
    model = tiny_model("text", knowledge_dropout=0.999, text_pool=text_pool)
    read = []
    model.text_encoder.register_forward_hook(
        lambda module, args, kwargs, output: read.append(kwargs["attention_mask"]), with_kwargs=True)
    torch.manual_seed(0)
    model(ids, mask, test_model.tiny_batch()[2][:2])
    withheld = read[-1]
    assert withheld[0].tolist() == [1] * len(alone[0]) + [0] * (len(ids[0]) - len(alone[0]))  # "<s> q </s>" only
    assert torch.equal(withheld[1], mask[1])  # no knowledge text: as it was
    model.eval()  # what the encoder reads is the question as it is encoded alone
    q_alone = model.encode_text(torch.tensor(alone[:1]), torch.ones(1, len(alone[0]), dtype=torch.long))[0]
    assert torch.allclose(model.encode_text(ids[:1], withheld[:1])[0], q_alone, atol=1e-5)
    model(ids, mask, test_model.tiny_batch()[2][:2])
    assert torch.equal(read[-1], mask)
    model.train().knowledge_dropout = 0.0
    model(ids, mask, test_model.tiny_batch()[2][:2])
    assert torch.equal(read[-1], mask)


def test_knowledge_dropout_makes_ideal_rows_pass_as_rows_without_knowledge_in_training_only():
    model = tiny_model("ideal", knowledge_fusion="concat", knowledge_dropout=0.999, answer_from_kb=True)
    read = []  # the triples whose codes the injection receives, and whether a row has one
    model.codes.register_forward_hook(lambda module, args, output: read.append((args[0], output[1])))
    ids, mask, image, triples = tiny_batch("ideal")
    torch.manual_seed(0)
    model(ids, mask, image, triples)
    assert torch.all(read[-1][0] == kn.ABSENT) and not read[-1][1].any()  # withheld: no row has knowledge
    model.eval()  # at test the gold triples are read
    model(ids, mask, image, triples)
    assert torch.equal(read[-1][0], triples) and read[-1][1].tolist() == [True, True, False, True]
    model.train().knowledge_dropout = 0.0
    model(ids, mask, image, triples)
    assert torch.equal(read[-1][0], triples)
    model.knowledge_dropout = 0.5  # at a rate, whole rows are withheld, each with all its triples
    torch.manual_seed(1)
    expected = torch.rand(len(triples)) < 0.5
    torch.manual_seed(1)
    model(ids, mask, image, triples)
    assert 0 < int(expected.sum()) < len(triples)
    assert torch.equal(read[-1][0], triples.masked_fill(expected[:, None, None], kn.ABSENT))


@pytest.mark.parametrize("fusion", kn.FUSIONS)
def test_the_knowledge_free_answer_is_the_baselines_in_training_only(fusion):
    base, ideal = baseline_and("ideal", knowledge_fusion=fusion, knowledge_free_loss=True)
    with torch.no_grad():  # the codes move the answers of the rows that have some
        ideal.injection.project.weight.normal_()
    ids, mask, image, triples = tiny_batch()
    base.train().drop.p = ideal.train().drop.p = 0.0  # train mode, without dropout's randomness
    for encoder in (base.text_encoder, ideal.text_encoder, base.image_encoder, ideal.image_encoder):
        encoder.eval()
    out = ideal(ids, mask, image, triples)
    assert out["knowledge_rows"].tolist() == [True, True, False, True]  # row 2 has no triple
    assert torch.allclose(out["answer_without_knowledge"], base(ids, mask, image)["answer"][out["knowledge_rows"]],
                          atol=1e-5)
    assert not torch.allclose(out["answer"][:2], out["answer_without_knowledge"][:2], atol=1e-4)
    assert "answer_without_knowledge" not in ideal.eval()(ids, mask, image, triples)


def test_the_knowledge_free_answer_of_text_reads_the_question_alone():
    alone, ids, mask = text_batch(["the animal", "what colour"], ["bear|eats|fish", ""])
    model = tiny_model("text", knowledge_free_loss=True, text_pool="mean")
    model.train().drop.p = 0.0  # train mode, without dropout's randomness
    model.text_encoder.eval()
    model.image_encoder.eval()
    image = test_model.tiny_batch()[2][:2]
    out = model(ids, mask, image)
    assert out["knowledge_rows"].tolist() == [True, False]  # the second row has no knowledge text
    q_alone = torch.tensor(alone[:1])
    expected = model(q_alone, torch.ones_like(q_alone), image[:1])["answer"]
    assert torch.allclose(out["answer_without_knowledge"], expected, atol=1e-5)
    assert "answer_without_knowledge" not in model.eval()(ids, mask, image)


def test_the_knowledge_free_loss_adds_the_rows_with_knowledge_at_no_added_encoder_pass(sample_dir, kge_dir,
                                                                                        monkeypatch):
    calls, batches, losses = [], [], []

    def watch(model):
        model.text_encoder.register_forward_hook(lambda *a: calls.append(1))
        model.image_encoder.register_forward_hook(lambda *a: calls.append(2))

    def loss_fn(logits, label):
        losses.append((logits.detach(), label))
        return logits.logsumexp(-1).mean()
    forward = train.forward
    monkeypatch.setattr(train, "forward", lambda model, batch, *a: batches.append(batch) or forward(model, batch, *a))
    one_training_step(sample_dir, ["--knowledge", "ideal", "--kge_dir", str(kge_dir), "--knowledge_free_loss"], watch,
                      loss_fn)
    assert sorted(calls) == [1, 2]  # one encoder pass each
    has = (batches[0]["triples"][..., 0] != kn.ABSENT).any(1)
    assert 0 < int(has.sum()) < len(has)  # the batch has type A rows, without a triple
    (answer, label), (without, label_with_knowledge) = losses
    assert torch.equal(label_with_knowledge, label[has]) and len(without) == int(has.sum())


@pytest.mark.parametrize("loss", ["focal", "ce"])
def test_the_knowledge_free_loss_weighs_each_row_as_the_baselines_mean_does(loss):
    """With the answers of the rows without knowledge, the knowledge-free answers make up the baseline's loss."""
    loss_fn = build_loss(loss)
    g = torch.Generator().manual_seed(0)
    answers, label = torch.randn(6, 5, generator=g), torch.tensor([0, 3, -1, 2, 4, 1])  # -1: outside the vocabulary
    rows = torch.tensor([True, False, True, True, False, False])
    out = {"answer_without_knowledge": answers[rows], "knowledge_rows": rows}
    known_without = int((label[~rows] >= 0).sum())
    without = loss_fn(answers[~rows], label[~rows]) * known_without / int((label >= 0).sum())
    assert torch.allclose(without + train.knowledge_free_loss(loss_fn, out, label), loss_fn(answers, label))


def test_the_knowledge_free_loss_of_text_adds_one_text_pass_over_the_rows_with_knowledge(sample_dir):
    rows = []

    def watch(model):
        model.text_encoder.register_forward_hook(lambda module, args, kwargs, output: rows.append(
            kwargs["attention_mask"]), with_kwargs=True)
        model.image_encoder.register_forward_hook(lambda *a: rows.append(None))
    one_training_step(sample_dir, ["--knowledge", "text", "--knowledge_free_loss"], watch)
    image, batch, with_knowledge = rows
    assert image is None and 0 < len(with_knowledge) < len(batch)  # one image pass; the knowledge rows' questions again
    # ... over the questions' columns only: the knowledge text after them is cut off, not computed and masked
    assert with_knowledge.shape[1] < batch.shape[1] and with_knowledge[:, -1].any()


def perturb(*modules):
    torch.manual_seed(1)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(torch.randn_like(p))


def test_an_own_knowledge_head_answers_only_the_rows_with_a_triple_and_starts_as_the_shared_one():
    base, ideal = baseline_and("ideal", knowledge_fusion="concat", knowledge_head="own", answer_from_kb=True)
    ids, mask, image, triples = tiny_batch()
    start = ideal(ids, mask, image, triples)
    assert torch.allclose(start["answer"], base(ids, mask, image)["answer"], atol=1e-5)  # a copy at init
    has = torch.tensor([True, True, False, True])  # row 2 has no triple
    perturb(ideal.knowledge_answer)
    own = ideal(ids, mask, image, triples)
    assert torch.equal(own["answer"][~has], start["answer"][~has])
    assert not torch.allclose(own["answer"][has], start["answer"][has], atol=1e-3)
    assert not torch.allclose(own["gate"][has], start["gate"][has], atol=1e-3)  # the gate reads the own hidden too
    perturb(ideal.linear, ideal.h_layer_norm, ideal.classifier)
    assert torch.equal(ideal(ids, mask, image, triples)["answer"][has], own["answer"][has])


def learns(*modules):
    return any(p.grad is not None and p.grad.any() for m in modules for p in m.parameters())


@pytest.mark.parametrize("head", ["own", "detached"])
def test_the_gradient_of_the_rows_with_knowledge_text_stays_off_the_shared_head_and_if_detached_the_encoders(head):
    _, ids, mask = text_batch(["the animal", "what colour"], ["bear|eats|fish", ""])
    model = tiny_model("text", knowledge_head=head).train()
    image = test_model.tiny_batch()[2][:2]
    answer = model(ids, mask, image)["answer"]
    answer[0].sum().backward(retain_graph=True)  # the row with knowledge text
    assert not learns(model.linear, model.h_layer_norm, model.classifier) and learns(model.knowledge_answer)
    assert learns(model.text_encoder) == learns(model.image_encoder) == (head == "own")
    model.zero_grad()
    answer[1].sum().backward()  # the row without
    assert learns(model.classifier, model.text_encoder, model.image_encoder) and not learns(model.knowledge_answer)


def test_the_copy_gate_learns_from_the_triple_the_answer_pass_read():
    copy = torch.tensor([1, 1, 2, 2, 0, 2])  # vocabulary 0, head 1, tail 2
    gold = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 2, 2], [3, 3, 3]])
    fed = torch.tensor([[0, 1, 2], [4, 0, 0], [2, 2, 1], [1, 1, 5], [0, 0, 0], [3, 3, 3]])
    assert kn.fed_copy_targets(copy, fed, gold).tolist() == [1, 0, 2, 0, 0, 2]
    # --answer_relation looks the tail up among the read head's facts: it can be copied where the head is right
    assert kn.fed_copy_targets(copy, fed, gold, tail_from_head=True).tolist() == [1, 0, 0, 2, 0, 2]


def test_gel_text_reads_only_its_predicted_triple():
    model = tiny_model("gel_text").eval()
    ids, mask, image, triples = tiny_batch("gel_text")
    out = model(ids, mask, image, triples)
    assert torch.equal(out["answer"], model(ids, mask, image, triples.flip(0))["answer"])  # nothing gold is read
    paired, paired_mask = model.triple_text.pair(ids, mask, out["triple"])
    texts = []
    model.text_encoder.register_forward_hook(lambda module, args, kwargs, output: texts.append(kwargs["input_ids"]),
                                             with_kwargs=True)
    model(ids, mask, image, triples)
    assert len(texts) == 2 and torch.equal(texts[1], paired)  # two passes, the second with the predicted triple
    tokenizer = tiny_tokenizer()
    for row, triple in enumerate(out["triple"].tolist()):
        names = model.vocab.names(triple)
        length = int(paired_mask[row].sum())
        if names is None:
            assert torch.equal(paired[row, :length], ids[row][mask[row].bool()])
        else:
            question = tokenizer.decode(ids[row][mask[row].bool()], skip_special_tokens=True)
            expected = tokenizer(question, " ".join(names), truncation="only_second", max_length=16)["input_ids"]
            assert paired[row, :length].tolist() == expected


def test_the_copy_gate_learns_where_the_answer_is_the_triples_head_or_tail():
    df = pd.DataFrame({"triple": ["Arena|subject|Sports_Facilities", "Taro|family|Araceae", "Taro|family|Araceae", ""],
                       "answer": ["arena", "Araceae", "monocot", "red"]})
    assert kn.copy_targets(df).tolist() == [1, 2, 0, 0]  # case and underscores do not matter; no triple: vocabulary
    assert kn.answer_key("Sports_Facilities") == kn.answer_key("sports  facilities") == "sports facilities"


def test_the_answer_relation_is_that_of_the_heads_kb_fact_whose_tail_is_the_answer():
    vocab = tiny_vocab("gel")
    facts = [("apple", "is", "red"), ("apple", "has", "fur"), ("apple", "has", "red"), ("bear", "eats", "fish")]
    df = pd.DataFrame({"triple": ["apple|has|fur", "apple|has|fur", "apple|eats|fish", "apple|has|fur",
                                  "apple|has|fur", "", "bear|eats|fish"],
                       "answer": ["Fur", "red", "red", "apple", "wet", "red", "red"]})
    relations = kn.answer_relation_targets(df, vocab, kn.KnowledgeBase(facts, vocab))
    has, is_ = vocab.index[1]["has"], vocab.index[1]["is"]
    # the triple's own (first also where another fact has the answer too), another fact's, then none: the answer is
    # the head, no fact's tail, the row has no triple, the head has no fact with that tail
    assert relations.tolist() == [has, has, is_, -1, -1, -1, -1]
    assert kn.copy_targets(df).tolist() == [2, 0, 0, 1, 0, 0, 0]
    assert kn.copy_targets(df, relations).tolist() == [2, 2, 2, 1, 0, 0, 0]  # another fact's tail is copied too


def test_answer_relation_copies_the_tail_of_the_heads_fact_it_chooses():
    facts = [("apple", "has", "fur"), ("apple", "is", "red"), ("bear", "eats", "fish")]
    model = tiny_model("gel", kb=facts, kb_constrained=True, answer_from_kb=True, answer_relation=True).eval()
    vocab = model.vocab
    with torch.no_grad():
        model.triple_heads.h.bias[:] = torch.tensor([100.0, 0, 0, 0, 0])  # apple
        model.triple_heads.r.bias[:] = torch.tensor([0, 100.0, 0, 0])  # has: the triple is (apple, has, fur)
        model.answer_relation.weight.zero_()
        for relations, tail in (({"is": 50.0, "eats": 100.0}, "red"), ({"has": 50.0, "eats": 100.0}, "fur")):
            model.answer_relation.bias[:] = torch.tensor([relations.get(r, 0.0) for r in vocab.parts[1]])
            out = model(*tiny_batch("gel"))
            assert vocab.names(out["triple"][0].tolist()) == ("apple", "has", "fur")
            # eats ranks first, but apple has no such fact: the relations the head's KB facts have are chosen from
            assert kn.copy_candidates(model, out, None) == [("apple", tail, False)] * test_model.BATCH


def test_text_and_ideal_copy_from_the_rows_gold_triple():
    df = pd.DataFrame({"triple": ["Taro|family|Araceae", ""], "answer": ["Araceae", "red"]})
    for knowledge in ("text", "ideal"):
        model = tiny_model(knowledge, answer_from_kb=True)
        assert kn.copy_candidates(model, {}, df) == [("Taro", "Araceae", False), None]


def test_a_copied_name_outside_the_vocabulary_can_be_the_right_answer():
    answers = ["red", "arena", "Arena", "blue"]  # "arena" is the more frequent spelling: copies map to it
    chooser = kn.AnswerChooser(answers)
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 3)
    gate = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])  # copy head, copy tail, vocabulary
    rows = chooser.choose(probs, gate, [("ARENA", "Araceae", False), ("Arena", "Araceae", False),
                                        ("Arena", "Araceae", False)], top_k=2)
    assert [row[0][0] for row in rows] == ["arena", "Araceae", "red"]
    assert [kn.SOURCES[row[0][2]] for row in rows] == ["head", "tail", "vocabulary"]
    inferred = chooser.choose(probs[1:2], gate[1:2], [("Arena", "Araceae", True)], top_k=1)[0][0]
    assert kn.SOURCES[inferred[2]] == "inferred tail"
    assert sum(p for _, p, _ in rows[0]) <= 1 + 1e-6 and rows[0][0][1] > 0.9
    assert kn.copied_right("Araceae", 2, "araceae") and not kn.copied_right("Araceae", 0, "araceae")
    no_triple = chooser.choose(probs[:1], gate[:1], [None], top_k=1)[0][0]
    assert no_triple[0] == "red" and no_triple[1] == pytest.approx(0.7)  # the gate is moot without a triple


def test_a_name_the_kg_embeddings_lack_is_embedded_from_its_relations():
    # new: stripes, yak, tall
    kb = KB + [("apple", "has", "stripes"), ("bear", "has", "stripes"), ("yak", "is", "tall")]
    model = tiny_model("ideal", kb=kb, answer_from_kb=True)
    embeddings, vocab, codes = tiny_kge(), model.vocab, model.codes
    stripes = vocab.index[2]["stripes"]
    linked = embeddings.entity[[embeddings.entity_to_id["apple"], embeddings.entity_to_id["bear"]]].mean(0)
    assert torch.allclose(codes.tail_table[stripes], linked) and not codes.tail_missing[stripes]
    assert codes.head_missing[vocab.index[0]["yak"]] and codes.tail_missing[vocab.index[2]["tall"]]  # no known link
    ids, mask, image, _ = tiny_batch()
    triples = torch.tensor([[[vocab.index[0]["yak"], 0, vocab.index[2]["tall"]]]] * test_model.BATCH)
    code, _ = codes(triples)
    assert torch.equal(code[0, :WIDTHS[0]], codes.head_unknown)  # the unknown vector, not a crash or zeros
    assert torch.isfinite(model(ids, mask, image, triples)["answer"]).all()


def test_a_tail_the_kb_lacks_is_link_predicted_and_marked_inferred():
    model = tiny_model("gel", kb=KB, answer_from_kb=True, knowledge_fusion="film").eval()
    with torch.no_grad():
        model.triple_heads.r.bias[model.no_knowledge] = -100.0
        model.triple_heads.h.bias[:] = torch.tensor([0.0, 0.0, 0.0, 100.0, 0.0])  # dog
        model.triple_heads.r.bias[:3] = torch.tensor([0.0, 100.0, 0.0])  # has: (dog, has, ?) is not in the KB
    ids, mask, image, triples = tiny_batch("gel")
    out = model(ids, mask, image, triples)
    candidates = kn.copy_candidates(model, out, None)
    expected = kn.link_prediction(model.kge, "dog", "has")
    assert expected is not None and all(c == ("dog", expected, True) for c in candidates)
    with torch.no_grad():
        model.triple_heads.h.bias[:] = torch.tensor([0.0, 100.0, 0.0, 0.0, 0.0])  # bear: (bear, has, ?) is not either
        model.triple_heads.r.bias[:3] = torch.tensor([0.0, 0.0, 100.0])  # eats: (bear, eats, fish) is
    out = model(ids, mask, image, triples)
    assert all(c == ("bear", "fish", False) for c in kn.copy_candidates(model, out, None))


def test_the_evaluation_splits_seen_from_unseen():
    import report

    train = pd.DataFrame({"triple": ["a|r|b", "c|r|d", ""], "answer": ["b", "d", "x"]})
    test = pd.DataFrame({"triple": ["a|r|b", "a|r|e", "c|s|d", ""], "answer": ["b", "e", "d", "y"],
                         "correct": [True, True, False, False]})
    table = report.seen_table(test, train)
    assert table["unseen"]["triple"] == {"accuracy": 0.5, "n": 2}
    assert table["seen"]["triple"] == {"accuracy": 1.0, "n": 1}
    assert table["unseen"]["answer"] == {"accuracy": 0.5, "n": 2} and table["seen"]["answer"]["n"] == 2


def test_triple_loss_leaves_out_rows_without_a_triple_and_unseen_parts():
    import torch.nn.functional as F

    torch.manual_seed(0)
    out = {k: torch.randn(4, n) for k, n in zip("hrt", SIZES)}
    triples = tiny_batch("gel")[3]  # rows 0, 1 known; row 2 none (its relation: NO_KNOWLEDGE); row 3 unseen relation
    expected = (F.cross_entropy(out["h"][[0, 1, 3]], torch.tensor([0, 1, 4]))
                + F.cross_entropy(out["r"][[0, 1, 2]], torch.tensor([1, 2, 3]))
                + F.cross_entropy(out["t"][[0, 1, 3]], torch.tensor([2, 3, 0])))
    assert triple_loss(out, triples).item() == pytest.approx(expected.item(), rel=1e-6)
    none = torch.full((4, 1, 3), kn.ABSENT)
    assert triple_loss(out, none).item() == 0.0  # not NaN


@pytest.mark.parametrize("knowledge", ["gel", "gel_text"])
def test_an_own_triple_encoder_keeps_the_triples_loss_off_the_answer_path(knowledge):
    answer_path = ("text_encoder.", "image_encoder.", "image_proj.", "linear.", "h_layer_norm.")
    for encoder in kn.TRIPLE_ENCODERS:
        model = tiny_model(knowledge, triple_encoder=encoder)
        triple_loss(model(*tiny_batch(knowledge)), tiny_batch(knowledge)[3]).backward()
        reached = {name.startswith("triple_encoders.") for name, p in model.named_parameters()
                   if name.startswith(answer_path + ("triple_encoders.",)) and p.grad is not None and p.grad.any()}
        assert reached == ({False} if encoder == "shared" else {True})  # the answer path's or the triple's own
    assert model.text_encoders() == [model.text_encoder, model.triple_encoders.text_encoder]
    rt = train.Runtime(torch.device("cpu"), 0, 1, "fp32")
    train.wrap(model, rt, compile_model=False, text_frozen=True)  # both question encoders are frozen together
    assert not any(p.requires_grad for encoder in model.text_encoders() for p in encoder.parameters())


def test_the_triple_encoder_kb_score_triple_noise_and_knowledge_dropout_are_rebuilt_from_the_runs_config():
    import main
    from model import build_model, small_text_config

    args = main.parse_args(["--preset", "sample", "--knowledge", "gel_text", "--triple_encoder", "own",
                            "--kb_constrained", "--kb_score", "product", "--triple_noise", "0.3"])
    text_args = main.parse_args(["--preset", "sample", "--knowledge", "text", "--knowledge_dropout", "0.5"])
    config = {**run_config(args, num_answers=3), "knowledge_sizes": list(SIZES)}
    text_config = small_text_config(50, 16, hidden=32, layers=1, heads=2)
    trained, rebuilt = build_model(config, text_config, from_sources=True), build_model(config, text_config)
    assert hasattr(rebuilt, "triple_encoders") and not hasattr(rebuilt.triple_encoders, "classifier")
    assert rebuilt.kb_score == "product" and build_model({**config, "kb_score": "pair"}, text_config).kb_score == "pair"
    assert rebuilt.triple_noise == 0.3
    assert build_model(run_config(text_args, num_answers=3), text_config).knowledge_dropout == 0.5
    del config["kb_score"], config["triple_noise"], config["knowledge_dropout"]  # a run of an earlier version
    assert build_model(config, text_config).kb_score == "pair" and build_model(config, text_config).triple_noise == 0
    assert build_model(config, text_config).knowledge_dropout == 0
    assert trained.state_dict().keys() == rebuilt.state_dict().keys()


def test_the_cost_of_each_configuration_is_timed_against_the_baseline(sample_dir, kge_dir, tmp_path):
    import knowledge_cost
    from conftest import run_main

    assert run_main(knowledge_cost, "--data_dir", sample_dir, "--kge_dir", kge_dir, "--configs", "none",
                    "gel_text_own_kb_copy_adjust", "--rounds", "2", "--steps", "1", "--warmup_steps", "0",
                    "--out", tmp_path) == ""
    table = pd.read_csv(tmp_path / "cost.csv")
    assert table["configuration"].tolist() == ["none", "gel_text_own_kb_copy_adjust"]
    assert table["ratio"][0] == 1.0 and (table["s / step"] > 0).all()
    assert "--triple_encoder own" in table["main.py options"][1] and (tmp_path / "cost.md").is_file()


def test_head_logit_adjustment_takes_no_gradient_toward_heads_a_relation_never_had():
    # relation 1 had only head 2 in training; relation 0 had heads 0 and 1
    triples = torch.tensor([[[2, 1, 2]]] * 1000 + [[[0, 0, 0]], [[1, 0, 1]]])
    prior = kn.head_log_prior(triples, SIZES)
    assert torch.allclose(prior.exp().sum(1), torch.ones(SIZES[1]))
    assert prior[1].exp().tolist() == pytest.approx([1 / 1005, 1 / 1005, 1001 / 1005, 1 / 1005, 1 / 1005])
    assert prior[0].exp().tolist() == pytest.approx([2 / 7, 2 / 7, 1 / 7, 1 / 7, 1 / 7])  # add-one smoothed
    gold = torch.tensor([[[2, 1, 2]]])
    grads = []
    for head_prior in (None, prior):
        out = {k: torch.zeros(1, n, requires_grad=True) for k, n in zip("hrt", SIZES)}
        triple_loss(out, gold, head_prior).backward()
        grads.append(out["h"].grad[0])
    # without: the heads relation 1 never had are pushed down (gradient 1/5 each); with: hardly at all
    assert grads[0][0].item() == pytest.approx(0.2) and 0 < grads[1][0].item() < 0.001
    assert grads[1][2].item() < 0  # the gold head is still learned
    model = tiny_model("gel", triple_head="cascade")
    out = model(*tiny_batch("gel"))
    triple_loss(out, tiny_batch("gel")[3], kn.head_log_prior(tiny_batch("gel")[3], SIZES)).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_head_from_answers_teaches_the_head_on_rows_whose_answer_names_a_head(sample_dir, capsys):
    import main

    vocab = tiny_vocab("gel")
    df = pd.DataFrame({"triple": ["apple|is|red", "", "", "", "zebra|is|red"],
                       "answer": ["red", "Bear", "fish", "apple pie", "red"]})
    # a triple's own head (-1 where it is unseen); an answer naming a head by answer_key (case folded); a tail's
    # name and a name that is no head give no target
    heads = kn.head_targets(df, vocab)
    assert heads.tolist() == [0, 1, kn.ABSENT, kn.ABSENT, -1]
    torch.manual_seed(0)
    out = {k: torch.randn(5, n, requires_grad=True) for k, n in zip("hrt", SIZES)}
    triples = torch.tensor([[vocab.ids(cell, 1)[0]] for cell in df["triple"]])
    triple_loss(out, triples, heads=heads).backward()
    taught = out["h"].grad.abs().sum(-1) > 0
    assert taught.tolist() == [True, True, False, False, False]
    assert out["h"].grad[1, 1] < 0  # toward the head its answer names
    # the prior of --head_logit_adjustment counts such a head under the relation of rows without knowledge
    prior = kn.head_log_prior(triples, SIZES, heads).exp()
    assert prior[vocab.no_knowledge, 1].item() == pytest.approx(2 / 6) == prior[0, 0].item()
    # main.py's train set: the option's targets where it is given, the triples' own heads otherwise
    rt = train.Runtime(torch.device("cpu"), 0, 1, "fp32")
    for option in ([], ["--head_from_answers"]):
        args = main.parse_args(TINY_TRAIN + ["--data_dir", str(sample_dir), "--knowledge", "gel_text", *option])
        data = train.load_training_data(args, rt)
        vocab = kn.KnowledgeVocab.from_rows(pd.concat([data.train, data.valid]), predicting=True)
        capsys.readouterr()
        loader, _ = train.make_loaders(args, rt, data, train_tokenizer(list(data.train["question"])), vocab)
        own = loader.dataset.triples[:, 0, 0]
        from_answers = (loader.dataset.heads != own).numpy()
        told = f"--head_from_answers: {from_answers.sum()} of {len(from_answers)} training rows have no triple"
        assert (told in capsys.readouterr().out) == bool(option)
        assert from_answers.any() == bool(option) and (loader.dataset.heads[~from_answers] == own[~from_answers]).all()
        rows = data.train[from_answers]
        assert (rows["triple"] == "").all() and (rows["question_type"] == "A").all()
        names = [vocab.parts[0][i] for i in loader.dataset.heads[from_answers]]
        assert names == rows["answer"].tolist()


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


def test_the_vocabularies_are_separate_and_built_from_train_and_valid(sample_dir, kge_dir):
    import main

    args = main.parse_args(TINY_TRAIN + ["--data_dir", str(sample_dir), "--knowledge", "gel", "--kge_dir", str(kge_dir),
                                         "--kb_constrained"])
    rt = train.setup(args)
    data = train.load_training_data(args, rt)
    config = run_config(args, len(data.answers))
    vocab, kb, embeddings = train.knowledge_config(args, config, data, rt)
    rows = pd.concat([data.train, data.valid])
    triples = [t for cell in rows["triple"] if cell for t in [cell.split("|")]]
    assert vocab.parts[0] == sorted({t[0] for t in triples}) and vocab.parts[2] == sorted({t[2] for t in triples})
    assert vocab.parts[1] == sorted({t[1] for t in triples}) + [kn.NO_KNOWLEDGE]
    assert config["knowledge_sizes"] == vocab.sizes and kb == kn.read_kb(sample_dir / "triples.csv")


def one_training_step(sample_dir, options, before_step=lambda model: None, loss_fn=None):
    """Builds a tiny run's model from main.py's options on the sample, calls before_step(model), and trains one
    batch (with the answer's loss_fn, default main.py's)."""
    import main

    args = main.parse_args(TINY_TRAIN + ["--data_dir", str(sample_dir), *options])
    rt = train.setup(args)
    data = train.load_training_data(args, rt)
    tokenizer = train_tokenizer(list(data.train["question"]))
    config = run_config(args, len(data.answers))
    vocab, kb, embeddings = train.knowledge_config(args, config, data, rt)
    model = train.initial_model(config, tokenizer, vocab, kb, embeddings)
    loader, _ = train.make_loaders(args, rt, data, tokenizer, model.vocab, kb=model.kb)
    optimizer = train.build_optimizer(model, args, rt.device)
    before_step(model)
    loss_fn = loss_fn or build_loss(args.loss, gamma=args.gamma)
    train.train_step(model, optimizer, loss_fn, next(iter(loader)), rt.device, rt.precision, args.clip_grad, args.lr)


def test_gel_runs_one_forward_per_step(sample_dir, kge_dir):
    calls = []

    def count_encoder_calls(model):
        model.text_encoder.register_forward_hook(lambda *a: calls.append(1))
        model.image_encoder.register_forward_hook(lambda *a: calls.append(2))
    one_training_step(sample_dir, ["--knowledge", "gel", "--kge_dir", str(kge_dir)], count_encoder_calls)
    assert sorted(calls) == [1, 2]


def test_with_triple_noise_the_copy_gate_trains_on_the_triple_the_answer_pass_read(sample_dir, monkeypatch):
    outputs, calls, fed_copy_targets = [], [], kn.fed_copy_targets
    monkeypatch.setattr(kn, "fed_copy_targets", lambda *args: calls.append(args) or fed_copy_targets(*args))
    one_training_step(sample_dir, ["--knowledge", "gel_text", "--kb_constrained", "--answer_from_kb", "--triple_noise",
                                   "0.999"], lambda model: model.register_forward_hook(
                                       lambda module, args, out: outputs.append(out)))
    (out,), ((_, fed, _, tail_from_head),) = outputs, calls
    assert fed is out["fed_triple"] and not torch.equal(fed, out["triple"]) and not tail_from_head


def test_answer_relation_trains_on_the_kb_facts_whose_tail_is_the_answer(sample_dir, capsys):
    models = []
    one_training_step(sample_dir, ["--knowledge", "gel_text", "--kb_constrained", "--answer_from_kb",
                                   "--answer_relation"], models.append)
    # only its own loss reaches the classifier: a gradient there means the training step added it
    assert models[0].answer_relation.weight.grad.abs().sum() > 0
    assert "--answer_relation:" in capsys.readouterr().out


def test_head_lr_is_the_triple_heads_own():
    import main

    args = main.parse_args(["--knowledge", "gel_text", "--lr", "1e-3", "--head_lr", "1e-2"])
    model = tiny_model("gel_text")
    optimizer = train.build_optimizer(model, args, torch.device("cpu"))
    heads = {id(p) for p in model.triple_heads.parameters()}
    train.optimize(model, optimizer, model(*tiny_batch("gel_text"))["answer"].sum(), args.clip_grad, 5e-4)
    for group in optimizer.param_groups:
        is_head = {id(p) in heads for p in group["params"]}
        assert len(is_head) <= 1 and group["lr"] == (5e-3 if is_head == {True} else 5e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_preset_bokvqa_sets_the_papers_values():
    import main

    args = main.parse_args(["--preset", "bokvqa", "--knowledge", "gel", "--kge_dir", "kge"])
    paper = dict(text_model="xlm-roberta-base", image_model="resnet50", pretrained=True, img_size=224, max_token=50,
                 lr=5e-5, batch_size=128, n_epoch=50, schedule="constant", warmup=0.0, clip_grad=0.0, loss="ce",
                 dropout=0.2, dim_h=1024, knowledge_fusion="mul", triple_head="independent", freeze_text_epochs=0,
                 text_pool="first")
    assert {k: getattr(args, k) for k in paper} == paper
    assert train.lr_factor(0, 100, 0, "constant") == train.lr_factor(99, 100, 0, "constant") == 1.0
    assert main.parse_args(["--preset", "bokvqa", "--lr", "1e-4"]).lr == 1e-4  # explicit flags win


@pytest.mark.parametrize("argv, words", [
    (["--knowledge", "gel"], ["--kge_dir"]),
    (["--knowledge", "ideal", "--kge_dir", "k", "--kb_constrained"], ["--kb_constrained", "gel, gel_text"]),
    (["--knowledge", "gel_text", "--kb", "all_triple.csv"], ["--kb", "--answer_from_kb"]),
    (["--knowledge", "text", "--head_logit_adjustment"], ["--head_logit_adjustment", "gel, gel_text"]),
    (["--knowledge", "ideal", "--kge_dir", "k", "--head_from_answers"], ["--head_from_answers", "gel, gel_text"]),
    (["--knowledge", "ideal", "--kge_dir", "k", "--triple_encoder", "own"], ["--triple_encoder", "gel, gel_text"]),
    (["--knowledge", "gel_text", "--kb_score", "product"], ["--kb_score", "--kb_constrained"]),
    (["--knowledge", "gel_text", "--triple_noise", "0.3"], ["--triple_noise", "--kb_constrained"]),
    (["--knowledge", "gel_text", "--kb_constrained", "--triple_noise", "1"], ["--triple_noise", "[0, 1)"]),
    (["--knowledge", "gel", "--kge_dir", "k", "--knowledge_dropout", "0.5"], ["--knowledge_dropout", "text or ideal"]),
    (["--knowledge", "text", "--knowledge_dropout", "1"], ["--knowledge_dropout", "[0, 1)"]),
    (["--knowledge", "gel", "--kge_dir", "k", "--knowledge_free_loss"], ["--knowledge_free_loss", "text or ideal"]),
    (["--knowledge", "gel_text", "--knowledge_head", "own"], ["--knowledge_head", "text or ideal"]),
    (["--answer_from_kb"], ["--answer_from_kb", "text, ideal, gel or gel_text"]),
    (["--knowledge", "gel_text", "--answer_relation"], ["--answer_relation", "--answer_from_kb"]),
    (["--knowledge", "text", "--answer_from_kb", "--answer_relation"], ["--answer_relation", "gel or gel_text"]),
    (["--knowledge", "text", "--answer_from_kb", "--kb", "all_triple.csv"], ["--kb", "row's own triple"])])
def test_knowledge_options_that_cannot_work_are_refused_at_once(argv, words):
    import main

    with pytest.raises(SystemExit) as stop:
        main.parse_args(argv)
    message = str(stop.value.code)
    assert message.startswith("error: ") and all(w in message for w in words), message


@pytest.mark.parametrize("knowledge", ["text", "ideal", "gel", "gel_text"])
def test_a_short_run_of_each_mode_learns(knowledge_runs, sample_dir, knowledge):
    history = json.loads((knowledge_runs[knowledge] / "history.json").read_text())
    valid = select_rows(read_data(sample_dir), "valid")
    majority = valid["answer"].value_counts().iloc[0] / len(valid)
    assert max(row["valid_acc"] for row in history) > 2 * majority
    if kn.predicts(knowledge):  # the triple's accuracy is logged every epoch
        assert all({"valid_h", "valid_r", "valid_t", "valid_hrt", "train_hrt"} <= set(row) for row in history)
        assert history[-1]["valid_r"] > 0.5


def test_each_mode_is_evaluated_from_its_run_directory_alone(knowledge_runs, sample_dir, kge_dir, tmp_path, capsys):
    import inference
    import inference_each

    moved = tmp_path / "kge_elsewhere"
    shutil.move(kge_dir, moved)  # the run directory holds the embeddings it used
    try:
        for knowledge, run_dir in knowledge_runs.items():
            assert run_main(inference, "--model_path", run_dir, "--data_dir", sample_dir) == ""
            report = json.loads((run_dir / "eval_all.json").read_text())
            assert report["knowledge"] == knowledge and ("triple_accuracy" in report) == kn.predicts(knowledge)
            assert ("answered_from" in report) == (knowledge == "text")  # the short text run copies (conftest)
            each = script_output(capsys, inference_each, "--model_path", run_dir, "--index", "0", "--data_dir",
                                 sample_dir)
            assert ("predicted knowledge:" in each) == kn.predicts(knowledge)
        for knowledge in ("gel", "gel_text"):
            accuracy = json.loads((knowledge_runs[knowledge] / "eval_all.json").read_text())["triple_accuracy"]
            predictions = pd.read_csv(knowledge_runs[knowledge] / "predictions_all.csv", dtype=str,
                                      keep_default_na=False)
            with_triple = predictions[predictions["triple"] != ""]
            heads = [p.split("|")[0] == g.split("|")[0]
                     for p, g in zip(with_triple["predicted_triple"], with_triple["triple"])]
            assert accuracy["all"]["n"] == len(with_triple)
            assert accuracy["all"]["h"] == pytest.approx(sum(heads) / len(heads))
            assert "Predicted triple" in (knowledge_runs[knowledge] / "report.md").read_text()
        kb = pd.read_csv(knowledge_runs["gel_text"] / kn.KB_FILE, dtype=str)
        predicted = pd.read_csv(knowledge_runs["gel_text"] / "predictions_all.csv", dtype=str, keep_default_na=False)
        known = set(kb["h"] + "|" + kb["r"] + "|" + kb["t"])
        assert set(predicted["predicted_triple"]) - {""} <= known  # --kb_constrained: only KB triples
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
    kb = pd.read_csv(run_dir / kn.KB_FILE, dtype=str, keep_default_na=False)
    fact = (kb["h"] == head) & (kb["r"] == relation)
    assert (kb.loc[fact, "t"] == tail).any() and first.split()[1] != "새보석"
    kb.loc[fact, "t"] = "새보석"  # the fact edited: a tail no run has seen
    kb.to_csv(tmp_path / "kb.csv", index=False)
    edited = script_output(capsys, inference_each, "--model_path", run_dir, "--index", index, "--kb",
                           tmp_path / "kb.csv")
    first = next(line for line in edited.splitlines() if line.startswith("  1. "))
    assert first.split()[1] == "새보석" and "(copied: tail)" in first, edited
    # the run's own KB is unchanged
    again = script_output(capsys, inference_each, "--model_path", run_dir, "--index", index)
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
    assert "Rows whose triple, or whose answer, never occurs" in (run_dir / "report.md").read_text()


def fake_run(path, seed, knowledge, accuracy, **options):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"seed": seed, "knowledge": knowledge, "lr": 1e-3,
                                                  "best_valid_acc": accuracy, **options}))
    (path / "eval_all.json").write_text(json.dumps({"accuracy": accuracy, "n": 10, "by_type": {
        "A": {"accuracy": accuracy, "n": 5}, "B": {"accuracy": accuracy / 2, "n": 5}}}))
    (path / "history.json").write_text(json.dumps([{"epoch": 1, "seconds": 10 * seed}]))
    return path


def test_compare_groups_runs_that_differ_only_in_seed(tmp_path):
    noise = {"triple_noise": 0.3}
    runs = [fake_run(tmp_path / f"{k}_{seed}", seed, k, acc, **options) for k, seed, acc, options in
            [("none", 1, 0.5, {}), ("none", 2, 0.7, {}), ("gel", 1, 0.8, noise), ("gel", 2, 0.9, noise)]]
    # a run of this version saves an option that the earlier runs lack, at the value they had
    runs.insert(2, fake_run(tmp_path / "none_3", 3, "none", 0.6, triple_encoder="shared"))
    result = run_script("report.py", "--compare", *runs, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    grouped = pd.read_csv(tmp_path / "out" / "comparison_seeds.csv")
    assert grouped["knowledge"].tolist() == ["none", "gel"] and grouped["seeds"].tolist() == [3, 2]
    assert grouped["test_all"].tolist() == pytest.approx([0.6, 0.85])
    assert grouped["test_all_std"].tolist() == pytest.approx([0.1, 0.0707107], rel=1e-5)
    assert grouped["test_B"].tolist() == pytest.approx([0.3, 0.425]) and grouped["train_seconds"][0] == 20
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "| none | `0.0` | `3` | 60.0 ± 10.0" in text and "20 ± 10 s" in text
    assert "| gel | `0.3` | `2` | 85.0" in text and "| gel | `1` | `0.3` | 80.0 |" in text  # options not as percentages
    assert len(pd.read_csv(tmp_path / "out" / "comparison.csv")) == 5  # every run, too
    result = run_script("report.py", "--compare", *runs[3:], "--out", tmp_path / "one")  # one configuration only
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| `2` | 85.0 ± 7.1" in (tmp_path / "one" / "comparison.md").read_text()


def test_compare_tabulates_the_runs(knowledge_runs, tmp_path):
    result = run_script("report.py", "--compare", *knowledge_runs.values(), "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert sorted(table["knowledge"]) == ["gel", "gel_text", "ideal", "text"] and "best_valid" in table
    assert "| knowledge |" in (tmp_path / "comparison.md").read_text()


def test_a_stopped_and_resumed_cascade_run_ends_as_an_uninterrupted_one(sample_dir, kge_dir, tmp_path):
    args = [*TINY_TRAIN, "--n_epoch", "3", "--knowledge", "gel", "--kge_dir", kge_dir, "--data_dir", sample_dir,
            "--triple_head", "cascade", "--kb_constrained", "--knowledge_fusion", "film", "--head_lr", "3e-3"]
    code, _, stderr = Script("main.py", *args, "--results_dir", tmp_path / "reference").finish()
    assert code == 0, stderr[-3000:]
    reference = outcome(only_run(tmp_path / "reference"), sample_dir)
    script = Script("main.py", *args, "--results_dir", tmp_path / "stopped")
    script.wait_until_training(epoch=2)
    script.process.send_signal(signal.SIGTERM)
    assert script.finish(timeout=120)[0] == 128 + signal.SIGTERM
    run_dir = only_run(tmp_path / "stopped")
    resume(run_dir)
    assert_same_as(reference, run_dir, sample_dir)  # the whole history, triple accuracies included


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
                        "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    for lang in ("ko", "en", "bi"):
        for knowledge in ("gel", "ideal"):
            results = tmp_path / f"{knowledge}_{lang}"
            result = run_script("main.py", *TINY_TRAIN, "--n_epoch", "1", "--data_dir", tmp_path / "data",
                                "--lang", lang, "--knowledge", knowledge, "--kge_dir", tmp_path / "kge",
                                "--results_dir", results)
            assert result.returncode == 0, result.stderr[-2000:]
            run_dir = only_run(results)
            result = run_script("inference.py", "--model_path", run_dir, "--split", "valid")
            assert result.returncode == 0, result.stderr[-2000:]
            report = json.loads((run_dir / "eval_valid_all.json").read_text())
            assert report["n"] == len(select_rows(read_data(tmp_path / "data"), "valid", lang=lang)) > 0
            assert ("triple_accuracy" in report) == (knowledge == "gel")
