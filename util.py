"""Shared helpers: seeding, devices and torch.distributed, run directories, atomic writes, JSON, a user's output
folders, and argparse types. Checkpoints and weights are in checkpoints.py."""
import argparse
import contextlib
import hashlib
import json
import math
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
# The options of main.py that a run saves in its config.json and --resume restores (with the preset-only
# image_model_kwargs and scratch_text).
# The model (models.py) is saved beside them, as "model".
RUN_OPTIONS = ["train_data", "data_dir", "lang", "text_model", "image_model", "pretrained", "img_size", "max_token",
               "dim_h", "dropout", "use_transformer_layer", "n_transformer_layers", "n_heads", "text_pool", "loss",
               "gamma", "label_smoothing", "n_epoch", "lr", "batch_size", "weight_decay", "warmup",
               "freeze_text_epochs", "clip_grad", "seed", "preset", "skip_bad", "num_workers", "precision", "config",
               "valid_fold",
               "kge_dir", "kb", "schedule", "report_to", "image_model_kwargs", "scratch_text"]
# options that runs of earlier versions lack, and the value they had then
LATER_OPTIONS = {"precision": "auto", "config": None, "kge_dir": None, "kb": None, "schedule": "cosine",
                 "report_to": "none", "valid_fold": None}


def run_option(config, key):
    """A run's option from its config.json; one that a run of an earlier version lacks had the value it had then."""
    return config.get(key, LATER_OPTIONS.get(key))


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class DataError(Exception):
    """Bad input data; the message names the file, rows and columns and says how to fix it."""


class UsageError(Exception):
    """An option that cannot work on this machine; the message names it and what to use instead."""


def under_torchrun():
    return "LOCAL_RANK" in os.environ and "RANK" in os.environ


def local_rank():
    """This process's GPU index on its node under torchrun; None outside torchrun."""
    return int(os.environ["LOCAL_RANK"]) if under_torchrun() else None


def pick_device(name="auto"):
    """auto: CUDA if available, else the CPU. Under torchrun every CUDA choice (auto, cuda, cuda:N) is this rank's
    local GPU, cuda:LOCAL_RANK: one process per GPU is what torchrun starts. A device that is no device name, or one
    this machine does not have, is a UsageError naming --device, checked before any work."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N (the GPU's index).")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        rank = local_rank()
        device = torch.device("cuda", rank if rank is not None else (device.index or 0))
        if device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count or 'no'} CUDA GPU(s)"
                             + (f" (cuda:0 to cuda:{count - 1})" if count else "; use --device cpu") + ".")
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
        try:
            self.record([name])
        except CheckpointError as e:  # unrecorded, the next run would take the file for a user's and keep it
            os.remove(path)
            raise CheckpointError(f"{e} {path} was written but could not be recorded as this repo's, so it was "
                                  f"removed again.") from None

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
    if os.path.isfile(path):
        raise CheckpointError(f"{option} {path} is a file, not a folder: give a folder (it is made if missing).")
    try:
        try_writing_in(path)
    except OSError as e:
        reason = e.strerror or "files cannot be created in it"
        raise CheckpointError(f"{option} {path} cannot be used: {reason}. Give a folder you can write to.") from None


def finite(kind, text):
    """text as a number of kind; inf and nan are refused (argparse names the option)."""
    value = kind(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
    return value


def at_least(minimum, kind=int):
    """argparse type: a finite number of kind that is at least minimum."""
    def parse(text):
        value = finite(kind, text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {text})")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def in_range(low, high, high_included=False):
    """argparse type: a float in [low, high) (or [low, high])."""
    def parse(text):
        value = finite(float, text)
        if not (low <= value < high or high_included and value == high):
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}{']' if high_included else ')'} (got {text})")
        return value
    parse.__name__ = "float"
    return parse


def positive(kind=float):
    """argparse type: a finite number above zero."""
    def parse(text):
        value = finite(kind, text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0 (got {text})")
        return value
    parse.__name__ = kind.__name__
    return parse
