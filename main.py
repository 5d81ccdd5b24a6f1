"""Train the VQA baseline.

    python main.py --train_data all --n_epoch 50 --lr 3e-5 --batch_size 512 --max_token 50 [--use_transformer_layer]
    python main.py --preset sample            # small model on the embedded sample, CPU, minutes, no download
    torchrun --nproc_per_node 4 main.py ...   # several GPUs (or CPU processes) with DistributedDataParallel
"""
import argparse
import os
import sys

import checkpoints
import knowledge as kn
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
    # GEL-VQA's training as the BOK-VQA paper's code has it (AAAI 2024), for every --knowledge mode: XLM-R base (its
    # <s> token's last hidden state, no pooler) and an ImageNet ResNet50 at 224 px, AdamW at a constant 5e-5 without
    # warmup or gradient clipping, batch 128, 50 epochs, cross entropy; with gel and ideal, the product fusion (mul)
    # and independent triple heads.
    "bokvqa": dict(
        text_model="xlm-roberta-base", image_model="resnet50", pretrained=True, img_size=224, max_token=50,
        dim_h=1024, dropout=0.2, text_pool="first", loss="ce", lr=5e-5, batch_size=128, n_epoch=50,
        schedule="constant", warmup=0.0, clip_grad=0.0, freeze_text_epochs=0, knowledge_fusion="mul",
        triple_head="independent",
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
    add("--ablate", default="none", choices=["none", "image", "question"],
        help="blank one input (image: question-only model; question: image-only model)")
    # knowledge (BOK-VQA)
    add("--knowledge", default="none", choices=kn.MODES,
        help="none: the original baseline; text: the question paired with its gold knowledge text (the triple as "
             "words, or the abstract); ideal: the gold triple's KG embeddings (an upper bound); gel: GEL-VQA, which "
             "predicts the triple and uses its KG embeddings; gel_text: the predicted triple as words, paired with "
             "the question (two text-encoder passes)")
    add("--kge_dir", default=None,
        help="KG embeddings from kge.py: what --knowledge ideal and gel inject, and with --answer_from_kb what "
             "predicts a tail the knowledge base lacks (a copy is kept in the run directory)")
    add("--knowledge_fusion", default="mul", choices=kn.FUSIONS,
        help="how the KG embeddings enter the fused feature f (ideal, gel): mul (GEL-VQA's f * k), film "
             "(f * (1 + gamma(k)) + beta(k)) or concat ([f; P(k)]); film and concat start as the baseline")
    add("--triple_head", default="independent", choices=kn.TRIPLE_HEADS,
        help="triple prediction (gel, gel_text): independent heads (GEL-VQA) or cascade (HK-TriNet+: h -> r -> t "
             "and t -> r -> h, FiLM-conditioned, averaged)")
    add("--triple_encoder", default="shared", choices=kn.TRIPLE_ENCODERS,
        help="what the triple is predicted from (gel, gel_text): the answer path's encoders and hidden layer (shared, "
             "GEL-VQA's), or encoders of its own trained with the rest (own: a second text and image encoder, so "
             "that the triple's loss does not share the answer's features; twice the encoder weights and passes)")
    add("--kb_constrained", action="store_true", default=False,
        help="snap each predicted triple to the most probable triple of the knowledge base (gel, gel_text)")
    add("--kb_score", default="pair", choices=kn.KB_SCORES,
        help="how --kb_constrained scores a KB triple: p(h) p(r) times pair: p(t | h, r, KB), the tail among the KB's "
             "tails of that head and relation, so an edited or added fact is found as readily as a trained one; or "
             "product: the tail classifier's own p(t), so the tail a question points at also chooses the relation")
    add("--triple_noise", type=float, default=0.0,
        help="in training, the rate at which the answer pass reads the KB triple the model ranks next in place of its "
             "choice (with --kb_constrained; gel, gel_text): the triple heads are right on nearly every training "
             "question but not at test, so the answer pass learns not to follow a wrong triple; e.g. 1 - valid_hrt")
    add("--knowledge_dropout", type=float, default=0.0,
        help="in training, the rate at which a row's gold knowledge is withheld (text: its knowledge text; ideal: "
             "its triples' codes): the answer path then also learns to read the image for the questions whose "
             "knowledge spells out the answer, as the baseline does")
    add("--knowledge_free_loss", action="store_true", default=False,
        help="in training, add the loss of the answer without the gold knowledge for every row that has some (ideal: "
             "from the fused feature before the codes enter, at no added pass; text: the question encoded alone, an "
             "added text-encoder pass over those rows), each row weighted as in the baseline's mean: each type B "
             "row then also teaches the baseline's task, reading the image")
    add("--knowledge_head", default="shared", choices=["shared", "own", "detached"],
        help="which hidden layer and classifier answer the rows that have gold knowledge (text, ideal): shared, the "
             "one that answers the rows without it; own, a copy of it at init, so that the knowledge never retrains "
             "the head that answers type A questions; detached, own and its gradient stopped at the fused feature, "
             "so that the encoders learn only from the rows without knowledge (and --knowledge_free_loss)")
    add("--kb", default=None,
        help="the knowledge base for --kb_constrained, a CSV with columns h, r, t (e.g. BOK-VQA's all_triple.csv); "
             "default: <data_dir>/triples.csv if present, else the triples of the train and valid rows")
    add("--head_lr", type=positive(), default=None,
        help="learning rate of the triple heads (gel, gel_text; default: --lr)")
    add("--head_logit_adjustment", action="store_true", default=False,
        help="train the triple's head with logit adjustment by its training prior given the gold relation, "
             "log p(h | r) (gel, gel_text): the head then learns no preference for the heads a relation had in the "
             "training questions, so that a fact no training question uses (a held-out fact) can be predicted")
    add("--head_from_answers", action="store_true", default=False,
        help="the triple's head classifier also learns from the rows without a triple whose answer names a head "
             "(gel, gel_text): type A questions such as 'what colour is the circle?' teach it to read the entity a "
             "question points at in more questions, and beside more relations, than the triple rows alone")
    add("--answer_from_kb", action="store_true", default=False,
        help="a learned gate answers from the answer vocabulary or copies the triple's head or tail (text, ideal: "
             "the gold triple; gel, gel_text: the predicted one), so an answer can be a name outside the vocabulary")
    add("--answer_relation", action="store_true", default=False,
        help="with --answer_from_kb (gel, gel_text): a classifier on the answer's hidden feature chooses which of the "
             "predicted head's knowledge-base facts the copied tail comes from, the triple's relation or another: "
             "BOK-VQA asks 'what order is the livestock in the image?' with the triple (Pig, subject, Livestock) and "
             "the answer Artiodactyla, the tail of (Pig, order, .)")
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


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.image_model_kwargs, args.scratch_text = {}, {"hidden": 128, "layers": 2, "heads": 4}
    if args.resume:
        return resume_args(args, argv)
    if args.preset:
        explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
        for key, value in PRESETS[args.preset].items():
            # the preset's image model options belong to its image model only
            if key not in explicit and not (key == "image_model_kwargs" and "image_model" in explicit):
                setattr(args, key, value)
    check_knowledge_options(args)
    return args


def check_knowledge_options(args):
    """Knowledge options that cannot work together stop before any work."""
    problems = []
    if kn.embeds(args.knowledge) and not args.kge_dir:
        problems.append(f"--knowledge {args.knowledge} needs --kge_dir, a directory of KG embeddings: train one with "
                        f"`python kge.py --data_dir DATA_DIR --out DIR` (or --triples all_triple.csv)")
    triple_options = args.kb_constrained or args.head_lr or args.head_logit_adjustment or args.head_from_answers or \
        args.triple_encoder != "shared"
    if triple_options and not kn.predicts(args.knowledge):
        problems.append(f"--kb_constrained, --head_lr, --head_logit_adjustment, --head_from_answers and "
                        f"--triple_encoder apply to the modes that predict a triple (gel, gel_text), not --knowledge "
                        f"{args.knowledge}")
    if args.kb_score != "pair" and not args.kb_constrained:
        problems.append("--kb_score says how --kb_constrained scores a KB triple; give --kb_constrained")
    if args.triple_noise and not args.kb_constrained:
        problems.append("--triple_noise feeds the KB triple ranked next by --kb_constrained; give --kb_constrained")
    if not 0 <= args.triple_noise < 1:
        problems.append(f"--triple_noise is a rate in [0, 1), not {args.triple_noise}")
    for option in ("knowledge_dropout", "knowledge_free_loss", "knowledge_head"):
        if getattr(args, option) != util.LATER_OPTIONS[option] and not kn.reads_gold(args.knowledge):
            problems.append(f"--{option} acts on the gold knowledge of --knowledge text or ideal; --knowledge "
                            f"{args.knowledge} reads no gold knowledge")
    if not 0 <= args.knowledge_dropout < 1:
        problems.append(f"--knowledge_dropout is a rate in [0, 1), not {args.knowledge_dropout}")
    if args.kb and not kn.uses_kb(vars(args)):
        problems.append("--kb is the knowledge base of --kb_constrained and --answer_from_kb with --knowledge ideal, "
                        "gel or gel_text; give one of them (--knowledge text copies from the row's own triple)")
    if args.answer_from_kb and args.knowledge == "none":
        problems.append("--answer_from_kb copies a triple's head or tail: it needs --knowledge text, ideal, gel or "
                        "gel_text")
    if args.answer_relation and not (args.answer_from_kb and kn.predicts(args.knowledge)):
        problems.append("--answer_relation chooses which of the predicted head's facts --answer_from_kb copies a tail "
                        "from: give --answer_from_kb with --knowledge gel or gel_text")
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
    if done >= config["n_epoch"]:
        sys.exit(f"error: {args.resume} has finished all its {config['n_epoch']} epochs: there is nothing to resume. "
                 f"Evaluate it with `python inference.py --model_path {args.resume}`, or start a new run.")
    for key in util.RUN_OPTIONS:
        if key not in explicit:
            setattr(args, key, util.run_option(config, key))
    return args


def main(argv=None):
    args = parse_args(argv)
    from model import OfflineError
    from vqa_dataset import DataError
    import train

    import util

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
