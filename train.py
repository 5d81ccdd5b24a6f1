"""Training loop: data, model, focal loss, AdamW with warmup and cosine decay, validation each epoch, the best
epoch saved as safetensors plus everything needed to use it without the training data.

Runs on a CPU, one GPU, or several GPUs / nodes under torchrun (DistributedDataParallel)."""
import functools
import math
import os
import time

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import util
from focal import build_loss
from model import (VQAModel, build_image_encoder, build_text_encoder, image_model_spec, load_tokenizer,
                   small_text_config, train_tokenizer)
from vqa_dataset import ImageCache, VQADataset, build_answer_vocab, collate, load_data, select_rows, to_model_input

SCRATCH = "scratch"  # --text_model scratch: a small XLM-R built from a config, with a tokenizer trained on the questions
CONFIG_KEYS = ["train_data", "data_dir", "lang", "text_model", "image_model", "pretrained", "img_size", "max_token",
               "dim_h", "dropout", "use_transformer_layer", "n_transformer_layers", "n_heads", "ablate", "text_pool",
               "loss", "gamma", "label_smoothing", "n_epoch", "lr", "batch_size", "weight_decay", "warmup",
               "freeze_text_epochs", "seed", "preset", "skip_bad"]


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


def train(args):
    device = util.pick_device(args.device)
    rank, world_size = util.init_distributed(device)
    is_main = rank == 0
    if device.type == "cpu" and world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # don't oversubscribe the cores
    util.set_seed(args.seed)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    log = print if is_main else (lambda *a, **k: None)

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

    tokenizer = train_tokenizer(list(train_df["question"])) if args.text_model == SCRATCH else load_tokenizer(args.text_model)
    config = {k: getattr(args, k) for k in CONFIG_KEYS}
    image_arch, image_kwargs = image_model_spec(args.image_model, args.image_model_kwargs)
    config.update(num_answers=len(answers), image_arch=image_arch, image_model_kwargs=image_kwargs,
                  scratch_text=args.scratch_text, world_size=world_size)
    model = build_model(config, tokenizer=tokenizer).to(device, memory_format=torch.channels_last)  # faster convs
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, text {args.text_model}, "
        f"image {args.image_model} at {args.img_size}px, transformer layer {'on' if args.use_transformer_layer else 'off'}, "
        f"device {device} x{world_size}, precision {precision}")

    names = pd.concat([train_df["image"], valid_df["image"]])
    if is_main:  # rank 0 decodes the images once; the others then map its file
        ImageCache(args.data_dir, names, args.img_size, num_workers=max(args.num_workers, os.cpu_count() or 1))
    if world_size > 1:
        dist.barrier()
    images = ImageCache(args.data_dir, names, args.img_size, progress=False)
    train_set = VQADataset(train_df, images, tokenizer, answer_to_id, args.max_token)
    valid_set = VQADataset(valid_df, images, tokenizer, answer_to_id, args.max_token)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed) if world_size > 1 else None
    per_rank_batch = max(1, args.batch_size // world_size)
    train_loader = make_loader(train_set, per_rank_batch, True, args.num_workers, device, sampler, args.seed)
    valid_loader = make_loader(valid_set, per_rank_batch, False, args.num_workers, device)

    ddp_model = model
    if world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = build_loss(args.loss, gamma=args.gamma, label_smoothing=args.label_smoothing).to(device)
    # With --freeze_text_epochs the text encoder joins the optimizer (with fresh AdamW state) only afterwards.
    text_params = list(model.text_encoder.parameters())
    text_ids = {id(p) for p in text_params}
    trainable = [p for p in model.parameters() if id(p) not in text_ids or not args.freeze_text_epochs]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay, fused=device.type == "cuda")
    total_steps, step = args.n_epoch * len(train_loader), 0
    warmup_steps = max(1, int(args.warmup * total_steps))

    run_dir = util.broadcast_object(util.make_run_dir(args.results_dir, args.train_data) if is_main else None)
    if is_main:
        tokenizer.save_pretrained(os.path.join(run_dir, util.TOKENIZER_DIR))
        model.text_encoder.config.save_pretrained(os.path.join(run_dir, util.TEXT_CONFIG_DIR))
        util.write_json(os.path.join(run_dir, util.ANSWERS_FILE), answers)
        if len(skipped):
            skipped.to_csv(os.path.join(run_dir, "skipped_rows.csv"), index=False)
        config["data_stats"] = {"train": len(train_df), "valid": len(valid_df), "answers": len(answers),
                                "valid_unknown_answers": unknown_valid, "skipped_rows": len(skipped)}
        util.write_json(os.path.join(run_dir, util.CONFIG_FILE), config)
        log(f"run directory: {run_dir}")

    history, best_acc, best_path = [], -1.0, None
    for epoch in range(1, args.n_epoch + 1):
        ddp_model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        start, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        frozen = " (text encoder frozen)" if epoch <= args.freeze_text_epochs else ""
        if args.freeze_text_epochs and epoch == args.freeze_text_epochs + 1:
            optimizer.add_param_group({"params": text_params})
            trainable = list(model.parameters())
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{args.n_epoch}{frozen}", disable=not is_main, dynamic_ncols=True)
        for batch in bar:
            label = batch["label"].to(device, non_blocking=True)
            logits = forward(ddp_model, batch, device, precision)
            loss = loss_fn(logits, label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, args.clip_grad)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_factor(step, total_steps, warmup_steps)
            optimizer.step()
            step += 1
            seen += len(label)
            loss_sum += loss.item() * len(label)
            correct += int((logits.argmax(-1) == label).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        train_stats = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=device)
        if world_size > 1:
            dist.all_reduce(train_stats)
        if is_main:
            valid = predict(model, valid_loader, device, precision, loss_fn, desc="valid")
            loss_total, correct_total, seen_total = train_stats.tolist()
            row = {"epoch": epoch, "train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total,
                   "train_samples": int(seen_total), "valid_loss": valid["loss"], "valid_acc": valid["accuracy"],
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - start}
            history.append(row)
            improved = valid["accuracy"] > best_acc
            if improved:
                best_acc = valid["accuracy"]
                new_path = os.path.join(run_dir, f"infer_model_{100 * best_acc:.2f}.safetensors")
                util.save_weights(model, new_path)
                if best_path and best_path != new_path:
                    os.remove(best_path)
                best_path = new_path
            util.write_json(os.path.join(run_dir, "history.json"), history)
            log(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f}{' (best, saved)' if improved else ''} "
                f"| {row['seconds']:.1f}s")
        if world_size > 1:
            dist.barrier()
    if is_main:
        best_epoch = max(history, key=lambda r: r["valid_acc"])["epoch"]
        config.update(best_epoch=best_epoch, best_valid_acc=best_acc, weights=os.path.basename(best_path))
        util.write_json(os.path.join(run_dir, util.CONFIG_FILE), config)
        log(f"best valid accuracy {best_acc:.4f} at epoch {best_epoch}; weights: {best_path}")
    if world_size > 1:
        dist.destroy_process_group()
    return run_dir
