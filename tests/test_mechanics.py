"""Pieces of the training loop one at a time: the optimizer's state across a checkpoint, devices under torchrun,
the frozen text encoder, precision, weight decay groups and the atomic writer."""
import os
import threading

import pytest
import torch
import torch.nn as nn

import checkpoints
import main
import tracking
import train
import util
from conftest import TINY_TRAIN
from focal import build_loss
from encoders import train_tokenizer
from models import run_config


def test_resumed_fused_adamw_step_equals_the_uninterrupted_one(tmp_path):
    """The AdamW moments of a channels_last weight come back with its layout; fused AdamW pairs them element by
    element with the weight in memory, so a contiguous moment would silently update the wrong weights."""
    def model_and_optimizer():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)).to(memory_format=torch.channels_last)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)

    inputs = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)).to(memory_format=torch.channels_last)
              for i in range(4)]

    def step(model, optimizer, x):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()

    model, optimizer = model_and_optimizer()
    for x in inputs[:3]:
        step(model, optimizer, x)
    path = str(tmp_path / "last.safetensors")
    ranks = [checkpoints.rank_state({"loss_sum": 0.0, "correct": 0, "seen": 0}, torch.device("cpu"))]
    checkpoints.save_checkpoint(path, model, optimizer, {"history": []}, {}, [], ranks)
    step(model, optimizer, inputs[3])  # the uninterrupted run

    resumed, resumed_optimizer = model_and_optimizer()
    _, _, optimizer_state = checkpoints.load_checkpoint(path, resumed, {}, [])
    checkpoints.load_optimizer_state(resumed_optimizer, optimizer_state, path)
    for param, values in resumed_optimizer.state.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert values[name].stride() == param.stride(), name
    step(resumed, resumed_optimizer, inputs[3])
    for got, want in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name, under_torchrun, expected", [
    ("cuda", True, "cuda:1"), ("cuda:0", True, "cuda:1"), ("cuda:3", True, "cuda:1"), ("cpu", True, "cpu"),
    ("cuda", False, "cuda:0"), ("cuda:1", False, "cuda:1"), ("cpu", False, "cpu")])
def test_every_cuda_choice_under_torchrun_is_the_local_gpu(monkeypatch, name, under_torchrun, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # a machine with four GPUs
    for name_, value in [("WORLD_SIZE", "4"), ("RANK", "5"), ("LOCAL_RANK", "1")]:
        if under_torchrun:
            monkeypatch.setenv(name_, value)
        else:
            monkeypatch.delenv(name_, raising=False)
    assert util.pick_device(name) == torch.device(expected)


def test_precision_is_bf16_only_where_the_gpu_supports_it(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert util.pick_precision(cpu, "auto") == "fp32" and util.pick_precision(cpu, "bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert util.pick_precision(gpu, "auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    assert util.pick_precision(gpu, "auto") == "fp32" and util.pick_precision(gpu, "fp32") == "fp32"
    with pytest.raises(util.UsageError, match="V100 does not support bf16"):
        util.pick_precision(gpu, "bf16")


@pytest.fixture
def tiny_setup(sample_dir):
    args = main.parse_args(TINY_TRAIN + ["--data_dir", str(sample_dir), "--n_epoch", "2", "--freeze_text_epochs", "1",
                                         "--use_transformer_layer"])
    rt = train.setup(args)
    data = train.load_training_data(args, rt)
    tokenizer = train_tokenizer(list(data.train["question"]))
    model = train.initial_model(run_config(args, args.model_config, len(data.answers)), tokenizer)
    return args, rt, data, tokenizer, model


def test_frozen_text_encoder_takes_no_gradient_and_no_dropout(tiny_setup, tmp_path):
    args, rt, data, tokenizer, model = tiny_setup
    train_loader, _ = train.make_loaders(args, rt, data, tokenizer, model)
    optimizer = train.build_optimizer(model, args, rt.device)
    loss_fn = build_loss(args.loss, gamma=args.gamma)
    text_before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    image_before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    seen = []  # per forward: (text encoder in training mode, its output carries a graph)
    model.text_encoder.register_forward_hook(
        lambda module, inputs, output: seen.append((module.training, output.last_hidden_state.requires_grad)))
    state = train.restore(None, optimizer, str(tmp_path), rt, train.epoch_steps(train_loader))
    wrapped = train.wrap(model, rt, False, text_frozen=True)
    train.train_one_epoch(wrapped, model, train_loader, optimizer, loss_fn, state, 1, args, rt, train.StopSignals(rt),
                          text_frozen=True, tracker=tracking.NoTracker())
    assert len(seen) == train.epoch_steps(train_loader)
    assert seen == [(False, False)] * len(seen)  # eval mode (no dropout) and no backward graph
    assert all(p.grad is None for p in model.text_encoder.parameters())
    for name, value in model.text_encoder.state_dict().items():
        assert torch.equal(value, text_before[name]), name  # bit-identical
    assert not all(torch.equal(v, image_before[k]) for k, v in model.image_encoder.state_dict().items())

    seen.clear()  # unfrozen: it trains, with dropout, and its weights move
    state.update(batch=0, partial=train.zero_sums())  # as end_epoch does
    wrapped = train.wrap(model, rt, False, text_frozen=False)
    train.train_one_epoch(wrapped, model, train_loader, optimizer, loss_fn, state, 2, args, rt, train.StopSignals(rt),
                          text_frozen=False, tracker=tracking.NoTracker())
    assert seen[0] == (True, True)
    assert not torch.equal(model.text_encoder.embeddings.word_embeddings.weight,
                           text_before["embeddings.word_embeddings.weight"])


def test_no_weight_decay_for_biases_norms_embeddings_and_positions(tiny_setup):
    args, rt, _, _, model = tiny_setup
    optimizer = train.build_optimizer(model, args, rt.device)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    not_decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    assert "image_pos" in not_decayed and "text_encoder.embeddings.position_embeddings.weight" in embeddings
    assert embeddings <= not_decayed
    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d))}
    assert norms <= not_decayed and not any(n.endswith(".bias") for n in decayed)
    assert "classifier.weight" in decayed and "image_encoder.conv1.0.weight" in decayed
    assert all(g["weight_decay"] == args.weight_decay for g in optimizer.param_groups if g["weight_decay"] > 0)


def test_atomic_writes_use_unique_temporary_files_and_leave_none_behind(tmp_path):
    path = str(tmp_path / "split.csv")
    with util.atomic_file(path) as first, util.atomic_file(path) as second:
        assert first != second  # two processes writing one file never share a temporary file
        for tmp, text in [(first, "a"), (second, "b")]:
            with open(tmp, "w") as f:
                f.write(text)
    assert open(path).read() == "a"  # whole files only: the one renamed last
    with pytest.raises(RuntimeError), util.atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("interrupted")
    assert open(path).read() == "a" and os.listdir(tmp_path) == ["split.csv"]


def test_ranks_probing_one_folder_at_once_all_succeed(tmp_path):
    """Every torchrun rank checks --results_dir and the data folder at the same moment: a probe never removes a file
    it did not make (one rank's removal used to take the other's probe, which then failed or chose another folder)."""
    (tmp_path / ".write_test").write_text("another rank's probe, in flight")
    util.try_writing_in(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".write_test"]
    failures = []

    def probe_often():
        for _ in range(200):
            try:
                util.try_writing_in(tmp_path / "shared")
            except OSError as e:
                failures.append(e)

    threads = [threading.Thread(target=probe_often) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and os.listdir(tmp_path / "shared") == []
