"""Shared helpers: seeding, devices and torch.distributed, run directories, checkpoints (safetensors + JSON)."""
import argparse
import contextlib
import glob
import hashlib
import json
import os
import random
import re
import tempfile
import time
import uuid

import numpy as np
import torch
import torch.distributed as dist

CONFIG_FILE = "config.json"
ANSWERS_FILE = "answers.json"
TOKENIZER_DIR = "tokenizer"
TEXT_CONFIG_DIR = "text_encoder"
WEIGHTS_GLOB = "infer_model_*.safetensors"
LAST_CHECKPOINT = "last.safetensors"
# The options of main.py that a run saves in its config.json and --resume restores (with the preset-only
# image_model_kwargs and scratch_text).
RUN_OPTIONS = ["train_data", "data_dir", "lang", "text_model", "image_model", "pretrained", "img_size", "max_token",
               "dim_h", "dropout", "use_transformer_layer", "n_transformer_layers", "n_heads", "ablate", "text_pool",
               "loss", "gamma", "label_smoothing", "n_epoch", "lr", "batch_size", "weight_decay", "warmup",
               "freeze_text_epochs", "clip_grad", "seed", "preset", "skip_bad", "num_workers", "precision",
               "knowledge", "kge_dir", "knowledge_fusion", "triple_head", "triple_encoder", "kb_constrained",
               "kb_score", "triple_noise", "knowledge_dropout", "knowledge_free_loss", "knowledge_head", "kb",
               "head_lr", "head_logit_adjustment", "head_from_answers", "answer_from_kb", "answer_relation", "schedule",
               "report_to", "image_model_kwargs", "scratch_text"]
# options that runs of earlier versions lack, and the value they had then
LATER_OPTIONS = {"precision": "auto", "knowledge": "none", "kge_dir": None, "knowledge_fusion": "mul",
                 "triple_head": "independent", "triple_encoder": "shared", "kb_constrained": False, "kb_score": "pair",
                 "triple_noise": 0.0, "knowledge_dropout": 0.0, "knowledge_free_loss": False,
                 "knowledge_head": "shared", "kb": None, "head_lr": None, "head_logit_adjustment": False,
                 "head_from_answers": False, "answer_from_kb": False, "answer_relation": False, "schedule": "cosine",
                 "report_to": "none"}


def run_option(config, key):
    """A run's option from its config.json; one that a run of an earlier version lacks had the value it had then."""
    return config.get(key, LATER_OPTIONS.get(key))


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class UsageError(Exception):
    """An option that cannot work on this machine; the message names it and what to use instead."""


def under_torchrun():
    return "LOCAL_RANK" in os.environ and "RANK" in os.environ


def local_rank():
    """This process's GPU index on its node under torchrun; None outside torchrun."""
    return int(os.environ["LOCAL_RANK"]) if under_torchrun() else None


def pick_device(name="auto"):
    """auto: CUDA if available, else the CPU. Under torchrun every CUDA choice (auto, cuda, cuda:N) is this rank's
    local GPU, cuda:LOCAL_RANK: one process per GPU is what torchrun starts."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        rank = local_rank()
        return torch.device("cuda", rank if rank is not None else (device.index or 0))
    return device


def pick_precision(device, requested="auto"):
    """The one place precision is decided, for training and every inference script: auto is bf16 autocast on a GPU
    that supports bf16, else fp32; fp16 is not offered (it would need a grad scaler)."""
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if requested == "bf16" and not bf16_ok:
        raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bf16; use "
                         f"--precision fp32 (or auto).")
    if requested == "auto":
        return "bf16" if device.type == "cuda" and bf16_ok else "fp32"
    return requested


def init_distributed(device):
    """Initialises torch.distributed under torchrun (nccl on GPUs, gloo on CPUs), also for a single process, so that
    `torchrun --nproc_per_node 1` runs the same distributed code as more; returns (rank, world_size)."""
    if not under_torchrun():
        return 0, 1
    world_size = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


def distributed():
    return dist.is_available() and dist.is_initialized()


def barrier():
    if distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (making shared files such as split.csv and the image cache); the other ranks
    run it after, reading what rank 0 wrote."""
    if distributed() and dist.get_rank() != 0:
        dist.barrier()
    yield
    if distributed() and dist.get_rank() == 0:
        dist.barrier()


def broadcast_object(obj, src=0):
    if not distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_object(obj):
    """[obj of every rank] on rank 0, None on the others; [obj] without torch.distributed."""
    if not distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum(values, device):
    """Element-wise sums of a list of numbers over all ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(tensor)
    return tensor.tolist()


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
        except OSError as e:
            raise CheckpointError(f"cannot make the run directory {path}: {e.strerror}. Give a --results_dir you can "
                                  f"write to.") from None


class CheckpointError(Exception):
    """A run file (checkpoint, JSON, figure) that cannot be written, or a checkpoint that cannot be read; the message
    names the file and the fix."""


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path beside path, unique to this call (several processes may write the same file at
    once); on success the file is synced and renamed into place, on any failure removed. A crash, a full disk or a
    read-only directory mid-write leaves any previous file intact. The one way every file here is written."""
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write {path}: {e.strerror or e}; nothing was changed (an earlier version "
                                  f"of the file, if any, is intact). Free disk space or make "
                                  f"{os.path.dirname(path) or '.'} writable.") from None
        raise


def atomic_write(path, data):
    """Writes bytes to path through atomic_file."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def json_bytes(obj):
    return json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8")


def csv_bytes(df):
    return df.to_csv(index=False).encode("utf-8")


def write_json(path, obj):
    atomic_write(path, json_bytes(obj))


def write_csv(path, df):
    atomic_write(path, csv_bytes(df))


def read_json(path, required=()):
    """A run's JSON file; a missing or broken file, or one without a required key, is a CheckpointError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}).") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it from a copy of the run.") from None
    missing = [k for k in required if not isinstance(value, dict) or k not in value]
    if missing:
        raise CheckpointError(f"{path} lacks the key(s) {', '.join(missing)}; it was not written by main.py, or was "
                              f"edited: restore it from a copy of the run.")
    return value


WRITTEN_FILE = ".vqa_nia_written.json"  # in a folder a user may own: the files this repo wrote there


class UserFileError(CheckpointError):
    """An output that would replace a file this repo did not write (a user's own, or one edited since)."""


def fingerprint(path):
    """What a file holds, for telling the files this repo wrote from a user's: a link's target, else the size,
    modification time and SHA-256 of the content (a copy keeps the content, an edit changes it)."""
    st = os.lstat(path)
    if os.path.islink(path):
        return {"link": os.readlink(path)}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


class OutputFolder:
    """A folder a user may own (a data folder, an --out) that a script writes into. A file there that this repo did
    not write, or one edited since, is never replaced: check() names it before any work is done, unless force.
    Every file written is recorded with its fingerprint in the folder's WRITTEN_FILE. force=None: the script has no
    --force option."""

    def __init__(self, folder, force=None, option="--out"):
        existing = os.path.abspath(folder)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UserFileError(f"{option} {folder}: {existing} is a file, not a folder; give a folder (it is made if "
                                f"missing).")
        self.folder, self.force, self.option = folder, force, option
        path = os.path.join(folder, WRITTEN_FILE)
        self.written = read_json(path) if os.path.isfile(path) else {}

    def ours(self, name):
        """Whether folder/name is missing or is a file this repo wrote there, unchanged since."""
        path = os.path.join(self.folder, name)
        if not os.path.lexists(path):
            return True
        saved = self.written.get(name)
        if saved is None or os.path.isdir(path):
            return False
        if "link" in saved:
            return os.path.islink(path) and os.readlink(path) == saved["link"]
        st = os.lstat(path)
        if os.path.islink(path) or st.st_size != saved["size"]:
            return False
        return st.st_mtime_ns == saved["mtime_ns"] or fingerprint(path)["sha256"] == saved["sha256"]

    def check(self, names):
        """Raises UserFileError naming the files among names that exist and are not this repo's (unless force),
        and any that are folders."""
        foreign = [os.path.join(self.folder, n) for n in names if not self.ours(n)]
        folders = [p for p in foreign if os.path.isdir(p)]
        if folders:
            raise UserFileError(f"{len(folders)} path(s) this would write are folders: {', '.join(folders[:5])}. "
                                f"Move them away or give another {self.option}.")
        if foreign and not self.force:
            way = "" if self.force is None else ", or add --force to replace them"
            raise UserFileError(f"{len(foreign)} file(s) this would write exist and were not written by this repo (or "
                                f"were edited since), and it never replaces a user's file: {', '.join(foreign[:5])}"
                                f"{' ...' if len(foreign) > 5 else ''}. Move them away or give another "
                                f"{self.option}{way}.")
        return self

    def write(self, name, data):
        """Writes bytes to folder/name (atomically) and records it."""
        self.check([name])
        path = os.path.join(self.folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, data)
        self.record([name])

    def record(self, names):
        """Records files this repo has just written into the folder."""
        for name in names:
            self.written[name] = fingerprint(os.path.join(self.folder, name))
        write_json(os.path.join(self.folder, WRITTEN_FILE), self.written)


def try_writing_in(directory):
    """Makes directory if missing and creates and deletes a file in it; raises OSError where that fails. Tried,
    since os.access says yes to root even on a read-only copy; the file has a name of its own, since ranks try at
    once."""
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test."):
        pass


def ensure_writable_dir(path, option):
    """Makes path if missing and checks that files can be created in it, before any work starts."""
    try:
        try_writing_in(path)
    except OSError as e:
        reason = e.strerror or "files cannot be created in it"
        raise CheckpointError(f"{option} {path} cannot be used: {reason}. Give a folder you can write to.") from None


def at_least(minimum, kind=int):
    """argparse type: a number of kind that is at least minimum."""
    def parse(text):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {text})")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def in_range(low, high, high_included=False):
    """argparse type: a float in [low, high) (or [low, high])."""
    def parse(text):
        value = float(text)
        if not (low <= value < high or high_included and value == high):
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}{']' if high_included else ')'} (got {text})")
        return value
    parse.__name__ = "float"
    return parse


def positive(kind=float):
    """argparse type: a number above zero."""
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0 (got {text})")
        return value
    parse.__name__ = kind.__name__
    return parse


# What the weights depend on: saved inside every weights file, so that a file and a config.json / answers.json that
# do not belong together are caught by name rather than as a shape error or, worse, silently wrong answers.
MODEL_KEYS = ["num_answers", "image_arch", "image_model_kwargs", "img_size", "dim_h", "use_transformer_layer",
              "n_transformer_layers", "n_heads", "text_pool", "ablate", "knowledge", "knowledge_sizes", "kge_widths",
              "knowledge_fusion", "triple_head", "triple_encoder", "answer_from_kb"]


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
