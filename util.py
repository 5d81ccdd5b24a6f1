"""Shared helpers: seeding, devices and torch.distributed, run directories, checkpoints (safetensors + JSON)."""
import glob
import json
import os
import random
import re
import time

import numpy as np
import torch
import torch.distributed as dist

CONFIG_FILE = "config.json"
ANSWERS_FILE = "answers.json"
TOKENIZER_DIR = "tokenizer"
TEXT_CONFIG_DIR = "text_encoder"
WEIGHTS_GLOB = "infer_model_*.safetensors"


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def init_distributed(device):
    """Initialises torch.distributed under torchrun (nccl on GPUs, gloo on CPUs); returns (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


def broadcast_object(obj, src=0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def make_run_dir(results_dir, train_data):
    """results/<train_data>_<MMDD_HHMM>, with a suffix rather than overwrite an existing run."""
    base = os.path.join(results_dir, f"{train_data}_{time.strftime('%m%d_%H%M')}")
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}_{n}"


def write_json(path, obj):
    """Atomic: a crash mid-write leaves any previous file intact."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
    os.replace(tmp, path)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_weights(model, path):
    """Model weights as safetensors, written to a temporary file and renamed into place."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path + ".tmp"
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)


def load_weights(model, path):
    """Loads safetensors weights into model; any difference in names or shapes is a clear error."""
    from safetensors.torch import load_file

    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: only .safetensors weights are loaded (pickled files can run code).")
    state = load_file(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in state and state[k].shape != v.shape]
    if missing or unexpected or reshaped:
        problems = [f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}" for label, names in
                    [("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", reshaped)] if names]
        raise ValueError(f"{path} does not match the model built from its config.json: " + "; ".join(problems)
                         + ". Use the config.json that was saved with these weights.")
    model.load_state_dict(state)


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
    if not model_path.endswith(".safetensors"):
        raise ValueError(f"--model_path {model_path}: only .safetensors weights written by main.py are loaded; "
                         f"pickled .pt/.bin files are refused because unpickling can run arbitrary code.")
    return os.path.dirname(os.path.abspath(model_path)), model_path
