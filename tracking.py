"""main.py --report_to: the training curves also written where researchers look, next to history.json and curves.png.

    tensorboard: event files in RUN/tb/ (tensorboard --logdir results)
    wandb:       a wandb run in RUN/wandb/, offline (wandb sync later) when WANDB_MODE says so or there is no network

Every value is logged against one step axis, the optimizer steps done, as the Hugging Face Trainer does: per step the
train loss and learning rate, per epoch train/valid loss and accuracy, valid accuracy per question type and, for runs
that predict a triple, its h/r/t/hrt accuracy. Only rank 0 logs. A resumed run continues the same curves: it starts
logging after its checkpoint's step, and TensorBoard drops whatever a crashed run had logged after that step.
"""
import hashlib
import os
import socket

import util

REPORT_TO = ["none", "tensorboard", "wandb"]
TB_DIR = "tb"
WANDB_HOST = ("api.wandb.ai", 443)


def check_installed(report_to):
    """A missing package is said before any work, with how to get it."""
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(report_to)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        raise util.UsageError(f"--report_to {report_to} needs the {module} package: pip install {module} (or "
                              f"--report_to none; history.json and curves.png are written in any case)") from None


def open_tracker(report_to, run_dir, config, resumed_step=None):
    """The tracker of a run; resumed_step: the optimizer steps its checkpoint holds, when it is resumed. (main.py has
    already checked, with check_installed, that its package is there.)"""
    if report_to == "tensorboard":
        return TensorBoard(run_dir, resumed_step)
    if report_to == "wandb":
        return Wandb(run_dir, config, resumed_step)
    return NoTracker()


class NoTracker:
    """The interface of a tracker, logging nothing; as a context manager it closes (flushes) on the way out, an
    interrupted run included."""

    def log(self, step, values):
        pass

    def flush(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TensorBoard(NoTracker):
    def __init__(self, run_dir, resumed_step):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events of steps after the checkpoint (from a run that crashed after it) are hidden on reading
        self.writer = SummaryWriter(os.path.join(run_dir, TB_DIR),
                                    purge_step=None if resumed_step is None else resumed_step + 1)

    def log(self, step, values):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class Wandb(NoTracker):
    def __init__(self, run_dir, config, resumed_step):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if reachable(WANDB_HOST) else "offline")
        if mode == "offline":
            print(f"wandb: offline, in {run_dir}/wandb (upload it later with `wandb sync {run_dir}/wandb/offline-*`)")
        run_id = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:16]  # the same run when resumed
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vqa_nia"), name=os.path.basename(run_dir),
                              id=run_id, resume="allow", dir=run_dir, config=config, mode=mode)

    def log(self, step, values):
        self.run.log(values, step=step)

    def close(self):
        self.run.finish()


def reachable(address, timeout=2.0):
    try:
        socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False
