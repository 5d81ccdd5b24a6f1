"""End-to-end training throughput: the original-style input pipeline against this repo's fast path.

    python bench.py                         # GPU: XLM-R base + ResNet50 at 224 px on 2,000 photo-sized JPEGs
    python bench.py --compile               # the same, with torch.compile on the fast path's model
    python bench.py --device cpu --quick    # the sample preset's small model on a CPU, < 5 minutes on 2 cores

(a) original-style: DataLoader workers PIL-decode every JPEG and resize it on every step (the original's eval
    transform), every question is padded to --max_token by the tokenizer, fp32, default (non-fused) AdamW.
(b) fast path: the repo's ImageCache (decoded once; its build time is reported on its own line and is not part of
    the throughput), questions tokenized once and padded per batch (loaders.make_loader), train.train_step
    (bf16 autocast on GPUs with bf16), a channels_last model, train.py's fused AdamW on CUDA, pinned memory with
    non_blocking copies, persistent workers, optionally torch.compile.
Both train the same model (same initial weights) on the same data, device and batch size, one after the other,
with the same training step (focal loss, gradient clipping). Throughput counts data loading; warmup steps are not
timed. Then the fast path's model alone on a batch already on the device, with the FLOPs of a training step and,
on CUDA, the fraction of the GPU's dense bf16 peak it reaches. The last line is `speedup: N.Nx` ((b) / (a)).

The data (photo-like 1920x1080 JPEGs and Korean questions in the repo's data.csv format) is generated once into
--data_dir and reused; give --data_dir a real data set's directory to measure on that instead. Nothing is
downloaded: the models are built from configs with random weights and the tokenizer is trained on the questions
(xlm-roberta-base's own tokenizer would need the hub; the model is the same size either way).
"""
import argparse
import glob
import itertools
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is used before DataLoader workers fork

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

import main
import util
from focal import build_loss
from answering import forward, make_dataset, to_device
from encoders import small_text_config, train_tokenizer, xlmr_base_config
from models import build_model, run_config
from train import build_optimizer, optimize, train_step
from images import IMAGENET_MEAN, IMAGENET_STD, ImageCache, cache_dir
from loaders import make_loader
from vqa_dataset import build_answer_vocab, collate, read_data, select_rows

# Dense (no sparsity) bf16 tensor-core peak FLOP/s by device name; the first key found in the name wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", None), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]
QUICK = dict(n_images=512, batch_size=64, warmup_steps=4, steps=20)  # --quick: small and CPU-sized
FULL = dict(n_images=2000, batch_size=256, warmup_steps=10, steps=50)

# Word lists for questions of 5-25 tokens: the tokenizer trained on them keeps each word whole, so a question of
# n words is n + 2 tokens (<s> and </s>).
WORDS = ("사진 속 왼쪽 오른쪽 위 아래 옆 앞 뒤 가운데 가장 큰 작은 빨간 파란 노란 하얀 검은 오래된 새로운 있는 보이는 "
         "서 있는 앉아 있는 사람 아이 남자 여자 자동차 버스 자전거 건물 나무 하늘 강아지 고양이 의자 책상 창문 도로 "
         "꽃 산 바다 가방 모자 신발 컵 접시 시계 간판 다리 공원 학교 시장 그릇 음식 과일 동물 새 배 기차 우산 "
         "에 의 이 가 은 는 을 를 과 와 에서 근처 주변 함께 두 세 여러").split()
ENDINGS = ["무엇인가요?", "어디인가요?", "몇 개인가요?", "무슨 색인가요?", "누구인가요?", "무엇을 하고 있나요?"]
ANSWERS = ("사람 아이 남자 여자 자동차 버스 자전거 건물 나무 하늘 강아지 고양이 의자 책상 창문 도로 꽃 산 바다 가방 "
           "모자 신발 컵 접시 시계 간판 다리 공원 학교 시장 빨간색 파란색 노란색 하얀색 검은색 초록색 1 2 3 4 5 "
           "걷기 달리기 먹기 앉기 서울 부산 여름 겨울 봄 가을").split()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--quick", action="store_true",
                   help="the sample preset's small model (scratch XLM-R 128x2, resnet10t at 64 px) and fewer images")
    p.add_argument("--data_dir", default=None,
                   help="data.csv + image/; generated there if data.csv is missing, else reused as it is "
                        "(default data/bench/<n_images>_<width>x<height>)")
    p.add_argument("--n_images", type=int, default=None, help=f"JPEGs to generate (default {FULL['n_images']}, "
                                                             f"{QUICK['n_images']} with --quick)")
    p.add_argument("--questions_per_image", type=int, default=2,
                   help="questions generated per image (only when data.csv is generated)")
    p.add_argument("--width", type=int, default=1920, help="width of the generated JPEGs")
    p.add_argument("--height", type=int, default=1080, help="height of the generated JPEGs")
    p.add_argument("--img_size", type=int, default=None, help="model input size (default 224, 64 with --quick)")
    p.add_argument("--batch_size", type=int, default=None,
                   help=f"batch size of both pipelines (default {FULL['batch_size']}, "
                        f"{QUICK['batch_size']} with --quick)")
    p.add_argument("--warmup_steps", type=int, default=None,
                   help=f"untimed steps first (default {FULL['warmup_steps']}, {QUICK['warmup_steps']} with --quick, "
                        "rounded up to a multiple of --num_workers)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"timed steps (default {FULL['steps']}, {QUICK['steps']} with --quick, rounded up to a "
                        "multiple of --num_workers)")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                   help="DataLoader worker processes of both pipelines (default: the number of CPUs)")
    p.add_argument("--max_token", type=int, default=50, help="question length limit; (a) pads every question to it")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="the fast path's precision; auto: bf16 autocast on CUDA, fp32 on CPU ((a) is always fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast path's model")
    p.add_argument("--use_transformer_layer", action="store_true",
                   help="the model with main.py's --use_transformer_layer (both pipelines)")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler's table of the operators taking the most time in fast-path steps")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's dense bf16 peak in TFLOP/s (default: from a table of known GPUs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the sample order")
    return p.parse_args()


def make_photo(job):
    """One photo-like JPEG: smooth colour regions, finer texture and sensor noise, so that its file size (~0.5 MB
    at 1920x1080, quality 90) and decode cost are a real photo's, unlike those of a flat synthetic image."""
    path, width, height, seed = job
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (rng.integers(2, 6), rng.integers(3, 9), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    fine = rng.integers(0, 256, (max(1, height // 12), max(1, width // 12), 3), dtype=np.uint8)
    img += (np.asarray(Image.fromarray(fine).resize((width, height), Image.BILINEAR), dtype=np.int16) - 128) // 3
    img += rng.integers(-8, 9, img.shape, dtype=np.int16)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_question(rng):
    n_words = rng.randint(3, 23)  # 5-25 tokens with <s> and </s>
    ending = rng.choice(ENDINGS)
    return " ".join(rng.choices(WORDS, k=max(1, n_words - len(ending.split()))) + [ending])


def generate_data(data_dir, n_images, questions_per_image, width, height, seed):
    """data_dir/image/*.jpg and data_dir/data.csv (image, question, answer, split); data.csv is written last, so
    an interrupted run is generated again."""
    names = [f"image/photo_{i:05d}.jpg" for i in range(n_images)]
    outputs = util.OutputFolder(data_dir, option="--data_dir").check(names + ["data.csv"])  # never a user's file
    os.makedirs(os.path.join(data_dir, "image"), exist_ok=True)
    jobs = [(os.path.join(data_dir, name), width, height, seed * 1_000_003 + i) for i, name in enumerate(names)]
    with ProcessPoolExecutor(max(1, min(os.cpu_count() or 1, n_images))) as pool:  # numpy + JPEG encode: processes
        list(tqdm(pool.map(make_photo, jobs, chunksize=4), total=n_images, desc=f"generating {width}x{height} JPEGs",
                  dynamic_ncols=True))
    rng = random.Random(seed)
    outputs.record(names)
    rows = [{"image": os.path.basename(name), "question": make_question(rng), "answer": rng.choice(ANSWERS),
             "split": "train"} for name in names for _ in range(questions_per_image)]
    outputs.write("data.csv", util.csv_bytes(pd.DataFrame(rows)))


class OriginalStyleDataset(Dataset):
    """As the original: each item decodes its JPEG (PIL) and applies the eval transform (bilinear resize to
    img_size, ToTensor, ImageNet normalization), and tokenizes its question padded to max_token."""

    def __init__(self, df, data_dir, tokenizer, answer_to_id, img_size, max_token):
        from torchvision import transforms

        self.paths = [os.path.join(data_dir, "image", name) for name in df["image"]]
        self.questions = list(df["question"])
        self.labels = [answer_to_id.get(a, -1) for a in df["answer"]]
        self.tokenizer, self.max_token = tokenizer, max_token
        self.transform = transforms.Compose([transforms.Resize((img_size, img_size)), transforms.ToTensor(),
                                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = self.transform(Image.open(self.paths[i]).convert("RGB"))
        enc = self.tokenizer(self.questions[i], padding="max_length", truncation=True, max_length=self.max_token,
                             return_tensors="pt")
        return enc["input_ids"][0], enc["attention_mask"][0], image, self.labels[i]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def original_step(model, optimizer, loss_fn, device, clip_grad, lr):
    """(a)'s training step: its batches as the original's loader gives them, fp32, then train.py's optimize."""
    def step(batch):
        input_ids, attention_mask, image, label = (t.to(device) for t in batch)
        loss = loss_fn(model(input_ids, attention_mask, image)["answer"], label)
        optimize(model, optimizer, loss, clip_grad, lr)
        loss.item()  # train.py reads the loss every step, which waits for the step to finish
        return len(label)
    return step


def fast_step(wrapped, model, optimizer, loss_fn, device, precision, clip_grad, lr):
    """(b)'s training step: train.train_step."""
    return lambda batch: train_step(wrapped, model, optimizer, loss_fn, batch, device, precision, clip_grad, lr)["seen"]


def timed(desc, step, batches, warmup_steps, steps, device):
    """(samples/s, s/step, share of the time spent waiting for the next batch) over `steps` steps after
    `warmup_steps` untimed ones, the batches' loading included. Each step reads its loss back, so a batch that is
    not ready when the GPU is done shows as waiting."""
    bar = tqdm(total=warmup_steps + steps, desc=desc, dynamic_ncols=True)
    for _ in range(warmup_steps):  # startup, worker fill, cudnn / compile warmup
        step(next(batches))
        bar.update()
    sync(device)
    start, seen, waiting = time.perf_counter(), 0, 0.0
    for _ in range(steps):
        asked = time.perf_counter()
        batch = next(batches)
        waiting += time.perf_counter() - asked
        seen += step(batch)
        bar.update()
    sync(device)  # kernels still queued belong to the timed steps
    elapsed = time.perf_counter() - start
    bar.close()
    return seen / elapsed, elapsed / steps, waiting / elapsed


def profile_table(step, batch, device, steps=5, rows=15):
    """torch.profiler's table of the operators that take the most time in a few training steps on one batch."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(batch)
        sync(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


def peak_memory(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device):
    import gc

    gc.collect()  # the previous pipeline's model, optimizer and loader
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_flops(device, override):
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((peak for key, peak in PEAK_BF16 if key.lower() in name), None)


def round_up(n, multiple):
    return -(-n // multiple) * multiple if multiple > 0 else n


def run():
    args = parse_args()
    device = util.pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU; use --device cpu (with --quick)")
    precision = util.pick_precision(device, args.precision)
    preset = QUICK if args.quick else FULL
    # the model options of main.py: its defaults (XLM-R base size, resnet50) or its sample preset
    cfg = main.parse_args((["--preset", "sample"] if args.quick else [])
                          + (["--use_transformer_layer"] if args.use_transformer_layer else []))
    n_images = args.n_images or preset["n_images"]
    cfg.img_size = img_size = args.img_size or cfg.img_size
    batch_size = args.batch_size or preset["batch_size"]
    nw = args.num_workers
    # (a)'s batches come in waves of num_workers (each worker builds a whole batch): time whole waves
    warmup_steps = round_up(args.warmup_steps if args.warmup_steps is not None else preset["warmup_steps"], nw)
    steps = round_up(args.steps or preset["steps"], nw)
    data_dir = args.data_dir or os.path.join("data", "bench", f"{n_images}_{args.width}x{args.height}")

    # data: generated once, then reused
    if os.path.isfile(os.path.join(data_dir, "data.csv")):
        print(f"reusing {data_dir}/data.csv (delete {data_dir} to generate it again)")
    else:
        try:
            generate_data(data_dir, n_images, args.questions_per_image, args.width, args.height, args.seed)
        except util.CheckpointError as e:  # a user's file where the data would go
            raise SystemExit(f"error: {e}") from None
    df = select_rows(read_data(data_dir), "train")
    answer_to_id = {a: i for i, a in enumerate(build_answer_vocab(df))}
    tokenizer = train_tokenizer(list(df["question"]))
    n_tokens = np.array([len(ids) for ids in tokenizer(list(df["question"]), truncation=True,
                                                       max_length=args.max_token)["input_ids"]])
    jpeg_kb = np.mean([os.path.getsize(os.path.join(data_dir, "image", n)) for n in df["image"].unique()]) / 1e3

    if args.quick:
        text_config = small_text_config(len(tokenizer), args.max_token, **cfg.scratch_text)
    else:
        text_config = xlmr_base_config()

    def new_model(memory_format):
        util.set_seed(args.seed)  # the same initial weights for both pipelines
        model = build_model(run_config(cfg, cfg.model_config, len(answer_to_id)), text_config)
        return model.to(device, memory_format=memory_format)

    loss_fn = build_loss("focal", gamma=cfg.gamma).to(device)
    n_samples = (warmup_steps + steps) * batch_size

    def sampler(dataset):
        # one iterator for all steps, drawing epoch after epoch without a pause at epoch ends, in the same order
        # for both pipelines
        return RandomSampler(dataset, num_samples=n_samples, generator=torch.Generator().manual_seed(args.seed))

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device_name} | torch {torch.__version__} | batch {batch_size} | {nw} workers | "
          f"{warmup_steps} warmup + {steps} timed steps | CPU load average {os.getloadavg()[0]:.1f}")
    print(f"data: {data_dir}: {df['image'].nunique():,} JPEGs (mean {jpeg_kb:.0f} KB), {len(df):,} questions of "
          f"{n_tokens.min()}-{n_tokens.max()} tokens (mean {n_tokens.mean():.1f}), {len(answer_to_id)} answers")

    # (a) original-style
    reset_memory(device)
    model = new_model(torch.contiguous_format)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters: text "
          f"{text_config.hidden_size}x{text_config.num_hidden_layers} (vocab {text_config.vocab_size:,}), image "
          f"{cfg.image_model} at {img_size} px, transformer layer {'on' if cfg.use_transformer_layer else 'off'}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    original_set = OriginalStyleDataset(df, data_dir, tokenizer, answer_to_id, img_size, args.max_token)
    loader = DataLoader(original_set, batch_size=batch_size, sampler=sampler(original_set), num_workers=nw)
    step = original_step(model, optimizer, loss_fn, device, cfg.clip_grad, cfg.lr)
    original, _, original_wait = timed("(a) original-style", step, iter(loader), warmup_steps, steps, device)
    original_mem = peak_memory(device)
    del model, optimizer, loader, step  # the step holds the model: (b) is measured without (a) in memory

    # (b) fast path, after the image cache is built
    cache_files = set(glob.glob(os.path.join(cache_dir(data_dir), "images_*.npy")))
    start = time.perf_counter()
    images = ImageCache(data_dir, df["image"], img_size, num_workers=max(nw, os.cpu_count() or 1))
    cache_s = time.perf_counter() - start
    print(f"image cache: {'built' if images.path not in cache_files else 'reused'} in {cache_s:.1f} s "
          f"({len(images.names):,} images at {img_size} px, {os.path.getsize(images.path) / 2**20:.0f} MiB; "
          f"not part of (b)'s throughput)")
    reset_memory(device)
    model = new_model(torch.channels_last)
    raw_model = model
    optimizer = build_optimizer(model, cfg, device)
    if args.compile:
        model = torch.compile(model)
    fast_set = make_dataset(raw_model, df, images, tokenizer, list(answer_to_id), args.max_token)
    loader = make_loader(fast_set, batch_size, nw, device, sampler=sampler(fast_set), seed=args.seed)
    step = fast_step(model, raw_model, optimizer, loss_fn, device, precision, cfg.clip_grad, cfg.lr)
    fast, _, fast_wait = timed(f"(b) fast path{' (compiled)' if args.compile else ''}", step, iter(loader),
                               warmup_steps, steps, device)
    fast_mem = peak_memory(device)
    del loader

    # model only: (b)'s model and settings on one batch already on the device
    batch = collate([fast_set[i] for i in range(batch_size)], fast_set.pad_id)
    batch = {k: v.to(device) for k, v in batch.items()}  # uint8 images: each step makes them the model's input
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # forward and backward, eager (the same math as compiled)
        on_device = to_device(batch, device)
        logits = forward(raw_model, on_device, precision)["answer"]
        loss_fn(logits, on_device["label"]).backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    model_only, step_s, _ = timed("model only", step, itertools.repeat(batch), warmup_steps, steps, device)
    peak = peak_flops(device, args.peak_tflops)
    mfu = f"{100 * flops / step_s / peak:.1f}% of the {peak / 1e12:.0f} TFLOP/s bf16 peak" if peak else \
        "fraction of bf16 peak n/a" + (" (unknown GPU: pass --peak_tflops)" if device.type == "cuda" else " (CPU)")

    def mem(gib):
        return f"peak GPU memory {gib:.1f} GiB" if gib is not None else "peak GPU memory n/a (CPU)"

    if args.profile:
        print(f"top operators of 5 fast-path steps on one batch (torch.profiler):\n"
              f"{profile_table(step, batch, device)}")
    print(f"(a) original-style: {original:9.1f} samples/s | {mem(original_mem)} | waiting for data "
          f"{100 * original_wait:.0f}% | JPEG decode + resize per item in workers, padded to {args.max_token}, fp32")
    print(f"(b) fast path:      {fast:9.1f} samples/s | {mem(fast_mem)} | waiting for data {100 * fast_wait:.0f}% | "
          f"image cache, per-batch padding, {precision}, channels_last"
          f"{', fused AdamW' if device.type == 'cuda' else ''}{', compiled' if args.compile else ''}")
    print(f"model only (b):     {model_only:9.1f} samples/s | {flops / batch_size / 1e9:.2f} GFLOP per sample "
          f"(forward + backward, padded to {batch['input_ids'].shape[1]} tokens) | {mfu}")
    print(f"speedup: {fast / original:.1f}x")


if __name__ == "__main__":
    run()
