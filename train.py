"""Training loop: data, model, focal loss, AdamW with warmup and cosine decay, validation each epoch, the best
epoch saved as safetensors plus everything needed to use it without the training data.

Runs on a CPU, one GPU, or several GPUs / nodes under torchrun (DistributedDataParallel)."""
import functools
import glob
import math
import os
import signal
import time

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import plots
import report
import util
from focal import build_loss
from model import (VQAModel, build_image_encoder, build_text_encoder, image_model_spec, load_tokenizer,
                   small_text_config, train_tokenizer)
from vqa_dataset import DataError, ImageCache, ImageFiles, VQADataset, build_answer_vocab, collate, load_data, select_rows, to_model_input

SCRATCH = "scratch"  # --text_model scratch: a small XLM-R built from a config, with a tokenizer trained on the questions
CONFIG_KEYS = ["train_data", "data_dir", "lang", "text_model", "image_model", "pretrained", "img_size", "max_token",
               "dim_h", "dropout", "use_transformer_layer", "n_transformer_layers", "n_heads", "ablate", "text_pool",
               "loss", "gamma", "label_smoothing", "n_epoch", "lr", "batch_size", "weight_decay", "warmup",
               "freeze_text_epochs", "clip_grad", "seed", "preset", "skip_bad", "num_workers"]


def build_model(config, tokenizer=None, run_dir=None):
    """The model config describes: for training from its sources (hub, local directory or scratch), or, with
    run_dir, empty from the run's saved text config, ready for load_weights."""
    if run_dir is not None:
        text_encoder = build_text_encoder(os.path.join(run_dir, util.TEXT_CONFIG_DIR), pretrained=False)
        image_encoder = build_image_encoder(config["image_arch"], pretrained=False, **config["image_model_kwargs"])
    else:
        if config["text_model"] == SCRATCH:
            from transformers import AutoModel

            text_config = small_text_config(len(tokenizer), config["max_token"], **config["scratch_text"])
            text_encoder = AutoModel.from_config(text_config)
        else:
            text_encoder = build_text_encoder(config["text_model"], pretrained=config["pretrained"])
        image_encoder = build_image_encoder(config["image_model"], pretrained=config["pretrained"],
                                            **config["image_model_kwargs"])
    return VQAModel(text_encoder, image_encoder, config["num_answers"], config["img_size"], dim_h=config["dim_h"],
                    dropout=config["dropout"], use_transformer_layer=config["use_transformer_layer"],
                    n_transformer_layers=config["n_transformer_layers"], n_heads=config["n_heads"],
                    ablate=config["ablate"], text_pool=config["text_pool"])


def autocast(device, precision):
    dtype = torch.bfloat16 if precision == "bf16" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_loader(dataset, batch_size, shuffle, num_workers, device, sampler=None, seed=0):
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=num_workers > 0, collate_fn=functools.partial(collate, pad_id=dataset.pad_id),
                      generator=torch.Generator().manual_seed(seed))


def forward(model, batch, device, precision):
    with autocast(device, precision):
        logits = model(batch["input_ids"].to(device, non_blocking=True),
                       batch["attention_mask"].to(device, non_blocking=True), to_model_input(batch["image"], device))
    return logits.float()


@torch.no_grad()
def predict(model, loader, device, precision="fp32", loss_fn=None, top_k=1, desc="eval"):
    """dict(loss, accuracy, n, pred [N, top_k], prob [N, top_k], index [N]); label -1 (unknown answer) is wrong."""
    model.eval()
    preds, probs, indices, total_loss, n_loss, correct = [], [], [], 0.0, 0, 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        logits = forward(model, batch, device, precision)
        label = batch["label"].to(device)
        known = int((label >= 0).sum())
        if loss_fn is not None and known:
            total_loss += loss_fn(logits, label).item() * known
            n_loss += known
        prob, pred = torch.softmax(logits, -1).topk(min(top_k, logits.shape[-1]), dim=-1)
        correct += int((pred[:, 0] == label).sum())
        preds.append(pred.cpu()), probs.append(prob.cpu()), indices.append(batch["index"])
    n = sum(len(i) for i in indices)
    return {"loss": total_loss / max(n_loss, 1), "accuracy": correct / max(n, 1), "n": n,
            "pred": torch.cat(preds) if preds else torch.zeros(0, top_k, dtype=torch.long),
            "prob": torch.cat(probs) if probs else torch.zeros(0, top_k),
            "index": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)}


def lr_factor(step, total_steps, warmup_steps):
    """Linear warmup then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


class EpochSampler(DistributedSampler):
    """DistributedSampler, also for a single process: its order depends only on seed and epoch, so a resumed run
    sees the same batches; skip starts an epoch after the samples already trained on."""

    def __init__(self, dataset, num_replicas, rank, seed):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


class Interrupted(Exception):
    """SIGTERM or SIGINT: the run saved its state and stopped; `python main.py --resume RUN_DIR` continues it."""

    def __init__(self, signum, run_dir):
        super().__init__(f"stopped by {signal.Signals(signum).name}; the state was saved. "
                         f"Continue with: python main.py --resume {run_dir}")
        self.signum = signum


def catch_stop_signals():
    """SIGTERM/SIGINT only set a flag, so the current step finishes and the state is saved; a second one stops
    at once. Returns (flag, restore)."""
    flag = {"signum": 0}

    def handler(signum, frame):
        flag["signum"] = signum
        signal.signal(signum, signal.SIG_DFL)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return flag, lambda: [signal.signal(s, h) for s, h in previous.items()]


def stop_requested(flag, world_size, device):
    """Any rank's signal stops every rank at the same step (torchrun forwards SIGTERM to all, not at one instant)."""
    if world_size == 1:
        return flag["signum"]
    signum = torch.tensor([flag["signum"]], device=device)
    dist.all_reduce(signum, op=dist.ReduceOp.MAX)
    return int(signum)


def check_same_answers(answers, run_dir):
    saved = util.read_json(os.path.join(run_dir, util.ANSWERS_FILE))
    if saved != answers:
        raise DataError(f"the training data changed since {run_dir} started: "
                        + util.answers_difference(saved, "the run's answers.json", answers, "the data now")
                        + ". Resume with the data the run started with, or start a new run.")


def train(args):
    device = util.pick_device(args.device)
    rank, world_size = util.init_distributed(device)
    is_main = rank == 0
    if device.type == "cpu" and world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # don't oversubscribe the cores
    util.set_seed(args.seed)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    log = print if is_main else (lambda *a, **k: None)
    resume = getattr(args, "resume", None)

    df, skipped = load_data(args.data_dir, args.skip_bad, progress=is_main)
    train_df = select_rows(df, "train", args.train_data, lang=args.lang)
    valid_df = select_rows(df, "valid", args.train_data, lang=args.lang)
    if len(train_df) == 0 or len(valid_df) == 0:
        raise SystemExit(f"error: no train or valid rows for --train_data {args.train_data} --lang {args.lang} in "
                         f"{args.data_dir}/data.csv (train {len(train_df)}, valid {len(valid_df)}).")
    answers = build_answer_vocab(train_df)
    answer_to_id = {a: i for i, a in enumerate(answers)}
    unknown_valid = int((~valid_df["answer"].isin(answer_to_id)).sum())
    log(f"data: {len(train_df)} train / {len(valid_df)} valid rows, {len(answers)} answers"
        + (f"; {unknown_valid} valid rows have answers never seen in training and count as wrong" if unknown_valid else ""))

    config = {k: getattr(args, k) for k in CONFIG_KEYS}
    image_arch, image_kwargs = image_model_spec(args.image_model, args.image_model_kwargs)
    config.update(num_answers=len(answers), image_arch=image_arch, image_model_kwargs=image_kwargs,
                  scratch_text=args.scratch_text, world_size=world_size)
    last = os.path.join(resume, util.LAST_CHECKPOINT) if resume else None
    if resume:
        check_same_answers(answers, resume)
        config = util.read_json(os.path.join(resume, util.CONFIG_FILE))
        if config["world_size"] != world_size:  # the batches, steps and learning rate schedule depend on it
            raise DataError(f"{resume} was trained by {config['world_size']} process(es); resume it with as many "
                            f"(now {world_size}).")
        tokenizer = load_tokenizer(os.path.join(resume, util.TOKENIZER_DIR))
    elif args.text_model == SCRATCH:
        tokenizer = train_tokenizer(list(train_df["question"]))
    else:
        tokenizer = load_tokenizer(args.text_model)
    if last and os.path.isfile(last):  # from the run's own text config: no download, weights come from `last`
        model = build_model(config, run_dir=resume)
    else:
        model = build_model(config, tokenizer=tokenizer)
    model = model.to(device, memory_format=torch.channels_last)  # faster convs
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, text {args.text_model}, "
        f"image {args.image_model} at {args.img_size}px, transformer layer {'on' if args.use_transformer_layer else 'off'}, "
        f"device {device} x{world_size}, precision {precision}")

    names = pd.concat([train_df["image"], valid_df["image"]])
    if not args.image_cache:
        images = ImageFiles(args.data_dir, names, args.img_size)
    else:
        if is_main:  # rank 0 decodes the images once; the others then map its file
            ImageCache(args.data_dir, names, args.img_size, num_workers=max(args.num_workers, os.cpu_count() or 1))
        if world_size > 1:
            dist.barrier()
        images = ImageCache(args.data_dir, names, args.img_size, progress=False)
    train_set = VQADataset(train_df, images, tokenizer, answer_to_id, args.max_token)
    valid_set = VQADataset(valid_df, images, tokenizer, answer_to_id, args.max_token)
    sampler = EpochSampler(train_set, world_size, rank, args.seed)
    per_rank_batch = max(1, args.batch_size // world_size)
    train_loader = make_loader(train_set, per_rank_batch, True, args.num_workers, device, sampler, args.seed)
    valid_loader = make_loader(valid_set, per_rank_batch, False, args.num_workers, device)
    steps_per_epoch = len(train_loader)

    ddp_model = model
    if world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif device.type == "cuda" and torch.cuda.device_count() > 1:
        log(f"note: {torch.cuda.device_count()} GPUs found but this run uses one; to use them all: "
            f"torchrun --nproc_per_node {torch.cuda.device_count()} main.py ...")
    if args.compile:  # training steps only; validation and saving use the plain module, which shares the weights
        ddp_model = torch.compile(ddp_model)
    loss_fn = build_loss(args.loss, gamma=args.gamma, label_smoothing=args.label_smoothing).to(device)
    # With --freeze_text_epochs N the text encoder joins the optimizer (with fresh AdamW state) after epoch N.
    text_params = list(model.text_encoder.parameters())
    text_ids = {id(p) for p in text_params}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) not in text_ids or not args.freeze_text_epochs],
                                  lr=args.lr, weight_decay=args.weight_decay, fused=device.type == "cuda")
    total_steps = args.n_epoch * steps_per_epoch
    warmup_steps = max(1, int(args.warmup * total_steps))

    # the loop's state: what a checkpoint saves and --resume restores
    state = {"epoch": 1, "batch": 0, "step": 0, "history": [], "best_acc": -1.0, "best_weights": None, "valid_by_type": {},
             "partial": {"loss_sum": 0.0, "correct": 0, "seen": 0}}
    if resume:
        run_dir = resume
        if os.path.isfile(last):
            state, optimizer_state = util.load_checkpoint(last, model, config, answers)
            if args.freeze_text_epochs and state["epoch"] > args.freeze_text_epochs:  # the groups as saved
                optimizer.add_param_group({"params": text_params})
            util.load_optimizer_state(optimizer, optimizer_state, last)
            log(f"resuming {run_dir} at epoch {state['epoch']}, batch {state['batch']} of {steps_per_epoch}")
        else:
            log(f"{run_dir} has no {util.LAST_CHECKPOINT} yet (stopped during its first epoch): starting it again")
        if is_main:  # weights of epochs trained again now would be stale; .tmp files are writes cut short
            for path in glob.glob(os.path.join(run_dir, util.WEIGHTS_GLOB)) + glob.glob(os.path.join(run_dir, "*.tmp")):
                if os.path.basename(path) != state["best_weights"]:
                    os.remove(path)
    else:
        run_dir = util.broadcast_object(util.make_run_dir(args.results_dir, args.train_data) if is_main else None)
        if is_main:
            tokenizer.save_pretrained(os.path.join(run_dir, util.TOKENIZER_DIR))
            model.text_encoder.config.save_pretrained(os.path.join(run_dir, util.TEXT_CONFIG_DIR))
            util.write_json(os.path.join(run_dir, util.ANSWERS_FILE), answers)
            config["data_stats"] = {"train": len(train_df), "valid": len(valid_df), "answers": len(answers),
                                    "valid_unknown_answers": unknown_valid, "skipped_rows": len(skipped)}
            util.write_json(os.path.join(run_dir, util.CONFIG_FILE), config)
        log(f"run directory: {run_dir}")
    if is_main and len(skipped):
        skipped.to_csv(os.path.join(run_dir, "skipped_rows.csv"), index=False)

    def save_last():
        if is_main:
            util.save_checkpoint(os.path.join(run_dir, util.LAST_CHECKPOINT), model, optimizer, state, config, answers)

    def saving_failed(error):
        last = os.path.join(run_dir, util.LAST_CHECKPOINT)
        kept = (f"the last good checkpoint {last} is intact; then continue with `python main.py --resume {run_dir}`"
                if os.path.isfile(last) else "no checkpoint was written yet; then start the run again")
        return util.CheckpointError(f"{error} Training stopped: {kept}.")

    stop, restore_signals = catch_stop_signals()
    try:
        for epoch in range(state["epoch"], args.n_epoch + 1):
            ddp_model.train()
            sampler.set_epoch(epoch)
            sampler.skip = state["batch"] * per_rank_batch
            partial, start = state["partial"], time.time()
            trainable = [p for group in optimizer.param_groups for p in group["params"]]
            frozen = " (text encoder frozen)" if epoch <= args.freeze_text_epochs else ""
            bar = tqdm(train_loader, desc=f"epoch {epoch}/{args.n_epoch}{frozen}", disable=not is_main,
                       initial=state["batch"], total=steps_per_epoch, dynamic_ncols=True)
            for batch in bar:
                label = batch["label"].to(device, non_blocking=True)
                logits = forward(ddp_model, batch, device, precision)
                loss = loss_fn(logits, label)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, args.clip_grad)
                for group in optimizer.param_groups:
                    group["lr"] = args.lr * lr_factor(state["step"], total_steps, warmup_steps)
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                partial["seen"] += len(label)
                partial["loss_sum"] += loss.item() * len(label)
                partial["correct"] += int((logits.argmax(-1) == label).sum())
                bar.set_postfix(loss=f"{partial['loss_sum'] / partial['seen']:.4f}",
                                acc=f"{partial['correct'] / partial['seen']:.3f}", refresh=False)
                signum = stop_requested(stop, world_size, device)
                if signum and state["batch"] < steps_per_epoch:
                    try:
                        save_last()
                    except util.CheckpointError as e:
                        raise saving_failed(e) from None
                    if world_size > 1:
                        dist.barrier()  # a rank that exits first would make torchrun stop rank 0 mid-save
                    raise Interrupted(signum, run_dir)
            bar.close()
            train_stats = torch.tensor([partial["loss_sum"], partial["correct"], partial["seen"]],
                                       dtype=torch.float64, device=device)
            if world_size > 1:
                dist.all_reduce(train_stats)
            state.update(epoch=epoch + 1, batch=0, partial={"loss_sum": 0.0, "correct": 0, "seen": 0})
            if epoch == args.freeze_text_epochs:  # before `last` is saved, so that it holds the new group
                optimizer.add_param_group({"params": text_params})
            if is_main:
                valid = predict(model, valid_loader, device, precision, loss_fn, desc="valid")
                loss_total, correct_total, seen_total = train_stats.tolist()
                row = {"epoch": epoch, "train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total,
                       "train_samples": int(seen_total), "valid_loss": valid["loss"], "valid_acc": valid["accuracy"],
                       "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - start}
                state["history"].append(row)
                improved = valid["accuracy"] > state["best_acc"]
                old_best = state["best_weights"]
                if improved:
                    state["best_acc"] = valid["accuracy"]
                    state["best_weights"] = f"infer_model_{100 * state['best_acc']:.2f}.safetensors"
                    index = valid["index"].numpy()
                    rows = valid_set.df.iloc[index].assign(correct=(valid["pred"][:, 0] == valid_set.labels[index]).numpy())
                    state["valid_by_type"] = report.accuracy_table(rows)
                try:
                    if improved:
                        util.save_weights(model, os.path.join(run_dir, state["best_weights"]), config, answers)
                    util.write_json(os.path.join(run_dir, "history.json"), state["history"])
                    plots.plot_curves(state["history"], os.path.join(run_dir, "curves.png"))
                    save_last()
                except util.CheckpointError as e:
                    raise saving_failed(e) from None
                # only now that `last` names the new best may the old one go: a crash in between keeps both
                if old_best and old_best != state["best_weights"]:
                    os.remove(os.path.join(run_dir, old_best))
                log(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                    f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f}"
                    f"{' (best, saved)' if improved else ''} | {row['seconds']:.1f}s")
            if world_size > 1:
                dist.barrier()
            signum = stop_requested(stop, world_size, device)
            if signum and epoch < args.n_epoch:
                raise Interrupted(signum, run_dir)
    finally:
        restore_signals()
    if is_main:
        best = max(state["history"], key=lambda r: r["valid_acc"])
        config.update(best_epoch=best["epoch"], best_valid_acc=state["best_acc"], weights=state["best_weights"])
        util.write_json(os.path.join(run_dir, util.CONFIG_FILE), config)
        report.write_training_report(run_dir, config, select_rows(df, None, args.train_data, lang=args.lang), answers,
                                     train_df["answer"].value_counts(), state["history"], state["valid_by_type"])
        log(f"best valid accuracy {state['best_acc']:.4f} at epoch {best['epoch']}; "
            f"weights: {os.path.join(run_dir, state['best_weights'])}")
    if world_size > 1:
        dist.destroy_process_group()
    return run_dir
