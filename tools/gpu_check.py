"""GPU check: one prepared run that proves this repo's CUDA paths and writes the figures of the README's GPU table.

    bash tools/gpu_check.sh OUT_DIR              # on one CUDA GPU, about 8 minutes, no download
    bash tools/gpu_check.sh OUT_DIR --dry-run    # the same steps on the CPU at tiny sizes, to test this script

Steps; each writes its log to OUT_DIR/<step>.log, a failed step is reported and the others still run:
  bench      bench.py at full size (XLM-R base + ResNet50 at 224 px, photo-sized JPEGs), eager and --compile: samples/s
             of the original-style pipeline and the fast path, waiting for data, peak memory, model-only samples/s,
             fraction of the bf16 peak, speedup; the profiler's top operators of the fast path
  resume     the sample preset on CUDA, stopped by SIGTERM mid-epoch then --resume'd to the end, against two
             uninterrupted runs of the same seed (their difference is the noise of bf16 and nondeterministic kernels)
  torchrun   `torchrun --nproc_per_node 1 main.py` (torch.distributed with NCCL on one GPU), and
             --use_transformer_layer, one epoch each
  inference  inference.py, inference_each.py and the demo's answer function (model.answer) on CUDA and on the CPU
             for one run: the same top answers, up to bf16 ties
and OUT_DIR/summary.md, every figure as markdown tables (also printed at the end), with curves.png of the CUDA run.
Needs PyTorch, timm, transformers, tokenizers, safetensors, pandas, scikit-learn, tqdm and matplotlib; not gdown,
pykeen, gradio or koreanize-matplotlib.
Work files (generated data, runs) go to --work_dir, not OUT_DIR, so that OUT_DIR holds at most eight small files.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FULL = {"bench": ["--n_images", "1000", "--warmup_steps", "16", "--steps", "160", "--profile"],
        "sample_images": "3200", "epochs": "3", "device": "cuda", "train": [],
        "timeout": {"bench": 150, "compile": 270, "resume": 240, "torchrun": 150}}
DRY = {"bench": ["--device", "cpu", "--quick", "--n_images", "8", "--width", "160", "--height", "120",
                 "--batch_size", "4", "--warmup_steps", "3", "--steps", "2", "--num_workers", "1", "--profile"],
       "sample_images": "60", "epochs": "3", "device": "cpu", "train": ["--batch_size", "8"],
       "timeout": {"bench": 300, "compile": 600, "resume": 300, "torchrun": 300}}
TARGETS = {"samples_per_s": 3000, "speedup": 8.0}
TIE = 0.02  # top-1 and top-2 probabilities closer than this (on the CPU) may swap under bf16


class Check:
    """Runs the steps' commands from the repository root, logs each step to OUT_DIR/<step>.log and keeps the
    results for the summary."""

    def __init__(self, out_dir, work_dir, sizes):
        self.out_dir, self.work_dir, self.sizes = out_dir, work_dir, sizes
        self.rows = []  # (step, what, result, ok)
        os.makedirs(out_dir, exist_ok=True)
        os.makedirs(work_dir, exist_ok=True)

    def log_path(self, step):
        return os.path.join(self.out_dir, f"{step}.log")

    def run(self, step, args, timeout, launcher=(sys.executable,)):
        """Runs a command to its end; returns (exit code, its output). Output is appended to the step's log."""
        start = time.time()
        with open(self.log_path(step), "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(map(str, [*launcher, *args]))}\n")
            log.flush()
            try:
                result = subprocess.run([*launcher, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                                        timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                code, output = result.returncode, result.stdout + result.stderr
            except subprocess.TimeoutExpired as e:
                code = "timeout"
                output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            log.write(output + f"\n[exit {code} after {time.time() - start:.0f} s]\n")
        return code, output

    def record(self, step, what, result, ok):
        self.rows.append((step, what, result, ok))
        print(f"[{step}] {'ok  ' if ok else 'FAIL'} {what}: {result}", flush=True)


def number(pattern, text, default=None):
    found = re.findall(pattern, text, re.M)
    return float(found[-1].replace(",", "")) if found else default


# ---------------------------------------------------------------- steps

def step_bench(check):
    """bench.py eager and compiled; returns {"eager": figures, "compiled": figures}."""
    figures = {}
    for name, extra, timeout in [("eager", [], check.sizes["timeout"]["bench"]),
                                 ("compiled", ["--compile"], check.sizes["timeout"]["compile"])]:
        code, out = check.run("bench", ["bench.py", *check.sizes["bench"], *extra,
                                        "--data_dir", os.path.join(check.work_dir, "bench")], timeout)
        got = {"original": number(r"^\(a\) original-style: +([\d.]+) samples/s", out),
               "original_wait": number(r"^\(a\).*waiting for data (\d+)%", out),
               "fast": number(r"^\(b\) fast path: +([\d.]+) samples/s", out),
               "fast_wait": number(r"^\(b\).*waiting for data (\d+)%", out),
               "fast_memory": number(r"^\(b\).*peak GPU memory ([\d.]+) GiB", out),
               "model_only": number(r"^model only \(b\): +([\d.]+) samples/s", out),
               "mfu": number(r"^model only.*\| ([\d.]+)% of the", out),
               "gflop": number(r"([\d.]+) GFLOP per sample", out),
               "speedup": number(r"^speedup: ([\d.]+)x", out)}
        figures[name] = got
        ok = code == 0 and got["speedup"] is not None
        check.record("bench", f"bench.py {name}", f"(a) {got['original']} samples/s, (b) {got['fast']} samples/s, "
                     f"model only {got['model_only']}, speedup {got['speedup']}x" if ok else f"exit {code}", ok)
    return figures


def train_args(check, data_dir, results_dir, *extra):
    return ["main.py", "--preset", "sample", "--data_dir", data_dir, "--results_dir", results_dir,
            "--device", check.sizes["device"], "--n_epoch", check.sizes["epochs"], *check.sizes["train"], *extra]


def only_run(results_dir):
    runs = [os.path.join(results_dir, d) for d in sorted(os.listdir(results_dir))]
    return runs[-1] if runs else None


def history(run_dir):
    from util import read_json

    return read_json(os.path.join(run_dir, "history.json"))


def history_difference(a, b):
    """Largest absolute difference of the losses and accuracies of two histories (inf if their epochs differ)."""
    if [r["epoch"] for r in a] != [r["epoch"] for r in b]:
        return float("inf")
    keys = ["train_loss", "train_acc", "valid_loss", "valid_acc"]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys)


def stop_mid_epoch(check, args, epoch=2, timeout=240):
    """Starts main.py, sends SIGTERM once the progress bar shows the first half of `epoch`; returns its exit code."""
    err_path = os.path.join(check.work_dir, "stopped.stderr")
    with open(err_path, "w") as err:
        process = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    pattern, deadline = re.compile(rf"epoch {epoch}/\d+[^\r\n]*\| (\d+)/(\d+)"), time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        with open(err_path, encoding="utf-8", errors="replace") as f:
            if any(0 < int(done) <= int(total) // 2 for done, total in pattern.findall(f.read())):
                process.send_signal(signal.SIGTERM)
                break
        time.sleep(0.005)
    try:
        code = process.wait(timeout=max(10, deadline - time.time()))
    except subprocess.TimeoutExpired:
        process.kill()
        code = "timeout"
    with open(err_path, encoding="utf-8", errors="replace") as f, open(check.log_path("resume"), "a") as log:
        log.write(f"\n$ {' '.join(map(str, args))}  (SIGTERM in epoch {epoch})\n{f.read()[-4000:]}\n[exit {code}]\n")
    return code


def step_resume(check, data_dir):
    """Two uninterrupted runs and one stopped by SIGTERM and resumed; returns the first run's directory."""
    timeout = check.sizes["timeout"]["resume"]
    runs = []
    for name in ("uninterrupted", "uninterrupted_again"):
        results = os.path.join(check.work_dir, name)
        code, _ = check.run("resume", train_args(check, data_dir, results), timeout)
        runs.append(only_run(results) if code == 0 else None)
        check.record("resume", f"sample preset, {check.sizes['epochs']} epochs ({name})", f"exit {code}", code == 0)
    stopped = os.path.join(check.work_dir, "stopped")
    code = stop_mid_epoch(check, train_args(check, data_dir, stopped), timeout=timeout)
    check.record("resume", "SIGTERM mid-epoch 2", f"exit {code} (143 expected)", code == 128 + signal.SIGTERM)
    run_dir = only_run(stopped) if os.path.isdir(stopped) else None
    code, _ = check.run("resume", ["main.py", "--resume", run_dir or stopped], timeout)
    check.record("resume", "--resume to the end", f"exit {code}", code == 0)
    if None in runs or code != 0:
        return runs[0]
    shutil.copy(os.path.join(runs[0], "curves.png"), os.path.join(check.out_dir, "curves.png"))
    noise = history_difference(history(runs[0]), history(runs[1]))
    resumed = history_difference(history(runs[0]), history(run_dir))
    check.record("resume", "resumed vs uninterrupted history (max abs difference of losses and accuracies)",
                 f"{resumed:.4g}; two uninterrupted runs differ by {noise:.4g}",
                 resumed <= max(3 * noise, 0.01))
    return runs[0]


def step_torchrun(check, data_dir):
    timeout = check.sizes["timeout"]["torchrun"]
    results = os.path.join(check.work_dir, "torchrun")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1")
    code, out = check.run("torchrun", train_args(check, data_dir, results, "--n_epoch", "1"), timeout, torchrun)
    backend = re.findall(r"torch\.distributed, (\w+)\)", out)
    check.record("torchrun", "torchrun --nproc_per_node 1 main.py, one epoch",
                 f"exit {code}, backend {backend[0] if backend else 'none'}", code == 0 and bool(backend))
    results = os.path.join(check.work_dir, "transformer_layer")
    code, out = check.run("torchrun", train_args(check, data_dir, results, "--n_epoch", "1", "--use_transformer_layer"),
                          timeout)
    accuracy = number(r"valid loss [\d.]+ acc ([\d.]+)", out)
    check.record("torchrun", "--use_transformer_layer, one epoch", f"exit {code}, valid accuracy {accuracy}",
                 code == 0)


def top_two(run_dir, device, rows):
    """(top-1 answer index, top-1 minus top-2 probability) per test row, in the run's precision on device."""
    import torch

    import util
    from answering import make_dataset, predict
    from images import ImageCache
    from models import load_run
    from loaders import make_loader

    device = torch.device(device)
    model, tokenizer, config, answers, _ = load_run(run_dir, device)
    data_dir = config["data_dir"]
    images = ImageCache(data_dir, rows["image"], config["img_size"], progress=False)
    dataset = make_dataset(model, rows, images, tokenizer, answers, config["max_token"])
    result = predict(model, make_loader(dataset, 256, 0, device), device,
                     util.pick_precision(device, util.run_option(config, "precision")), top_k=2, progress=False)
    return result["pred"][:, 0].numpy(), (result["prob"][:, 0] - result["prob"][:, 1]).numpy()


def compare(name, cpu, gpu, cpu_gap, check):
    """Records how many top answers agree; a disagreement where the CPU's top two were within TIE is a bf16 tie."""
    differ = [i for i, (a, b) in enumerate(zip(cpu, gpu)) if a != b]
    ties = [i for i in differ if cpu_gap[i] < TIE]
    check.record("inference", name, f"{len(cpu) - len(differ)} of {len(cpu)} top answers equal, "
                 f"{len(ties)} of the {len(differ)} others are ties (top two within {TIE})", len(ties) == len(differ))


def step_inference(check, run_dir):
    from util import read_json
    from vqa_dataset import read_test_split

    device = check.sizes["device"]
    outputs = {}
    for dev in ("cpu", device):  # the scripts as a user runs them
        code, out = check.run("inference", ["inference.py", "--model_path", run_dir, "--device", dev], 300)
        with open(os.path.join(run_dir, "predictions_all.csv"), encoding="utf-8") as f:
            outputs[dev] = (code, f.read(), number(r"accuracy \(all\): ([\d.]+)%", out))
        check.record("inference", f"inference.py --device {dev}", f"exit {code}, test accuracy {outputs[dev][2]}%",
                     code == 0)
    _, test = read_test_split(read_json(os.path.join(run_dir, "config.json")))
    cpu, cpu_gap = top_two(run_dir, "cpu", test)
    gpu, _ = top_two(run_dir, device, test)
    compare(f"inference.py's answering.predict, {device} vs cpu, whole test split", cpu, gpu, cpu_gap, check)

    each = {}
    for dev in ("cpu", device):
        firsts = []
        for index in range(5):
            code, out = check.run("inference", ["inference_each.py", "--model_path", run_dir, "--index", index,
                                                "--device", dev], 300)
            firsts.append(re.findall(r"^  1\. (.+?) +[\d.]+%$", out, re.M)[:1] or [f"exit {code}"])
        each[dev] = firsts
    compare(f"inference_each.py --index 0..4, {device} vs cpu", each["cpu"], each[device], cpu_gap[:5], check)

    import torch

    from answering import answer
    from models import load_run

    tops = {}
    for dev in ("cpu", device):  # demo.py's answer function
        model, tokenizer, config, answers, _ = load_run(run_dir, torch.device(dev))
        tops[dev] = [answer(model, tokenizer, config, answers, os.path.join(config["data_dir"], "image", row.image),
                            row.question, dev, top_k=2) for row in test.head(20).itertuples()]
    gap = [t[0][1] - t[1][1] for t in tops["cpu"]]
    compare(f"demo's answer function (answering.answer), 20 test rows, {device} vs cpu",
            [t[0][0] for t in tops["cpu"]], [t[0][0] for t in tops[device]], gap, check)


# ---------------------------------------------------------------- summary

def environment(device):
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__} (dry run)"


def summary(check, figures, device_text, seconds):
    lines = [f"# GPU check: {device_text}", "",
             f"`bash tools/gpu_check.sh OUT_DIR{'' if check.sizes is FULL else ' --dry-run'}`, {seconds:.0f} s in all.",
             "", "| step | check | result | |", "|---|---|---|---|"]
    lines += [f"| {step} | {what} | {result} | {'ok' if ok else '**FAIL**'} |" for step, what, result, ok in check.rows]
    if figures:
        lines += ["", "## bench.py", "",
                  "| mode | (a) original-style | (b) fast path | waiting for data (a / b) | (b) peak memory | "
                  "model only | of bf16 peak | speedup |", "|---|---|---|---|---|---|---|---|"]
        for mode, f in figures.items():
            shown = {k: "n/a" if v is None else v for k, v in f.items()}
            lines.append(f"| {mode} | {shown['original']} samples/s | {shown['fast']} samples/s | "
                         f"{shown['original_wait']}% / {shown['fast_wait']}% | {shown['fast_memory']} GiB | "
                         f"{shown['model_only']} samples/s | {shown['mfu']}% | {shown['speedup']}x |")
        eager, compiled = figures.get("eager", {}), figures.get("compiled", {})
        best = max([f["fast"] for f in figures.values() if f["fast"]] or [0])
        lines += ["", "Targets (one H100/H200, measured, not asserted):",
                  f"- end to end ≥ {TARGETS['samples_per_s']:,} samples/s: {best} "
                  f"({'met' if best >= TARGETS['samples_per_s'] else 'missed'})",
                  f"- ≥ {TARGETS['speedup']:.0f}x the original-style pipeline: eager {eager.get('speedup')}x, "
                  f"compiled {compiled.get('speedup')}x",
                  f"- --compile faster than eager: {compiled.get('fast')} vs {eager.get('fast')} samples/s"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(check.out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="where the logs and summary.md go")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    p.add_argument("--work_dir", default=None, help="generated data and runs (default: /tmp/vqa_gpu_check)")
    p.add_argument("--steps", default="bench,resume,torchrun,inference",
                   help="comma-separated steps to run (default: all)")
    args = p.parse_args()
    sizes = DRY if args.dry_run else FULL
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("error: no CUDA device; run with --dry-run to test this script on the CPU")
    check = Check(os.path.abspath(args.out_dir), os.path.abspath(args.work_dir or "/tmp/vqa_gpu_check"), sizes)
    steps, start, figures = args.steps.split(","), time.time(), {}
    device_text = environment(sizes["device"])
    print(device_text, flush=True)
    if "bench" in steps:
        figures = step_bench(check)
    data_dir = os.path.join(check.work_dir, "sample")
    if not os.path.isfile(os.path.join(data_dir, "data.csv")):
        check.run("resume", ["download.py", "--sample", "--out", data_dir, "--n_images", sizes["sample_images"]], 300)
    run_dir = step_resume(check, data_dir) if "resume" in steps or "inference" in steps else None
    if "torchrun" in steps:
        step_torchrun(check, data_dir)
    if "inference" in steps:
        if run_dir:
            step_inference(check, run_dir)
        else:
            check.record("inference", "a trained run", "none: the resume step's first run failed", False)
    summary(check, figures, device_text, time.time() - start)
    sys.exit(0 if all(ok for *_, ok in check.rows) else 1)


if __name__ == "__main__":
    main()
