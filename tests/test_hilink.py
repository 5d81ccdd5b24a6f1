"""HiLINK as published on tiny models: HK-TriNet+'s cascade conditioning, the triple's features, Link-Tuning (the gold
triple's words in training, the predicted one's at test), the frozen pretrained image tower, and a stopped and resumed
hilink run."""
import signal

import pytest
import torch

from conftest import ROOT, TINY_TRAIN, only_run
from test_knowledge import KB, SIZES, tiny_batch, tiny_model, tiny_tokenizer
from test_resume import Script, assert_same_as, outcome, resume
from triples import CascadeHeads, IndependentHeads


def test_the_cascade_conditions_the_relation_on_the_head_logits():
    torch.manual_seed(0)
    z_iq, z_q = torch.randn(4, 24), torch.randn(4, 24)
    for heads, conditioned in ((CascadeHeads(24, SIZES, 0.0), True), (IndependentHeads(24, SIZES), False)):
        before = heads(z_iq, z_q)
        first = heads.h[-1] if conditioned else heads.h  # the head's classifier: other head logits, the same z_q
        with torch.no_grad():
            first.weight.add_(torch.randn_like(first.weight))
        after = heads(z_iq, z_q)
        assert not torch.allclose(before["h"], after["h"])
        assert (not torch.allclose(before["r"], after["r"])) == conditioned
        assert (not torch.allclose(before["t"], after["t"])) == conditioned  # through the relation


def test_the_relation_film_serves_both_chains():
    heads = CascadeHeads(24, SIZES, 0.0)
    calls = []
    heads.r_given.register_forward_hook(lambda *a: calls.append(1))
    heads.from_r.register_forward_hook(lambda *a: calls.append(2))
    heads(torch.randn(2, 24), torch.randn(2, 24))
    assert calls.count(1) == 2 and calls.count(2) == 2  # the forward chain's r and the backward chain's r
    assert heads.h[0].out_features == 48 and heads.h[3].out_features == 72  # dim_h -> 2 dim_h -> 3 dim_h -> classes


def test_the_head_reads_the_image_and_the_relation_and_tail_the_question_alone():
    model = tiny_model("hilink", triple_head="independent").eval()
    ids, mask, image, triples = tiny_batch(True)
    before, after = model(ids, mask, image, triples), model(ids, mask, image.flip(0), triples)
    assert not torch.allclose(before["h"], after["h"])
    assert torch.equal(before["r"], after["r"]) and torch.equal(before["t"], after["t"])


def text_passes(model):
    """The input ids of every text-encoder pass of the model, in order."""
    passes = []
    model.text_encoder.register_forward_hook(lambda module, args, kwargs, output: passes.append(kwargs["input_ids"]),
                                             with_kwargs=True)
    return passes


def test_link_tuning_reads_the_gold_triples_words_in_training_and_the_predicted_ones_at_test():
    model = tiny_model("hilink")
    passes = text_passes(model)
    ids, mask, image, triples = tiny_batch(True)
    triples[3, 0, 1] = 0  # a training row's parts are all in the vocabulary
    out = model.train()(ids, mask, image, triples)
    assert torch.equal(out["read"], triples[:, 0]) and len(passes) == 2
    assert torch.equal(passes[1], model.prompt.link(ids, mask, triples[:, 0])[0])
    with torch.no_grad():
        model.triple_heads.r_given.out.bias[-1] = -100.0  # every row predicts some triple, none the gold one
    out = model.eval()(ids, mask, image, triples)
    assert torch.equal(out["read"], out["triple"]) and not torch.equal(out["triple"], triples[:, 0])
    assert torch.equal(passes[-1], model.prompt.link(ids, mask, out["triple"])[0])
    assert torch.equal(model(ids, mask, image, triples)["answer"], model(ids, mask, image, triples.flip(0))["answer"])
    model.config.teacher_forcing = False  # the predicted triple in training too
    out = model.train()(ids, mask, image, triples)
    assert torch.equal(out["read"], out["triple"])


def test_the_prompt_is_the_question_and_the_triples_words():
    """"question head relation tail." as one text, the question whole; a row without a triple keeps its question."""
    model = tiny_model("hilink")
    model.prompt.max_token = 64
    tokenizer = tiny_tokenizer()
    question = tokenizer(["what is the animal", "what"], padding=True, return_tensors="pt")
    triples = torch.tensor([[1, 2, 2], [-2, 3, -2]])  # (bear, eats, fish); no knowledge
    linked, mask = model.prompt.link(question["input_ids"], question["attention_mask"], triples)
    expected = tokenizer("what is the animal bear eats fish.")["input_ids"]
    assert linked[0, :int(mask[0].sum())].tolist() == expected
    alone = question["input_ids"][1][question["attention_mask"][1].bool()]
    assert torch.equal(linked[1, :int(mask[1].sum())], alone)
    short = model.prompt.max_token = len(tokenizer("what is the animal")["input_ids"]) + 1
    cut = model.prompt.link(question["input_ids"][:1], question["attention_mask"][:1], triples[:1])[0]
    assert cut.shape[1] == short and cut[0, :-1].tolist()[:-1] == expected[:short - 2]  # the words cut first


def test_the_image_tower_is_frozen_where_it_starts_pretrained():
    for pretrained in (True, False):
        model = tiny_model("hilink", pretrained=pretrained).train()
        assert all(p.requires_grad != pretrained for p in model.image_encoder.parameters())
        assert model.image_encoder.training != pretrained  # a frozen tower keeps its BatchNorm statistics
        assert model.image_proj.weight.requires_grad  # the projection that replaces the resnet's fc learns
    own = tiny_model("hilink", pretrained=True, triple_encoder="own").train()
    assert len(own.image_encoders()) == 2 and not any(e.training for e in own.image_encoders())
    assert len(own.text_encoders()) == 2


def test_an_own_triple_encoder_keeps_the_triples_loss_off_the_answers_encoders():
    from triples import triple_loss

    answer_path = ("text_encoder.", "image_encoder.", "image_proj.")
    for encoder in ("shared", "own"):
        model = tiny_model("hilink", triple_encoder=encoder).train()
        ids, mask, image, triples = tiny_batch(True)
        triple_loss(model(ids, mask, image, triples), triples).backward()
        reached = {name.split(".")[0] for name, p in model.named_parameters()
                   if name.startswith(answer_path + ("triple_encoders.",)) and p.grad is not None and p.grad.any()}
        assert reached == ({"text_encoder", "image_encoder", "image_proj"} if encoder == "shared"
                           else {"triple_encoders"})


def test_hilink_kb_snaps_the_triple_to_the_knowledge_base_and_copies_from_it():
    model = tiny_model("hilink_kb", KB).eval()
    out = model(*tiny_batch(True))
    known = {tuple(t) for t in model.kb.ids.tolist()}
    assert all(tuple(t) in known for t in out["triple"].tolist() if t[0] >= 0) and "gate" in out
    assert model.config.uses_kb() and not model.config.reads_kge()  # a KB triple's tail is the KB's


def test_a_stopped_and_resumed_hilink_run_ends_as_an_uninterrupted_one(sample_dir, tmp_path):
    args = [*TINY_TRAIN, "--n_epoch", "3", "--model", "hilink_kb", "--data_dir", sample_dir,
            "--config", ROOT / "configs" / "hilink_kb_noise.yaml"]
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


@pytest.mark.parametrize("name", ["hilink", "hilink_kb"])
def test_hilinks_recipe_is_its_papers_under_preset_bokvqa(name):
    import main

    args = main.parse_args(["--preset", "bokvqa", "--model", name])
    assert (args.batch_size, args.lr, args.n_epoch, args.schedule, args.loss) == (100, 5e-5, 50, "constant", "ce")
    assert main.parse_args(["--preset", "bokvqa", "--model", name, "--batch_size", "8"]).batch_size == 8


@pytest.mark.parametrize("fusion", ["concat", "mul"])
def test_the_image_meets_the_text_by_hilinks_concatenation_or_the_baselines_product(fusion):
    model = tiny_model("hilink", fusion=fusion).eval()
    width = model.text_encoder.config.hidden_size
    assert model.question_image.in_features == model.prompt_image.in_features == width * (2 if fusion == "concat"
                                                                                           else 1)
    seen = []
    model.question_image.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    ids, mask, image, triples = tiny_batch(True)
    model(ids, mask, image, triples)
    image_f, q_f = model.encode_image(image)[1], model.encode_text(ids, mask)[0]
    expected = torch.cat([image_f, q_f], -1) if fusion == "concat" else image_f * q_f
    assert torch.allclose(seen[0], expected, atol=1e-6)
