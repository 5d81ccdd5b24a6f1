"""Model forward and backward in both fusion modes, the saved Transformer layer, and the ablations."""
import pytest
import torch
from transformers import AutoModel

from encoders import build_image_encoder, small_text_config
from model import ModelConfig, VQAModel

BATCH, TOKENS, IMG, ANSWERS = 4, 7, 64, 11


def tiny_model(network=VQAModel, config=None, **kwargs):
    """A tiny network of the given family (its config and further arguments), seeded."""
    torch.manual_seed(0)
    text = AutoModel.from_config(small_text_config(vocab_size=50, max_token=16, hidden=32, layers=1, heads=2))
    image = build_image_encoder("resnet10t", pretrained=False, channels=[8, 16, 32, 64], stem_width=8)
    return network(text, image, ANSWERS, IMG, config, dim_h=24, n_heads=2, **kwargs)


def tiny_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (BATCH, TOKENS), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    ids[0, 4:], mask[0, 4:] = 1, 0  # one padded question
    return ids, mask, torch.randn(BATCH, 3, IMG, IMG, generator=g)


@pytest.mark.parametrize("use_transformer_layer", [False, True])
@pytest.mark.parametrize("text_pool", ["cls", "first", "mean"])
def test_forward_backward(use_transformer_layer, text_pool):
    model = tiny_model(use_transformer_layer=use_transformer_layer, text_pool=text_pool)
    logits = model(*tiny_batch())["answer"]
    assert logits.shape == (BATCH, ANSWERS)
    logits.logsumexp(-1).mean().backward()
    # every parameter takes part (DistributedDataParallel needs that); residual branches start at zero (timm's
    # zero-initialised last BatchNorm), so only some gradients are nonzero at the first step
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    for name in ["text_encoder.embeddings.word_embeddings.weight", "image_encoder.conv1.0.weight", "image_proj.weight",
                 "classifier.weight"] + (["fusion_encoder.layers.0.linear1.weight"] if use_transformer_layer else []):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_transformer_layer_is_a_saved_module_that_changes_the_output():
    model = tiny_model(use_transformer_layer=True).eval()
    assert any(k.startswith("fusion_encoder.") for k in model.state_dict())
    assert sum(p.numel() for p in model.fusion_encoder.parameters()) > 0
    batch = tiny_batch()
    before = model(*batch)["answer"]
    with torch.no_grad():
        for p in model.fusion_encoder.parameters():
            p.add_(0.5)
    assert not torch.allclose(before, model(*batch)["answer"])
    base = tiny_model(use_transformer_layer=False)
    assert not any(k.startswith("fusion_encoder.") for k in base.state_dict())


def test_padding_does_not_change_the_answer():
    model = tiny_model(use_transformer_layer=True, text_pool="mean").eval()
    ids, mask, image = tiny_batch()
    short = model(ids[:1, :4], mask[:1, :4], image[:1])["answer"]
    padded = model(ids[:1], mask[:1], image[:1])["answer"]
    assert torch.allclose(short, padded, atol=1e-5)


def test_ablations_remove_one_input():
    ids, mask, image = tiny_batch()

    def answers(model, *inputs):
        return model(*inputs)["answer"]

    image_ablated = tiny_model(config=ModelConfig(ablate="image")).eval()
    assert torch.allclose(answers(image_ablated, ids, mask, image),
                          answers(image_ablated, ids, mask, torch.randn_like(image)))
    question_ablated = tiny_model(config=ModelConfig(ablate="question")).eval()
    other_ids = ids.roll(1, dims=1)
    assert torch.allclose(answers(question_ablated, ids, mask, image),
                          answers(question_ablated, other_ids, mask, image))
    full = tiny_model().eval()
    assert not torch.allclose(answers(full, ids, mask, image), answers(full, ids, mask, torch.randn_like(image)))
    assert not torch.allclose(answers(full, ids, mask, image), answers(full, other_ids, mask, image))


@pytest.mark.parametrize("use_transformer_layer", [False, True])
def test_building_the_model_leaves_every_buffer_unchanged(use_transformer_layer):
    """BatchNorm's running statistics (pretrained ones, in real use) are the same before and after building."""
    torch.manual_seed(0)
    text = AutoModel.from_config(small_text_config(vocab_size=50, max_token=16, hidden=32, layers=1, heads=2))
    image = build_image_encoder("resnet10t", pretrained=False, channels=[8, 16, 32, 64], stem_width=8)
    with torch.no_grad():  # statistics as a pretrained encoder has them, not the initial zeros and ones
        for _name, buffer in image.named_buffers():
            buffer.add_(torch.rand_like(buffer.float()).to(buffer.dtype) + 1)
    before = {name: buffer.clone() for name, buffer in image.named_buffers()}
    VQAModel(text, image, ANSWERS, IMG, dim_h=24, n_heads=2, use_transformer_layer=use_transformer_layer)
    for name, buffer in image.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert image.training  # the mode it was built in
