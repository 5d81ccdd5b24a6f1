"""Checkpoints and weights: safetensors plus JSON metadata, written atomically (util.atomic_write); a weights file
knows the config keys and answers it belongs to; a checkpoint holds everything to resume exactly, every rank's RNG
states included. Pickles are read only as state dicts of tensors (torch.load(weights_only=True)), never run."""
import glob
import json
import os
import random
import re

import numpy as np
import torch

from util import CheckpointError, atomic_write

WEIGHTS_GLOB = "infer_model_*.safetensors"
LAST_CHECKPOINT = "last.safetensors"


# What the weights depend on: saved inside every weights file, so that a file and a config.json / answers.json that
# do not belong together are caught by name rather than as a shape error or, worse, silently wrong answers.
# (Weights of earlier versions hold other keys too, such as "knowledge": only the keys both sides hold are compared.)
MODEL_KEYS = ["num_answers", "image_arch", "image_model_kwargs", "img_size", "dim_h", "use_transformer_layer",
              "n_transformer_layers", "n_heads", "text_pool", "model", "knowledge_sizes", "kge_widths"]


def model_metadata(config, answers):
    return {"format": "pt", "model_config": json.dumps({k: config.get(k) for k in MODEL_KEYS}, ensure_ascii=False),
            "answers": json.dumps(answers, ensure_ascii=False)}


def check_metadata(metadata, config, answers, path):
    """Raises CheckpointError naming every config key and answer that differ between a weights file and a run."""
    problems = []
    if "model_config" in metadata and config is not None:
        saved = json.loads(metadata["model_config"])
        problems += [f"{k} is {saved[k]!r} in the weights but {config.get(k)!r} in config.json"
                     for k in MODEL_KEYS if k in saved and saved[k] != config.get(k)]
    if "answers" in metadata and answers is not None:
        saved = json.loads(metadata["answers"])
        if saved != answers:
            problems.append("the answer vocabulary differs: " + answers_difference(saved, "the weights", answers,
                                                                                   "answers.json"))
    if problems:
        raise CheckpointError(f"{path} does not belong to this run: " + "; ".join(problems) +
                              ". Use the config.json and answers.json saved with these weights.")


def answers_difference(old, old_name, new, new_name):
    """How two answer vocabularies differ, for an error message."""
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    return (f"{len(old)} answers in {old_name}, {len(new)} in {new_name}, first difference at index {first}"
            + (f", only in {new_name}: {added[:5]}" if added else "")
            + (f", only in {old_name}: {removed[:5]}" if removed else ""))


def _cpu_state(model):
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(model, path, config=None, answers=None):
    """Model weights as safetensors (with the config keys and answers they belong to), written atomically."""
    from safetensors.torch import save

    metadata = model_metadata(config, answers) if config is not None else {"format": "pt"}
    atomic_write(path, save(_cpu_state(model), metadata=metadata))


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file; parsing it never runs code."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for a file that is not safetensors
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated or not "
                              f"written by main.py.") from None


def read_metadata(path):
    """The training state saved in a checkpoint's metadata, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return json.loads((f.metadata() or {}).get("state", "{}"))
    except Exception as e:  # safetensors raises its own error type for a file that is not safetensors
        raise CheckpointError(f"{path} is not a readable checkpoint ({e}); it may be truncated.") from None


def read_pickled_weights(path):
    """A .pt/.pth/.bin state dict through torch.load(weights_only=True), which refuses any pickle that holds more
    than tensors and plain containers instead of running it."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"refused {path}: it is a pickle that holds more than weights, or is damaged, so "
                              f"it was not loaded and nothing in it was run ({reason}). Ask for the weights as "
                              f".safetensors.") from None
    for key in ("state_dict", "model"):  # common wrappers of a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{path} holds no state dict of tensors; save the weights with "
                              f"torch.save(model.state_dict(), path) or as .safetensors.")
    return state


def state_mismatch(model, state):
    """How a state dict differs from the model's in names and shapes ('' when it fits)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in state and state[k].shape != v.shape]
    return "; ".join(f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}" for label, names in
                     [("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", reshaped)] if names)


def load_state(model, state, path):
    """Loads a state dict into model; any difference in names or shapes is a clear error."""
    problems = state_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{path} does not match the model built from its config.json: {problems}. Use the "
                              f"config.json that was saved with these weights.")
    model.load_state_dict(state)


def load_weights(model, path, config=None, answers=None):
    """Loads weights from .safetensors, or from a .pt/.pth/.bin state dict read with weights_only=True."""
    if path.endswith(".safetensors"):
        state, metadata = read_safetensors(path)
        foreign = "model_config" not in metadata and state_mismatch(model, state)  # main.py's weights all have it
        if foreign:
            raise CheckpointError(f"{path} is not a weights file of this repo: it lacks the model_config that main.py "
                                  f"saves in every weights file, and its tensors are not this model's ({foreign}). "
                                  f"Give the .safetensors weights a run of main.py wrote.")
        check_metadata(metadata, config, answers, path)
    elif path.endswith(PICKLE_SUFFIXES):
        state = read_pickled_weights(path)
    else:
        raise CheckpointError(f"{path}: weights must be .safetensors (or a .pt/.pth/.bin state dict).")
    load_state(model, state, path)


PICKLE_SUFFIXES = (".pt", ".pth", ".bin")


def rank_state(partial, device):
    """What differs between torchrun processes and must come back to each on --resume: its partial epoch sums and
    its random number generators (dropout, and anything else drawn)."""
    numpy_rng = np.random.get_state()
    state = {"partial": partial, "python_rng": random.getstate(),
             "numpy_rng": [numpy_rng[0], numpy_rng[1].tolist(), *numpy_rng[2:]], "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rank_state(state, device):
    """Sets this process's RNGs from rank_state's output; returns its partial epoch sums."""
    python_rng = state["python_rng"]
    random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))
    numpy_rng = state["numpy_rng"]
    np.random.set_state((numpy_rng[0], np.array(numpy_rng[1], dtype=np.uint32), *numpy_rng[2:]))
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return state["partial"]


def save_checkpoint(path, model, optimizer, state, config, answers, rank_states):
    """Everything needed to continue training, in one safetensors file written atomically: model and optimizer
    tensors, and (as JSON metadata) the loop state, optimizer settings and config it belongs to, with every rank's
    rank_state (RNG states as tensors)."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v for k, v in _cpu_state(model).items()}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():  # stored contiguous; load_optimizer_state restores each parameter's layout
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    ranks = []
    for rank, rank_state_ in enumerate(rank_states):
        ranks.append({k: v for k, v in rank_state_.items() if not torch.is_tensor(v)})
        tensors.update({f"rank.{rank}.{k}": v for k, v in rank_state_.items() if torch.is_tensor(v)})
    state = {**state, "optimizer_param_groups": optimizer_state["param_groups"], "ranks": ranks}
    metadata = {**model_metadata(config, answers), "state": json.dumps(state)}
    atomic_write(path, save(tensors, metadata=metadata))


def load_checkpoint(path, model, config, answers, rank=0):
    """Restores what save_checkpoint wrote into model; returns (loop state, this rank's rank_state, optimizer state
    dict) for restore_rank_state and load_optimizer_state."""
    tensors, metadata = read_safetensors(path)
    if "state" not in metadata:
        raise CheckpointError(f"{path} holds no training state; it is not a checkpoint written by main.py.")
    check_metadata(metadata, config, answers, path)
    state = json.loads(metadata["state"])
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    optimizer_state = {"state": {}, "param_groups": state.pop("optimizer_param_groups")}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    if "ranks" not in state:
        raise CheckpointError(f"{path} was written by an earlier version of main.py, whose checkpoints kept one "
                              f"process's state only; it cannot be resumed exactly. Start the run again.")
    ranks = state.pop("ranks")
    if rank >= len(ranks):
        raise CheckpointError(f"{path} holds the state of {len(ranks)} process(es), not of rank {rank}.")
    prefix = f"rank.{rank}."
    own = {**ranks[rank], **{k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}}
    return state, own, optimizer_state


def load_optimizer_state(optimizer, optimizer_state, path):
    for saved, current in zip(optimizer_state["param_groups"], optimizer.param_groups):
        for key in ("fused", "foreach", "capturable"):  # how to step is this machine's choice, not the checkpoint's
            if key in current:
                saved[key] = current[key]
    try:
        optimizer.load_state_dict(optimizer_state)
    except ValueError as e:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model ({e}).") from None
    # Each moment takes its parameter's memory layout (strides) back: fused AdamW walks parameter, gradient and
    # moments as flat memory, so a contiguous moment of a channels_last weight would be paired element by element
    # with the wrong weights (silently on CPUs; CUDA's kernel refuses mismatched strides).
    for param, values in optimizer.state.items():
        for name, value in values.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                values[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def find_run(model_path=None, results_dir="results"):
    """A run directory and its weights file from a run directory, a weights file, or the newest run."""
    if model_path is None:
        weights = glob.glob(os.path.join(results_dir, "*", WEIGHTS_GLOB))
        if not weights:
            raise FileNotFoundError(f"no trained run under {results_dir}/: train one with `python main.py` "
                                    f"(or `make demo`), or pass --model_path.")
        model_path = os.path.dirname(max(weights, key=os.path.getmtime))  # the run trained last
    if os.path.isdir(model_path):
        weights = glob.glob(os.path.join(model_path, WEIGHTS_GLOB))
        if not weights:
            raise FileNotFoundError(f"{model_path} holds no {WEIGHTS_GLOB}: is it a run directory of main.py?")
        return model_path, max(weights, key=lambda w: float(re.findall(r"infer_model_([\d.]+)\.safetensors", w)[0]))
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"--model_path {model_path} does not exist.")
    if not model_path.endswith((".safetensors",) + PICKLE_SUFFIXES):
        raise ValueError(f"--model_path {model_path}: give a run directory, its .safetensors weights, or a "
                         f".pt/.pth/.bin state dict in a run directory.")
    return os.path.dirname(os.path.abspath(model_path)), model_path
