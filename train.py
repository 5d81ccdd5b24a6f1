"""Training loop: data, model, focal loss, AdamW with warmup and cosine decay, validation each epoch, the best
epoch saved as safetensors plus everything needed to use it without the training data.

    setup → data → model and optimizer → start or resume → for each epoch: train one epoch, validate, end the epoch
    (history, best weights, checkpoint) → report

Runs on a CPU, one GPU, or several GPUs / nodes under torchrun (DistributedDataParallel)."""
import glob
import math
import os
import signal
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import checkpoints
import knowledge
import plots
import report
import tracking
import util
from answering import forward, make_dataset, predict, say_truncation, to_device
from encoders import SCRATCH, load_tokenizer, small_text_config, train_tokenizer
from focal import build_loss
from images import ImageCache, ImageFiles
from models import attach_run_knowledge, build_model, run_config, run_model
from splits import SPLIT_FILE, report_shared_images, split_table, with_valid_fold
from triples import triple_hits
from loaders import EpochSampler, ShardSampler, batch_count, make_loader
from vqa_dataset import DataError, build_answer_vocab, load_data, select_rows


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    precision: str

    @property
    def is_main(self):
        return self.rank == 0

    def log(self, *args):
        if self.is_main:
            print(*args)


@dataclass
class Data:
    all_rows: pd.DataFrame
    train: pd.DataFrame
    valid: pd.DataFrame
    skipped: pd.DataFrame
    answers: list


class Interrupted(Exception):
    """SIGTERM or SIGINT: the run saved its state and stopped; `python main.py --resume RUN_DIR` continues it."""

    def __init__(self, signum, run_dir):
        super().__init__(f"stopped by {signal.Signals(signum).name}; the state was saved. "
                         f"Continue with: python main.py --resume {run_dir}")
        self.signum = signum


def train(args):
    rt = setup(args)
    data = load_training_data(args, rt)
    run_dir, config, tokenizer, model, checkpoint = start_or_resume(args, rt, data)
    model = model.to(rt.device, memory_format=torch.channels_last)  # faster convs
    rt.log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, text {args.text_model}, "
           f"image {args.image_model} at {args.img_size}px, transformer layer "
           f"{'on' if args.use_transformer_layer else 'off'}, device {rt.device} x{rt.world_size}"
           f"{f' (torch.distributed, {dist.get_backend()})' if util.distributed() else ''}, precision {rt.precision}")
    train_loader, valid_loader = make_loaders(args, rt, data, tokenizer, model, run_dir)
    optimizer = build_optimizer(model, args, rt.device)
    loss_fn = build_loss(args.loss, gamma=args.gamma, label_smoothing=args.label_smoothing).to(rt.device)
    for note in model.start_training(train_loader.dataset.targets):
        rt.log(note)
    state = restore(checkpoint, optimizer, run_dir, rt, epoch_steps(train_loader))
    tracker = open_tracker(args, rt, run_dir, config, state, epoch_steps(train_loader))

    stop = StopSignals(rt)
    wrapped, frozen = None, None
    with stop, tracker:
        for epoch in range(len(state["history"]) + 1, args.n_epoch + 1):
            if frozen != (epoch <= args.freeze_text_epochs):
                frozen = epoch <= args.freeze_text_epochs
                wrapped = wrap(model, rt, args.compile, frozen)
            start = time.time()
            try:
                signum = train_one_epoch(wrapped, model, train_loader, optimizer, loss_fn, state, epoch, args, rt,
                                         stop, frozen, tracker)
            except NonFinite as e:
                raise NonFinite(f"{e} at epoch {epoch}, step {state['batch'] + 1}: {kept(run_dir, state)}") from None
            if signum:
                save_or_explain(run_dir, save_last, run_dir, model, optimizer, state, config, data.answers, rt)
                util.barrier()  # a rank that exits first would make torchrun stop rank 0 mid-save
                raise Interrupted(signum, run_dir)
            valid = validate(model, valid_loader, loss_fn, rt)
            save_or_explain(run_dir, end_epoch, epoch, valid, time.time() - start, state, run_dir, model, optimizer,
                            config, data, valid_loader.dataset, rt, tracker)
            signum = stop.requested()
            if signum and epoch < args.n_epoch:
                raise Interrupted(signum, run_dir)
    if rt.is_main:
        write_report(run_dir, config, data, state, args)
    if util.distributed():
        dist.destroy_process_group()
    return run_dir


# ---------------------------------------------------------------- setup and data

def setup(args):
    device = util.pick_device(args.device)
    rank, world_size = util.init_distributed(device)
    if args.batch_size < world_size:
        raise util.UsageError(f"--batch_size {args.batch_size} is smaller than the {world_size} processes; each needs "
                              f"at least one sample per step.")
    if device.type == "cpu" and world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # don't oversubscribe the cores
    util.set_seed(args.seed)
    return Runtime(device, rank, world_size, util.pick_precision(device, args.precision))


def load_training_data(args, rt):
    with util.main_process_first():  # rank 0 makes split.csv and the image check cache; the others read them
        # a resumed run keeps the split it started with
        df, skipped = load_data(args.data_dir, args.skip_bad, progress=rt.is_main, run_dir=args.resume)
    if args.valid_fold and not args.resume:  # a resumed run's split is already its fold's
        df = with_valid_fold(df, args.valid_fold, f"{args.data_dir}/data.csv", progress=rt.is_main)
    if rt.is_main:
        report_shared_images(select_rows(df, lang=args.lang))
    train_df = select_rows(df, "train", args.train_data, lang=args.lang)
    valid_df = select_rows(df, "valid", args.train_data, lang=args.lang)
    if len(train_df) == 0 or len(valid_df) == 0:
        raise DataError(f"no train or valid rows for --train_data {args.train_data} --lang {args.lang} in "
                        f"{args.data_dir}/data.csv (train {len(train_df)}, valid {len(valid_df)}).")
    answers = build_answer_vocab(train_df)
    unknown = int((~valid_df["answer"].isin(set(answers))).sum())
    rt.log(f"data: {len(train_df)} train / {len(valid_df)} valid rows, {len(answers)} answers"
           + (f"; {unknown} valid rows have answers never seen in training and count as wrong" if unknown else ""))
    return Data(df, train_df, valid_df, skipped, answers)


def make_loaders(args, rt, data, tokenizer, model, run_dir=None):
    """The training loader (images at the model's training size) and the validation loader, sharded over ranks."""
    def images(names, size):
        if not args.image_cache:
            return ImageFiles(args.data_dir, names, size)
        with util.main_process_first():  # rank 0 decodes the images once; the others then map its file
            return ImageCache(args.data_dir, names, size, progress=rt.is_main,
                              num_workers=max(args.num_workers, os.cpu_count() or 1),
                              user=run_dir if rt.is_main else None)

    train_size = model.config.train_size(args.img_size)
    if train_size == args.img_size:  # one cache for both
        train_images = valid_images = images(pd.concat([data.train["image"], data.valid["image"]]), args.img_size)
    else:
        train_images, valid_images = images(data.train["image"], train_size), images(data.valid["image"], args.img_size)
    train_set = make_dataset(model, data.train, train_images, tokenizer, data.answers, args.max_token, training=True)
    if rt.is_main:
        say_truncation(model, tokenizer, data.train, args.max_token)
    valid_set = make_dataset(model, data.valid, valid_images, tokenizer, data.answers, args.max_token)
    if valid_set.unseen():
        rt.log(f"knowledge: {valid_set.unseen()} valid rows have a triple with a head, relation or tail outside the "
               f"vocabulary (it takes the learned unknown vector; a predicted triple cannot name it)")
    per_rank_batch = max(1, args.batch_size // rt.world_size)
    train_loader = make_loader(train_set, per_rank_batch, args.num_workers, rt.device,
                               EpochSampler(train_set, rt.world_size, rt.rank, args.seed), args.seed)
    valid_loader = make_loader(valid_set, per_rank_batch, args.num_workers, rt.device,
                               ShardSampler(valid_set, rt.world_size, rt.rank))
    return train_loader, valid_loader


# ---------------------------------------------------------------- model, optimizer, start or resume

def initial_model(config, tokenizer, vocab=None, kb=None, embeddings=None):
    """The model training starts from: encoders from their sources, or a scratch text encoder sized to the tokenizer;
    the vocabulary, KB and KG embeddings attached (knowledge.attach)."""
    scratch = config["text_model"] == SCRATCH
    text_config = small_text_config(len(tokenizer), config["max_token"], **config["scratch_text"]) if scratch else None
    model = build_model(config, text_config, from_sources=True)
    if vocab is not None:
        knowledge.attach(model, vocab, tokenizer, config["max_token"], kb, embeddings)
    return model


def scratch_tokenizer(model_config, train):
    """A tokenizer trained on the training rows' questions, and the knowledge words the model reads."""
    return train_tokenizer(list(train["question"]) + [t for t in model_config.knowledge_texts(train) if t])


def start_or_resume(args, rt, data):
    """(run_dir, config, tokenizer, model, checkpoint or None): a new run directory with the run's files, or the run
    to resume with the model as its last checkpoint holds it."""
    if args.resume:
        return resume_run(args.resume, rt, data)
    model_config = args.model_config
    tokenizer = scratch_tokenizer(model_config, data.train) if args.text_model == SCRATCH else \
        load_tokenizer(args.text_model)
    config = run_config(args, model_config, len(data.answers), rt.world_size)
    vocab, kb, embeddings = knowledge.prepare(args, model_config, config, pd.concat([data.train, data.valid]),
                                              rt.log) if model_config.vocab else (None, None, None)
    model = initial_model(config, tokenizer, vocab, kb, embeddings)
    run_dir = util.broadcast_object(util.make_run_dir(args.results_dir, args.train_data) if rt.is_main else None)
    if rt.is_main:
        if vocab is not None:
            knowledge.save_run_knowledge(run_dir, vocab, kb, args.kge_dir)
        tokenizer.save_pretrained(os.path.join(run_dir, util.TOKENIZER_DIR))
        model.text_encoder.config.save_pretrained(os.path.join(run_dir, util.TEXT_CONFIG_DIR))
        util.write_json(os.path.join(run_dir, util.ANSWERS_FILE), data.answers)
        # the run's own split, so that it is evaluated on its test rows whatever happens to the data's split later
        util.write_csv(os.path.join(run_dir, SPLIT_FILE),
                       split_table(pd.concat([data.all_rows, data.skipped]).sort_values("row")))
        config["data_stats"] = {"train": len(data.train), "valid": len(data.valid), "answers": len(data.answers),
                                "valid_unknown_answers": int((~data.valid["answer"].isin(set(data.answers))).sum()),
                                "skipped_rows": len(data.skipped)}
        util.write_json(os.path.join(run_dir, util.CONFIG_FILE), config)
        if len(data.skipped):
            data.skipped.to_csv(os.path.join(run_dir, "skipped_rows.csv"), index=False)
    rt.log(f"run directory: {run_dir}")
    return run_dir, config, tokenizer, model, None


def resume_run(run_dir, rt, data):
    saved = util.read_json(os.path.join(run_dir, util.ANSWERS_FILE))
    if saved != data.answers:
        raise DataError(f"the training data changed since {run_dir} started: "
                        + checkpoints.answers_difference(saved, "the run's answers.json", data.answers, "the data now")
                        + ". Resume with the data the run started with, or start a new run.")
    config = util.read_json(os.path.join(run_dir, util.CONFIG_FILE))
    if config["world_size"] != rt.world_size:  # the batches, steps and learning rate schedule depend on it
        raise DataError(f"{run_dir} was trained by {config['world_size']} process(es); resume it with as many "
                        f"(now {rt.world_size}).")
    last = os.path.join(run_dir, checkpoints.LAST_CHECKPOINT)
    tokenizer = load_tokenizer(os.path.join(run_dir, util.TOKENIZER_DIR))
    if os.path.isfile(last):
        from transformers import AutoConfig

        # from the run's own text config: no download, the weights come from `last`
        model = build_model(config, AutoConfig.from_pretrained(os.path.join(run_dir, util.TEXT_CONFIG_DIR)))
        attach_run_knowledge(model, run_dir, config, tokenizer)
        checkpoint = checkpoints.load_checkpoint(last, model, config, data.answers, rt.rank)
    else:
        rt.log(f"{run_dir} has no {checkpoints.LAST_CHECKPOINT} yet (stopped during its first epoch): starting it "
               f"again")
        run_files = knowledge.load_run_knowledge(run_dir, run_model(config, run_dir))
        model, checkpoint = initial_model(config, tokenizer, *run_files), None
    if rt.is_main:  # weights of epochs trained again now would be stale; .tmp files are writes cut short
        keep = best_weights_name(checkpoint[0]["history"] if checkpoint else [])
        stale = glob.glob(os.path.join(run_dir, checkpoints.WEIGHTS_GLOB)) + glob.glob(os.path.join(run_dir, "*.tmp"))
        for path in stale:
            if os.path.basename(path) != keep:
                os.remove(path)
    return run_dir, config, tokenizer, model, checkpoint


def restore(checkpoint, optimizer, run_dir, rt, steps_per_epoch):
    """The loop's state, what a checkpoint saves: the history of finished epochs (the epoch, the step of the
    learning-rate schedule and the best weights follow from it), the batch reached in the current epoch, this
    rank's partial sums of it, and the validation accuracy per type of the best epoch."""
    state = {"history": [], "batch": 0, "partial": zero_sums(), "valid_by_type": {}}
    if checkpoint is not None:
        saved, own, optimizer_state = checkpoint
        state.update(saved, partial={**zero_sums(), **checkpoints.restore_rank_state(own, rt.device)})
        checkpoints.load_optimizer_state(optimizer, optimizer_state, os.path.join(run_dir, checkpoints.LAST_CHECKPOINT))
        rt.log(f"resuming {run_dir} at epoch {len(state['history']) + 1}, batch {state['batch']} of {steps_per_epoch}")
    return state


def open_tracker(args, rt, run_dir, config, state, steps_per_epoch):
    """--report_to's tracker, on rank 0 only; a resumed run continues from the steps its checkpoint holds."""
    if not rt.is_main:
        return tracking.NoTracker()
    done = len(state["history"]) * steps_per_epoch + state["batch"]
    return tracking.open_tracker(args.report_to, run_dir, config, done if args.resume else None)


SUMS = ["loss_sum", "correct", "seen", "triples", "triple_hits"]  # an epoch's running sums (triples: rows with one)


def zero_sums():
    return dict.fromkeys(SUMS, 0)


def build_optimizer(model, args, device):
    """AdamW over every parameter, without weight decay for biases, norms, embeddings and position parameters
    (timm's param_groups_weight_decay). Built while every parameter requires grad: a frozen text encoder's
    parameters then simply get no gradient, which AdamW skips, and start moving (with fresh moments) once it
    is unfrozen."""
    from timm.optim import param_groups_weight_decay

    no_decay = [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Embedding)]
    no_decay += [name for name, _ in model.named_parameters() if name.endswith(("_pos", "_unknown"))]
    groups = param_groups_weight_decay(model, args.weight_decay, no_weight_decay_list=no_decay)
    return torch.optim.AdamW(groups, lr=args.lr, fused=device.type == "cuda")


def wrap(model, rt, compile_model, text_frozen):
    """The module the training steps run: DistributedDataParallel under torchrun, then torch.compile if asked.

    A frozen text encoder takes no gradient at all rather than only no optimizer step: with requires_grad off,
    autograd never runs its backward pass or keeps its activations, and DistributedDataParallel, which registers
    the parameters that require grad when it is built, leaves it out of the gradient all-reduce. Because DDP
    decides that when it is built, the model is wrapped again whenever the text encoder is frozen or unfrozen."""
    for encoder in model.text_encoders():
        encoder.requires_grad_(not text_frozen)
    wrapped = model
    if util.distributed():
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda"
                                                      else None)
    if compile_model:  # training steps only; validation and saving use the plain module, which shares the weights
        wrapped = torch.compile(wrapped)
    return wrapped


# ---------------------------------------------------------------- one epoch

def lr_factor(step, total_steps, warmup_steps, schedule="cosine"):
    """Linear warmup, then cosine decay to zero or (constant, as GEL-VQA) the peak learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def train_step(wrapped, model, optimizer, loss_fn, batch, device, precision, clip_grad, lr):
    """One training step at learning rate lr; returns the batch's sums (SUMS) as numbers. model: the module that
    wrapped runs (DistributedDataParallel, torch.compile), whose family says the loss."""
    batch = to_device(batch, device)
    out = forward(wrapped, batch, precision)
    loss = model.loss(out, batch, loss_fn)
    optimize(wrapped, optimizer, loss, clip_grad, lr)
    label = batch["label"]
    triples, *_, hits = triple_hits(out["triple"], batch["triples"][:, 0]) if "triple" in out else [0, 0]
    return dict(zip(SUMS, [loss.item() * len(label), int((out["answer"].argmax(-1) == label).sum()), len(label),
                           triples, hits]))


class NonFinite(util.UsageError):
    """The training loss or its gradient became inf or nan; the step was not taken."""


def optimize(wrapped, optimizer, loss, clip_grad, lr):
    """Backward, gradient norm clipping and an optimizer step at learning rate lr; NonFinite, before the step, where
    the gradient is not finite (a non-finite loss makes it so). Every rank sees the same all-reduced gradient, so all
    stop at the same step without a word between them."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), clip_grad or math.inf)
    if not torch.isfinite(norm):
        raise NonFinite(f"the training loss or its gradient is not finite (loss {loss.item()}, gradient norm "
                        f"{norm.item()})")
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()


def kept(run_dir, state):
    """What a run stopped mid-epoch by a non-finite loss keeps, and how to go on."""
    if not state["history"]:
        return "no epoch has finished, so no checkpoint was written. Lower --lr (or check the data) and start again."
    return (f"the step was not taken and nothing of this epoch was saved; {run_dir}/{checkpoints.LAST_CHECKPOINT} "
            f"holds epoch {len(state['history'])} and {best_weights_name(state['history'])} the best one. Lower --lr "
            f"(or check the data) and start again; `python main.py --resume {run_dir}` would go on from that "
            f"checkpoint with the same options.")


def epoch_steps(loader):
    """Steps of a whole epoch, however far into it the sampler starts."""
    return batch_count(loader.batch_sampler.sampler.num_samples, loader.batch_sampler.batch_size)


def train_one_epoch(wrapped, model, loader, optimizer, loss_fn, state, epoch, args, rt, stop, text_frozen, tracker):
    """Trains from state["batch"] to the end of the epoch, adding to state["partial"]; returns the signal number if
    SIGTERM/SIGINT stopped it before the end (0 otherwise)."""
    model.train()
    for encoder in model.text_encoders():
        encoder.train(not text_frozen)  # a frozen encoder is a fixed feature extractor: no dropout
    steps_per_epoch = epoch_steps(loader)
    total_steps = args.n_epoch * steps_per_epoch
    warmup_steps = max(1, int(args.warmup * total_steps))
    loader.batch_sampler.sampler.set_epoch(epoch)
    loader.batch_sampler.sampler.skip = state["batch"] * loader.batch_sampler.batch_size
    partial = state["partial"]
    bar = tqdm(loader, desc=f"epoch {epoch}/{args.n_epoch}{' (text encoder frozen)' if text_frozen else ''}",
               disable=not rt.is_main, initial=state["batch"], total=steps_per_epoch, dynamic_ncols=True)
    for batch in bar:
        step = (epoch - 1) * steps_per_epoch + state["batch"]
        lr = args.lr * lr_factor(step, total_steps, warmup_steps, args.schedule)
        sums = train_step(wrapped, model, optimizer, loss_fn, batch, rt.device, rt.precision, args.clip_grad, lr)
        state["batch"] += 1
        for key, value in sums.items():
            partial[key] += value
        tracker.log(step + 1, {"train/loss": sums["loss_sum"] / sums["seen"], "train/lr": lr})
        bar.set_postfix(loss=f"{partial['loss_sum'] / partial['seen']:.4f}",
                        acc=f"{partial['correct'] / partial['seen']:.3f}",
                        **({"hrt": f"{partial['triple_hits'] / partial['triples']:.3f}"} if partial["triples"] else {}),
                        refresh=False)
        signum = stop.requested()
        if signum and state["batch"] < steps_per_epoch:
            return signum
    bar.close()
    return 0


def validate(model, loader, loss_fn, rt):
    """Validation sharded over the ranks (ShardSampler): loss and accuracy of the whole set on every rank, and on
    rank 0 each row's index and top answer, for the accuracy per type."""
    if util.distributed():  # BatchNorm statistics as rank 0 saves them (DDP syncs them only at the next forward)
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    result = predict(model, loader, rt.device, rt.precision, loss_fn, desc="valid", progress=rt.is_main)
    gold = loader.dataset.targets.get("triples")
    hits = triple_hits(result["triple"], gold[result["index"], 0]) if "triple" in result else []
    loss_sum, n_loss, correct, n, *hits = util.all_reduce_sum(
        [result["loss_sum"], result["n_loss"], result["correct"], result["n"], *hits], rt.device)
    shards = util.gather_object((result["index"], result["right"]))
    rows = (torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards])) if rt.is_main else None
    triple = {f"valid_{k}": v / max(hits[0], 1) for k, v in zip("hrt", hits[1:4])} if hits else {}
    if hits:
        triple["valid_hrt"] = hits[4] / max(hits[0], 1)
    return {"loss": loss_sum / max(n_loss, 1), "accuracy": correct / max(n, 1), "rows": rows, "triple": triple}


# ---------------------------------------------------------------- end of an epoch, saving, report

def best_weights_name(history):
    """The best epoch's weights file: its validation accuracy is in the name (None before the first epoch)."""
    if not history:
        return None
    return f"infer_model_{100 * max(r['valid_acc'] for r in history):.2f}.safetensors"


def end_epoch(epoch, valid, seconds, state, run_dir, model, optimizer, config, data, valid_set, rt, tracker):
    """Adds the epoch to the history, saves the best weights when it improved, history.json, curves.png and the
    checkpoint (every rank's part gathered to rank 0), and only then deletes the previous best weights."""
    loss_sum, correct, seen, triples, triple_hits = util.all_reduce_sum([state["partial"][k] for k in SUMS], rt.device)
    old_best = best_weights_name(state["history"])
    improved = not state["history"] or valid["accuracy"] > max(r["valid_acc"] for r in state["history"])
    state["history"].append({"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                             "train_samples": int(seen), "valid_loss": valid["loss"], "valid_acc": valid["accuracy"],
                             **({"train_hrt": triple_hits / max(triples, 1)} if valid["triple"] else {}),
                             **valid["triple"], "lr": optimizer.param_groups[0]["lr"], "seconds": seconds})
    steps = epoch * state["batch"]  # every epoch has as many steps
    state.update(batch=0, partial=zero_sums())
    if rt.is_main:
        index, right = valid["rows"]
        by_type = report.accuracy_table(valid_set.df.iloc[index.numpy()].assign(correct=right.numpy()))
        tracker.log(steps, epoch_values(state["history"][-1], by_type))
        tracker.flush()  # what the checkpoint below holds is on disk too: a resumed run's curves have no gap
        if improved:
            state["valid_by_type"] = by_type
            checkpoints.save_weights(model, os.path.join(run_dir, best_weights_name(state["history"])), config,
                                     data.answers)
        util.write_json(os.path.join(run_dir, "history.json"), state["history"])
        plots.plot_curves(state["history"], os.path.join(run_dir, "curves.png"))
    save_last(run_dir, model, optimizer, state, config, data.answers, rt)
    # only now that `last` holds the history that names the new best may the old one go: a crash keeps both
    if rt.is_main and old_best and old_best != best_weights_name(state["history"]):
        os.remove(os.path.join(run_dir, old_best))
    row = state["history"][-1]
    triple = " ".join(f"{k[6:]} {row[k]:.3f}" for k in ("valid_h", "valid_r", "valid_t", "valid_hrt") if k in row)
    rt.log(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
           f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f}{f' triple {triple}' if triple else ''}"
           f"{' (best, saved)' if improved else ''} | {row['seconds']:.1f}s")


def epoch_values(row, by_type):
    """An epoch's history row and its valid accuracy per question type and category, as tracker tags."""
    values = {"train/epoch_loss": row["train_loss"], "train/acc": row["train_acc"], "valid/loss": row["valid_loss"],
              "valid/acc": row["valid_acc"], **{f"valid/acc_{name}": v["accuracy"] for name, v in by_type.items()}}
    values.update({f"{k[:5]}/triple_{k[6:]}": row[k] for k in ("train_hrt", "valid_h", "valid_r", "valid_t",
                                                                   "valid_hrt") if k in row})
    return values


def save_last(run_dir, model, optimizer, state, config, answers, rt):
    """The checkpoint: every rank's partial sums and RNG states gathered to rank 0, which writes the file."""
    rank_states = util.gather_object(checkpoints.rank_state(state["partial"], rt.device))
    if rt.is_main:
        checkpoints.save_checkpoint(os.path.join(run_dir, checkpoints.LAST_CHECKPOINT), model, optimizer,
                             {k: v for k, v in state.items() if k != "partial"}, config, answers, rank_states)


def save_or_explain(run_dir, save, *args):
    """Runs a saving step; a file that cannot be written stops training with what was kept and how to go on."""
    try:
        save(*args)
    except util.CheckpointError as e:
        last = os.path.join(run_dir, checkpoints.LAST_CHECKPOINT)
        kept = (f"the last good checkpoint {last} is intact; then continue with `python main.py --resume {run_dir}`"
                if os.path.isfile(last) else "no checkpoint was written yet; then start the run again")
        raise util.CheckpointError(f"{e} Training stopped: {kept}.") from None


def write_report(run_dir, config, data, state, args):
    best = max(state["history"], key=lambda r: r["valid_acc"])
    config.update(best_epoch=best["epoch"], best_valid_acc=best["valid_acc"],
                  weights=best_weights_name(state["history"]))
    util.write_json(os.path.join(run_dir, util.CONFIG_FILE), config)
    report.write_training_report(run_dir, config, select_rows(data.all_rows, None, args.train_data, lang=args.lang),
                                 data.answers, data.train["answer"].value_counts(), state["history"],
                                 state["valid_by_type"])
    print(f"best valid accuracy {best['valid_acc']:.4f} at epoch {best['epoch']}; "
          f"weights: {os.path.join(run_dir, config['weights'])}")


class StopSignals:
    """SIGTERM/SIGINT only set a flag, so the current step finishes and the state is saved; a second one stops at
    once. requested() is the signal to stop at, the same on every rank (torchrun forwards SIGTERM to all, not at
    one instant)."""

    def __init__(self, rt):
        self.rt, self.signum, self.previous = rt, 0, {}

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handler(self, signum, frame):
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)

    def requested(self):
        if not util.distributed():
            return self.signum
        signum = torch.tensor([self.signum], device=self.rt.device)
        dist.all_reduce(signum, op=dist.ReduceOp.MAX)
        return int(signum)
