"""Train a model (the original's baseline by default; --model NAME for the others).

    python main.py --train_data all --n_epoch 50 --lr 3e-5 --batch_size 512 --max_token 50 [--use_transformer_layer]
    python main.py --preset sample            # small model on the embedded sample, CPU, minutes, no download
    python main.py ...                        # every visible GPU, one DistributedDataParallel process each (--nproc)
    torchrun --nnodes 2 --nproc_per_node 4 ... main.py ...   # several nodes
"""
import argparse
import os
import sys

import checkpoints
import knowledge
import models
import tracking
import util
from util import at_least, in_range, positive

# A preset fills in options; any flag given explicitly on the command line wins.
PRESETS = {
    # The embedded sample on a CPU in minutes, no download: a small XLM-R built from a config with a tokenizer
    # trained on the questions, a narrow ResNet-10 at 64 px, all randomly initialised.
    "sample": dict(
        data_dir="data/sample", text_model="scratch", image_model="resnet10t", pretrained=False,
        image_model_kwargs={"channels": [32, 64, 128, 256], "stem_width": 16},
        scratch_text={"hidden": 128, "layers": 2, "heads": 4},
        img_size=64, max_token=32, dim_h=256, dropout=0.0, text_pool="mean", n_heads=4,
        n_epoch=20, batch_size=64, lr=2e-3, warmup=0.05, freeze_text_epochs=5, num_workers=0,
    ),
    # The papers' training: GEL-VQA's as the BOK-VQA paper's code has it (AAAI 2024), for every model: XLM-R base (its
    # <s> token's last hidden state, no pooler) and an ImageNet ResNet50 at 224 px, AdamW at a constant 5e-5 without
    # warmup or gradient clipping, batch 128, 50 epochs, cross entropy; a model's own published recipe on top
    # (ModelConfig.recipe: HiLINK's batch of 100).
    "bokvqa": dict(
        text_model="xlm-roberta-base", image_model="resnet50", pretrained=True, img_size=224, max_token=50,
        dim_h=1024, dropout=0.2, text_pool="first", loss="ce", lr=5e-5, batch_size=128, n_epoch=50,
        schedule="constant", warmup=0.0, clip_grad=0.0, freeze_text_epochs=0,
    ),
}


def build_parser(suppress_defaults=False):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS if suppress_defaults else None)

    def add(*names, **kw):
        if suppress_defaults:
            kw.pop("default", None)
        p.add_argument(*names, **kw)

    # the original's options
    add("--train_data", default="all", choices=["A", "B", "all"],
        help="A: questions answerable from the image, B: questions needing outside knowledge, all: both")
    add("--n_epoch", type=at_least(1), default=50, help="number of epochs")
    add("--lr", type=positive(), default=3e-5, help="peak learning rate (AdamW, linear warmup then cosine decay)")
    add("--batch_size", type=at_least(1), default=512, help="global batch size (split across torchrun processes)")
    add("--max_token", type=at_least(3), default=50,
        help="token max length of a question (at least 3: <s>, one token, </s>)")
    add("--use_transformer_layer", action="store_true", default=False,
        help="add a Transformer encoder over image and question features after the fusion")
    # data and run
    add("--preset", default=None, choices=sorted(PRESETS), help="a named configuration; explicit flags override it")
    add("--data_dir", default="data", help="directory with data.csv and image/")
    add("--lang", default="bi", choices=["bi", "ko", "en"],
        help="rows of this language (column lang): ko, en, or bi for both")
    add("--valid_fold", type=int, default=None, choices=range(1, 6), metavar="K",
        help="validate on the rows of fold K (1-5; the fold column of BOK-VQA's training files) and train on the "
             "other folds' (default: the data's split); test rows stay test")
    add("--skip_bad", action="store_true", default=False,
        help="leave out rows with problems (empty fields, duplicates, bad images) instead of stopping; they are "
             "printed and written to skipped_rows.csv in the run directory")
    add("--resume", default=None, metavar="RUN_DIR",
        help="continue this run in its directory with its saved options, from its last checkpoint "
             "(only --device, --num_workers, --precision, --image_cache and --compile may be given with it)")
    add("--results_dir", default="results", help="run directories go to <results_dir>/<train_data>_<MMDD_HHMM>/")
    add("--report_to", default="none", choices=tracking.REPORT_TO,
        help="also log the curves (per step: train loss, lr; per epoch: losses, accuracies, per type, triple) to "
             "TensorBoard (RUN/tb/) or wandb (offline without a network); rank 0 only; --resume continues them")
    add("--seed", type=at_least(0), default=42, help="random seed")
    add("--nproc", default="auto", type=process_count, metavar="N|auto",
        help="training processes this command starts itself, with PyTorch's elastic launcher as torchrun starts them "
             "(DistributedDataParallel): auto, one per visible GPU (CUDA_VISIBLE_DEVICES), one on a CPU; with "
             "--device cpu, N gloo processes. --resume starts as many as the run had; under torchrun, which starts "
             "its own, it is not used")
    add("--device", default="auto",
        help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...; under torchrun every CUDA choice means "
             "each process's own GPU (cuda:LOCAL_RANK)")
    add("--num_workers", type=at_least(0), default=8, help="DataLoader worker processes per training process")
    add("--image_cache", action=argparse.BooleanOptionalAction, default=True,
        help="decode and resize every image once into a memory-mapped cache under <data_dir>/cache/ "
             "(--no-image_cache: decode the JPEG each time it is read, as the original)")
    add("--compile", action="store_true", default=False,
        help="torch.compile the model (faster steps on GPUs after a minute or two of compiling)")
    add("--precision", default="auto", choices=["auto", "bf16", "fp32"],
        help="auto: bf16 autocast on a GPU that supports it, else fp32; saved with the run, and the inference "
             "scripts and the demo use it too")
    # model
    add("--text_model", default="xlm-roberta-base",
        help="Hugging Face model name or local directory; 'scratch' builds a small XLM-R with its own tokenizer")
    add("--image_model", default="resnet50", help="timm model name or local directory (timm save_for_hf format)")
    add("--pretrained", action=argparse.BooleanOptionalAction, default=True,
        help="start from pretrained weights (--no-pretrained: random initialisation)")
    add("--img_size", type=at_least(32), default=224,
        help="image input size in pixels (at least 32: a ResNet reduces it 32-fold)")
    add("--dim_h", type=at_least(1), default=1024, help="hidden size of the classifier head")
    add("--dropout", type=in_range(0, 1), default=0.2, help="dropout on image features and the classifier head")
    add("--text_pool", default="cls", choices=["cls", "first", "mean"],
        help="question feature: cls (the <s> token through the pooler, as the original), first (the <s> token's "
             "last hidden state, as GEL-VQA) or mean over tokens")
    add("--n_transformer_layers", type=at_least(1), default=1, help="layers of the fusion Transformer encoder")
    add("--n_heads", type=at_least(1), default=8, help="attention heads of the fusion Transformer encoder")
    # the model (models.py) and what it reads
    add("--model", default="baseline", choices=list(models.MODELS),
        help="the model by name: baseline (the original), gel_vqa (GEL-VQA as published), hilink (HiLINK as "
             "published), hilink_kb (this repo's: HiLINK reading a knowledge base at run time), oracle_triple and "
             "oracle_text (gold knowledge: upper bounds)")
    add("--config", default=None, metavar="FILE.yaml",
        help="a config file (key: value lines) that changes the model's settings for an ablation (configs/), and may "
             "set any other option of main.py; explicit flags override it")
    add("--kge_dir", default=None,
        help="KG embeddings from kge.py, for the models that read them (gel_vqa, oracle_triple; hilink_kb's copy "
             "infers a tail the knowledge base lacks with them); a copy is kept in the run directory")
    add("--kb", default=None,
        help="the knowledge base of the models that read one, a CSV with columns h, r, t (e.g. BOK-VQA's "
             "all_triple.csv); default: <data_dir>/triples.csv if present, else the triples of the train and valid "
             "rows")
    # optimisation
    add("--loss", default="focal", choices=["focal", "ce"], help="focal loss (the original's) or cross entropy")
    add("--gamma", type=at_least(0.0, float), default=2.0, help="focal loss gamma")
    add("--label_smoothing", type=in_range(0, 1), default=0.0, help="label smoothing")
    add("--weight_decay", type=at_least(0.0, float), default=0.01, help="AdamW weight decay")
    add("--warmup", type=in_range(0, 1, high_included=True), default=0.05, help="fraction of steps for linear warmup")
    add("--clip_grad", type=at_least(0.0, float), default=1.0, help="gradient norm clipping (0: none)")
    add("--schedule", default="cosine", choices=["cosine", "constant"],
        help="learning rate after the warmup: cosine decay to zero, or constant (GEL-VQA's)")
    add("--freeze_text_epochs", type=at_least(0), default=0,
        help="keep the text encoder fixed for the first N epochs while the rest learns (linear probing, then "
             "fine-tuning); a text encoder trained from scratch otherwise collapses questions that differ in one word")
    return p


def process_count(text):
    """argparse type of --nproc: auto, or a whole number of at least 1."""
    return text if text == "auto" else at_least(1)(text)


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    given = list(argv)
    args = build_parser().parse_args(argv)
    args.image_model_kwargs, args.scratch_text = {}, {"hidden": 128, "layers": 2, "heads": 4}
    if args.resume:
        return resume_args(args, argv)
    settings = {}
    if args.config:  # its options as flags before the command line's, which win; the rest are model settings
        try:
            values = models.read_config_file(args.config)
        except util.UsageError as e:
            sys.exit(f"error: {e}")
        name = values.pop("model", args.model)
        settings, flags = config_file_flags(values, args.config)
        argv = (["--model", name] if "--model" not in argv else []) + flags + argv
        args = build_parser().parse_args(argv)
        args.image_model_kwargs, args.scratch_text = {}, {"hidden": 128, "layers": 2, "heads": 4}
    if args.preset:
        explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
        recipe = PRESETS[args.preset] if args.preset != "bokvqa" else \
            {**PRESETS["bokvqa"], **models.MODELS[args.model].recipe}
        for key, value in recipe.items():
            # the preset's image model options belong to its image model only
            if key not in explicit and not (key == "image_model_kwargs" and "image_model" in explicit):
                setattr(args, key, value)
    try:
        args.model_config = models.named(args.model, settings, f"--config {args.config}")
    except util.UsageError as e:
        sys.exit(f"error: {e}")
    check_knowledge_options(args)
    args.argv = given  # the command line as given (run_config keeps it as the run's command)
    return args


def config_file_flags(values, path):
    """(the model settings, main.py flags) of a config file's values: a key that is an option of main.py becomes its
    flag, any other is a model setting (models.named checks it)."""
    actions = {a.dest: a for a in build_parser()._actions if a.option_strings}
    settings, flags = {}, []
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            settings[key] = value
        elif key in ("resume", "config", "help"):
            sys.exit(f"error: --config {path}: {key} is not for a config file; give --{key} on the command line.")
        elif isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                sys.exit(f"error: --config {path}: {key} is {value!r}; give true or false.")
            flags += [f"--{key}"] if value else ([f"--no-{key}"] if action.nargs == 0 and
                                                 isinstance(action, argparse.BooleanOptionalAction) else [])
        else:
            try:  # checked here, so that the message names the file
                checked = action.type(str(value)) if action.type else str(value)
            except (ValueError, argparse.ArgumentTypeError) as e:
                sys.exit(f"error: --config {path}: {key} {value!r}: {e}.")
            if action.choices and checked not in action.choices:
                sys.exit(f"error: --config {path}: {key} is {value!r}; choose one of {', '.join(action.choices)}.")
            flags += [f"--{key}", str(value)]
    return settings, flags


def check_knowledge_options(args):
    """What the model reads stops before any work where it is missing, and is an error where the model cannot use it."""
    model = args.model_config
    problems = []
    if model.embeds and not args.kge_dir:
        problems.append(f"--model {model.name} reads KG embeddings: give --kge_dir DIR, made by "
                        f"{knowledge.KGE_COMMAND}")
    if args.kge_dir and not model.reads_kge():
        problems.append(f"--kge_dir: --model {model.name} reads no KG embeddings")
    if args.kb and not model.uses_kb():
        problems.append(f"--kb: --model {model.name} reads no knowledge base")
    if problems:
        sys.exit("error: " + "; ".join(problems) + ".")


def resume_args(args, argv):
    """The options a run was started with, from its config.json; only how to run it may change."""
    path = os.path.join(args.resume, util.CONFIG_FILE)
    if not os.path.isfile(path):
        sys.exit(f"error: --resume {args.resume}: no {util.CONFIG_FILE} there; it is not a run directory of main.py, "
                 f"or the run stopped before it began training (start it again).")
    try:
        config = util.read_json(path, required=[k for k in util.RUN_OPTIONS if k not in util.LATER_OPTIONS]
                                + ["world_size"])
        last = os.path.join(args.resume, checkpoints.LAST_CHECKPOINT)
        done = len(checkpoints.read_metadata(last).get("history", [])) if os.path.isfile(last) else 0
    except util.CheckpointError as e:
        sys.exit(f"error: {e}")
    explicit = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
    fixed = explicit - {"resume", "device", "num_workers", "precision", "image_cache", "compile"}
    if fixed:
        sys.exit(f"error: --resume continues {args.resume} with its saved options; drop "
                 f"{', '.join('--' + k for k in sorted(fixed))} (only --device, --num_workers, --precision, "
                 f"--image_cache and --compile may change).")
    if done >= config["n_epoch"] and "weights" in config:  # without "weights" its report is still to write
        sys.exit(f"error: {args.resume} has finished all its {config['n_epoch']} epochs: there is nothing to resume. "
                 f"Evaluate it with `python inference.py --model_path {args.resume}`, or start a new run.")
    if "model" not in config:
        sys.exit(f"error: {args.resume} was trained by a version before models had names; evaluate it with "
                 f"inference.py, or continue it with that version (commit {models.RETIRED_BY}).")
    for key in util.RUN_OPTIONS:
        if key not in explicit:
            setattr(args, key, util.run_option(config, key))
    args.nproc = config["world_size"]  # the batches, steps and schedule depend on it
    try:
        args.model_config = models.run_model(config, args.resume)
    except util.UsageError as e:
        sys.exit(f"error: {e}")
    return args


def processes(args):
    """How many training processes this command starts: 1 under torchrun, which starts its own; else --nproc (auto:
    every visible GPU, 1 on a CPU), checked against the GPUs there are before any work."""
    import torch

    if util.under_torchrun():
        return 1
    gpu = args.device.startswith("cuda") or args.device == "auto" and torch.cuda.is_available()
    visible = torch.cuda.device_count() if gpu else 0
    if args.nproc == "auto":
        return max(visible, 1)  # where --device names a GPU there is not, the process says so
    count = args.nproc
    if gpu and count > visible:
        sys.exit(f"error: --nproc {count}: {visible or 'no'} CUDA GPU(s) are visible (CUDA_VISIBLE_DEVICES), one for "
                 f"each process; give --nproc {visible} or less" + (", or --device cpu for gloo processes" if
                                                                    not visible else "") + ".")
    return count


def launch(count, argv):
    """Starts count processes of this script with the same arguments, as `torchrun --standalone --nproc_per_node
    count` does (PyTorch's elastic launcher: a local c10d rendezvous, no restarts); SIGTERM and Ctrl-C reach every
    worker, and one that fails stops the others."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    print(f"starting {count} training processes (DistributedDataParallel)", flush=True)
    try:
        config = torchrun.parse_args(["--standalone", "--nproc_per_node", str(count), __file__])
        config.training_script_args = list(argv)  # as given: torchrun's own parser would read --nproc as its option
        torchrun.run(config)
    except SignalException as e:
        sys.exit(128 + e.sigval)
    except ChildFailedError:
        sys.exit(1)  # the failing process has said why


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    count = processes(args)
    if count > 1:
        return launch(count, argv)
    from encoders import OfflineError
    from vqa_dataset import DataError
    import train

    try:
        util.ensure_writable_dir(args.resume or args.results_dir, "--resume" if args.resume else "--results_dir")
        tracking.check_installed(args.report_to)
        return train.train(args)
    except (OfflineError, DataError, util.CheckpointError, util.UsageError) as e:
        sys.exit(f"error: {e}")
    except train.Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)  # the shell's code for "stopped by this signal": scripts chained with && stop too


if __name__ == "__main__":
    main()
