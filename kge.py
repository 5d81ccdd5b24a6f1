"""Knowledge-graph embeddings of the knowledge triples, trained with PyKEEN and exported without pickle.

    python kge.py --triples all_triple.csv --out kge/    # a CSV with columns h, r, t (BOK-VQA's knowledge base)
    python kge.py --data_dir data/sample --out kge/      # its triples.csv, else the `triple` column of its data.csv

The defaults are BOK-VQA's GEL-VQA settings (GEL_VQA): ConvKB, dimension 256, 3 filters, zero-mean Xavier
initialisation (as the paper's torchkge ConvKB; PyKEEN's own default, U[0, 1), makes every pair of codes alike, cosine
about 0.75), Adam lr 1e-4 with weight decay 1e-5, batch size 512, margin ranking loss (margin 0.5) with Bernoulli
negative sampling, 50,000 steps (batches), trained on all triples.
--eval_fraction holds a seeded slice out instead and scores it by filtered link prediction (MRR, Hits@1, Hits@10).
The output directory holds embeddings.safetensors (tensors `entity` and `relation`, rows in id order),
entity_to_id.json, relation_to_id.json and settings.json; load_kge() reads them back with safetensors and json only
(PyKEEN is not needed to use them).
"""
import argparse
import functools
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass

import pandas as pd
import torch

import checkpoints
import util
import vqa_dataset
from vqa_dataset import DataError

MODELS = ["convkb", "transe", "rotate"]
EMBEDDINGS_FILE = "embeddings.safetensors"
ENTITY_IDS_FILE = "entity_to_id.json"
RELATION_IDS_FILE = "relation_to_id.json"
SETTINGS_FILE = "settings.json"
CONVKB_FILTERS = 3  # GEL-VQA's ConvKB
# GEL-VQA's KG embeddings (its code's kge_convkb_train.py): kge.py's defaults, and what gel_vqa expects
GEL_VQA = {"model": "convkb", "dim": 256, "lr": 1e-4, "weight_decay": 1e-5, "batch_size": 512, "margin": 0.5,
           "steps": 50000}


def fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser():
    p = argparse.ArgumentParser(description="Train knowledge-graph embeddings (PyKEEN) and export them as "
                                            "safetensors + JSON.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--triples", help="a CSV with columns h, r, t (e.g. BOK-VQA's all_triple.csv)")
    source.add_argument("--data_dir", help="a data directory: its triples.csv (columns h, r, t) if present, else the "
                                           "distinct triples of data.csv's `triple` column (head|relation|tail;...)")
    p.add_argument("--out", required=True,
                   help="output directory (created; files kge.py wrote there before are replaced, no others)")
    p.add_argument("--force", action="store_true",
                   help="also replace files in --out that this repo did not write (a user's own, or edited)")
    p.add_argument("--model", default=GEL_VQA["model"], choices=MODELS, help="embedding model (default: convkb)")
    p.add_argument("--dim", type=util.positive(int), default=GEL_VQA["dim"],
                   help="embedding dimension; RotatE's is complex, stored as 2*dim real numbers (default: 256)")
    p.add_argument("--steps", type=util.positive(int), default=GEL_VQA["steps"],
                   help="training steps (batches), rounded up to whole epochs (default: 50000, GEL-VQA's)")
    p.add_argument("--epochs", type=util.positive(int), default=None, help="training epochs, instead of --steps")
    p.add_argument("--lr", type=util.positive(float), default=GEL_VQA["lr"], help="Adam learning rate (default: 1e-4)")
    p.add_argument("--weight_decay", type=util.at_least(0.0, float), default=GEL_VQA["weight_decay"],
                   help="Adam weight decay (default: 1e-5, GEL-VQA's)")
    p.add_argument("--batch_size", type=util.positive(int), default=GEL_VQA["batch_size"],
                   help="training batch size (default: 512)")
    p.add_argument("--margin", type=util.positive(float), default=GEL_VQA["margin"],
                   help="margin of the ranking loss (default: 0.5)")
    p.add_argument("--num_negs", type=util.positive(int), default=1,
                   help="Bernoulli negative samples per positive triple (default: 1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split, initialisation and sampling (default: 42)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda (default: auto)")
    p.add_argument("--eval_fraction", type=fraction, default=0.0,
                   help="fraction of the triples held out and scored by link prediction; 0 (default) trains on all "
                        "of them, as GEL-VQA's KGE")
    return p


def read_triples_csv(path):
    """(triples, skipped) of a CSV with columns h, r, t, its names read by data.csv's rules (vqa_dataset.clean_text:
    NFC, invisible characters removed, white space collapsed; how many changed is said). Wholly empty rows are
    skipped and counted; a row with only some cells empty is an error, as it is a triple with a part missing, and so
    is a file without a triple."""
    df = vqa_dataset.read_csv(path)  # a missing, empty or undecodable file, a folder: a DataError
    missing = [c for c in "hrt" if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. A triples CSV needs columns "
                        f"h, r, t (head, relation, tail).")
    cells = df[["h", "r", "t"]].map(vqa_dataset.clean_text)
    changed = int((cells != df[["h", "r", "t"]]).to_numpy().sum())
    rows = pd.Series(range(2, len(df) + 2), index=df.index)  # as a spreadsheet shows them: the header is row 1
    empty = cells == ""
    blank = empty.all(axis=1)
    placeholder = cells.map(vqa_dataset.is_placeholder)
    problems = [f"  {vqa_dataset.row_numbers(rows[empty[c] & ~blank])}, column {c}: empty"
                for c in "hrt" if (empty[c] & ~blank).any()]
    problems += [f"  {vqa_dataset.row_numbers(rows[placeholder[c]])}, column {c}: a missing-value placeholder "
                 f"({', '.join(sorted(set(cells[c][placeholder[c]])))}), not an entity or relation"
                 for c in "hrt" if placeholder[c].any()]
    if problems:
        raise DataError(f"{path}: empty or missing cells (row numbers as in a spreadsheet, the header is row 1):\n"
                        + "\n".join(problems) + "\nFill them in or delete those rows.")
    if blank.all():
        raise DataError(f"{path} holds no triple: its {len(df)} row(s) are blank (or only white space and invisible "
                        f"characters). Give a CSV with columns h, r, t and a triple per row.")
    if changed:
        print(f"{path}: normalised {changed} name(s) (Unicode NFC, invisible characters, white space), as data.csv's")
    return list(cells[~blank].itertuples(index=False, name=None)), int(blank.sum())


def read_data_csv(path):
    """(triples, skipped) of data.csv's `triple` column; rows without a triple (A-type questions) are skipped."""
    df = vqa_dataset.read_csv(path)
    if "triple" not in df.columns:
        raise DataError(f"{path}: no `triple` column (found {list(df.columns)}), so there are no triples to embed. "
                        f"Give a triples CSV with --triples, or put a triples.csv (columns h, r, t) beside it.")
    triples, bad, skipped = [], [], 0
    for row, text in enumerate(df["triple"].map(vqa_dataset.clean_text), start=2):  # main.py's reading of it
        try:
            found = vqa_dataset.parse_triples(text)
        except ValueError as e:
            bad.append(f"  row {row}, column triple: {e}")
            continue
        placeholder = vqa_dataset.placeholder_part(text)
        if placeholder:
            bad.append(f"  row {row}, column triple: {placeholder!r} is a missing-value placeholder, not an entity or "
                       f"relation")
            continue
        skipped += not found
        triples += found
    if bad:
        shown = bad[:10] + ([f"  ... and {len(bad) - 10} more"] if len(bad) > 10 else [])
        raise DataError(f"{path}: {len(bad)} malformed or missing triple cell(s) (row numbers as in a spreadsheet, the "
                        f"header is row 1; a cell holds head|relation|tail, several joined by ';'):\n"
                        + "\n".join(shown))
    return triples, skipped


def load_triples(args):
    """(distinct triples in first-seen order, source file); says what was skipped and merged."""
    if args.triples:
        path = args.triples
        triples, skipped = read_triples_csv(path)
        what = "empty rows"
    else:
        if os.path.isfile(args.data_dir):
            raise DataError(f"--data_dir {args.data_dir} is a file, not a folder: give the data folder that holds "
                            f"triples.csv or data.csv, or give the file with --triples.")
        path = os.path.join(args.data_dir, "triples.csv")
        if os.path.isfile(path):
            triples, skipped = read_triples_csv(path)
            what = "empty rows"
        else:
            path = os.path.join(args.data_dir, "data.csv")
            if not os.path.isfile(path):
                raise DataError(f"{args.data_dir} holds neither triples.csv nor data.csv.")
            triples, skipped = read_data_csv(path)
            what = "rows without a triple"
    if skipped:
        print(f"{path}: skipped {skipped} {what}")
    distinct = list(dict.fromkeys(triples))
    if not distinct:
        raise DataError(f"{path}: no triples found.")
    if len(distinct) < len(triples):
        print(f"{path}: {len(triples) - len(distinct)} repeated triples merged")
    return distinct, path


def split_triples(factory, eval_fraction, seed):
    """(train, held-out) factories sharing the id maps of all triples. Every entity and relation of the held-out
    slice also occurs in train: one never trained could not be ranked meaningfully."""
    try:  # PyKEEN's default keeps the requested sizes, but fails where too many triples are needed for coverage
        train, held_out = factory.split([1 - eval_fraction, eval_fraction], random_state=seed, method="coverage")
    except ValueError:  # then hold out what a random split leaves after moving uncovered triples back to train
        train, held_out = factory.split([1 - eval_fraction, eval_fraction], random_state=seed, method="cleanup")
    if held_out.num_triples == 0:
        raise DataError(f"no triple can be held out: in every one, an entity or relation occurs in no other triple "
                        f"({factory.num_triples} triples), and a held-out triple's must occur in training. Give more "
                        f"triples, or train on all of them (--eval_fraction 0).")
    return train, held_out


def model_kwargs(args):
    kwargs = {"embedding_dim": args.dim}
    if args.model == "convkb":  # zero-mean codes, as the paper's torchkge ConvKB (PyKEEN's default is U[0, 1))
        kwargs.update(num_filters=CONVKB_FILTERS, entity_initializer="xavier_uniform",
                      relation_initializer="xavier_uniform")
    return kwargs


def real_rows(representation):
    """All rows of a PyKEEN representation as a contiguous float32 CPU matrix; complex vectors (RotatE) become
    their real view, real and imaginary parts interleaved (torch.view_as_real)."""
    with torch.no_grad():
        x = representation(indices=None).detach().cpu()
    if x.is_complex():
        x = torch.view_as_real(x).reshape(x.shape[0], -1)
    return x.float().contiguous()


def train(triples, args, device):
    """Trains on all triples, or with --eval_fraction on a seeded split and scores the held-out slice; returns
    (entity, relation, entity_to_id, relation_to_id, report)."""
    import numpy as np
    from pykeen.models import model_resolver
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import TriplesFactory
    from pykeen.utils import set_random_seed

    # PyKEEN's warnings (ConvKB's advice to start from TransE, a split's coverage) are about its own defaults, which
    # this script sets, or are said by this script in its own words
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    logging.getLogger("torch_max_mem").setLevel(logging.ERROR)  # it warns on every CPU evaluation
    # PyKEEN's data loaders always pin memory, which on a machine without a GPU only prints a warning.
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true")
    # Relations ending in "_inverse" would otherwise be dropped silently as PyKEEN's own inverse triples.
    factory = TriplesFactory.from_labeled_triples(np.array(triples, dtype=str),
                                                  filter_out_candidate_inverse_relations=False)
    train_part, held_out = (split_triples(factory, args.eval_fraction, args.seed) if args.eval_fraction
                            else (factory, None))
    print(f"{factory.num_triples} triples, {factory.num_entities} entities, {factory.num_relations} relations; "
          f"training on {train_part.num_triples}" + (f", holding out {held_out.num_triples}" if held_out else ""))
    set_random_seed(args.seed)
    model = model_resolver.make(args.model, model_kwargs(args), triples_factory=train_part, loss="marginranking",
                                loss_kwargs={"margin": args.margin}, random_seed=args.seed).to(device)
    loop = SLCWATrainingLoop(model=model, triples_factory=train_part,
                             optimizer=torch.optim.Adam(model.get_grad_params(), lr=args.lr,
                                                        weight_decay=args.weight_decay),
                             negative_sampler="bernoulli", negative_sampler_kwargs={"num_negs_per_pos": args.num_negs})
    epochs = args.epochs or math.ceil(args.steps / math.ceil(train_part.num_triples / args.batch_size))
    start = time.time()
    loop.train(triples_factory=train_part, num_epochs=epochs, batch_size=args.batch_size, use_tqdm=True)
    report = {"train_seconds": round(time.time() - start, 2), "train_triples": train_part.num_triples, "epochs": epochs,
              "steps": epochs * math.ceil(train_part.num_triples / args.batch_size),
              "interaction": {"name": type(model.interaction).__name__,
                              "kwargs": interaction_kwargs(model.interaction, args)}}
    if held_out is not None:
        report["metrics"] = link_prediction(model, train_part, held_out, device, args.dim)
    tensors = {"entity": real_rows(model.entity_representations[0]),
               "relation": real_rows(model.relation_representations[0]),
               **{f"interaction.{k}": v.detach().cpu().contiguous() for k, v in model.interaction.state_dict().items()}}
    return tensors, dict(factory.entity_to_id), dict(factory.relation_to_id), report


def interaction_kwargs(interaction, args):
    """What rebuilds the scoring function (PyKEEN's interaction) without PyKEEN's pickled model."""
    if args.model == "convkb":
        return {"embedding_dim": args.dim, "num_filters": CONVKB_FILTERS}
    return {"p": interaction.p, "power_norm": interaction.power_norm}


def link_prediction(model, train_part, held_out, device, dim):
    """Filtered rank-based link prediction (heads and tails) on the held-out triples."""
    from pykeen.evaluation import RankBasedEvaluator

    # PyKEEN sizes evaluation batches to memory on GPUs only; on CPUs it takes 32, which for ConvKB (a convolution
    # per candidate entity) over a large entity set can need tens of GB.
    batch = None if device.type == "cuda" else max(1, min(256, 2 ** 24 // (train_part.num_entities * dim)))
    result = RankBasedEvaluator(filtered=True).evaluate(model, held_out.mapped_triples, batch_size=batch,
                                                         additional_filter_triples=[train_part.mapped_triples])
    return {"mrr": float(result.get_metric("both.realistic.inverse_harmonic_mean_rank")),
            "hits_at_1": float(result.get_metric("both.realistic.hits_at_1")),
            "hits_at_10": float(result.get_metric("both.realistic.hits_at_10")),
            "held_out_triples": held_out.num_triples,
            "evaluation": "filtered rank-based link prediction, head and tail, realistic ranks"}


def settings(args, device, source, entity, relation, report, num_triples):
    import pykeen

    return {"model": args.model, "dim": args.dim, "entity_width": entity.shape[1], "relation_width": relation.shape[1],
            "complex": args.model == "rotate",
            "storage": ("complex vectors as their real view: row = [re_0, im_0, re_1, im_1, ...], width 2*dim"
                        if args.model == "rotate" else "real vectors, width dim"),
            "num_filters": CONVKB_FILTERS if args.model == "convkb" else None,
            "initializer": model_kwargs(args).get("entity_initializer", "PyKEEN's default"),
            "optimizer": "adam", "lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "loss": "marginranking", "margin": args.margin, "negative_sampler": "bernoulli", "num_negs": args.num_negs,
            "seed": args.seed, "device": str(device), "source": source, "eval_fraction": args.eval_fraction,
            "num_triples": num_triples, "num_entities": entity.shape[0], "num_relations": relation.shape[0],
            **report, "pykeen_version": pykeen.get_version(), "torch_version": torch.__version__}


OUTPUT_FILES = [EMBEDDINGS_FILE, ENTITY_IDS_FILE, RELATION_IDS_FILE, SETTINGS_FILE]


def save_kge(outputs, tensors, entity_to_id, relation_to_id, run_settings):
    """Writes the output files into outputs, a util.OutputFolder checked before the training."""
    from safetensors.torch import save

    outputs.write(EMBEDDINGS_FILE, save(tensors))
    outputs.write(ENTITY_IDS_FILE, util.json_bytes(entity_to_id))
    outputs.write(RELATION_IDS_FILE, util.json_bytes(relation_to_id))
    outputs.write(SETTINGS_FILE, util.json_bytes(run_settings))


@dataclass
class KGE:
    entity: torch.Tensor  # [n_entities, entity_width], row i is the entity with id i
    relation: torch.Tensor  # [n_relations, relation_width]
    entity_to_id: dict
    relation_to_id: dict
    settings: dict
    interaction: dict = None  # the scoring function's tensors (ConvKB's convolution and linear layer)

    @functools.cached_property
    def entity_names(self):
        """The entities' names by id."""
        return sorted(self.entity_to_id, key=self.entity_to_id.get)

    @functools.cached_property
    def scoring(self):
        """The model's scoring function (PyKEEN's interaction) with its saved tensors, made once."""
        from pykeen.nn.modules import interaction_resolver

        if not self.settings.get("interaction"):
            raise util.CheckpointError("these KG embeddings were written by an earlier kge.py, without their scoring "
                                       "function; train them again to predict links.")
        spec = self.settings["interaction"]
        scoring = interaction_resolver.make(spec["name"], **spec["kwargs"])
        scoring.load_state_dict(self.interaction or {})
        return scoring

    def tail_scores(self, heads, relations):
        """[B, n_entities] link-prediction scores of every entity as the tail of (head, relation) (entity and
        relation ids, [B] each), by the model's own scoring function, rebuilt from the saved tensors (PyKEEN's
        interaction class, no pickle)."""
        entity, relation = self.entity, self.relation
        if self.settings.get("complex"):  # stored as the real view: re and im interleaved
            entity, relation = (torch.view_as_complex(x.reshape(len(x), -1, 2).contiguous())
                                for x in (entity, relation))
        with torch.no_grad():
            return self.scoring(entity[heads][:, None], relation[relations][:, None], entity[None])


def _read_json(path):
    if not os.path.isfile(path):
        raise util.CheckpointError(f"{path} not found: is {os.path.dirname(path)} an output directory of kge.py?")
    return util.read_json(path)


def load_kge(directory):
    """The embeddings, id maps and settings that kge.py wrote to directory (safetensors + JSON, no pickle)."""
    path = os.path.join(directory, EMBEDDINGS_FILE)
    if not os.path.isfile(path):
        raise util.CheckpointError(f"{path} not found: is {directory} an output directory of kge.py?")
    tensors, _ = checkpoints.read_safetensors(path)
    kge = KGE(entity=tensors.get("entity"), relation=tensors.get("relation"),
              entity_to_id=_read_json(os.path.join(directory, ENTITY_IDS_FILE)),
              relation_to_id=_read_json(os.path.join(directory, RELATION_IDS_FILE)),
              settings=_read_json(os.path.join(directory, SETTINGS_FILE)),
              interaction={k[len("interaction."):]: v for k, v in tensors.items() if k.startswith("interaction.")})
    for key, ids_file in (("entity", ENTITY_IDS_FILE), ("relation", RELATION_IDS_FILE)):
        rows, ids = getattr(kge, key), getattr(kge, f"{key}_to_id")
        if rows is None:
            raise util.CheckpointError(f"{path} holds no tensor `{key}` (found {sorted(tensors)}).")
        if sorted(ids.values()) != list(range(rows.shape[0])):
            raise util.CheckpointError(f"{os.path.join(directory, ids_file)} does not number the {rows.shape[0]} "
                                       f"rows of `{key}` in {path} as 0..{rows.shape[0] - 1}; the files do not "
                                       f"belong together.")
    return kge


def lookup(matrix, to_id, names):
    """(rows [len(names), width] of matrix for names in their order, lacking [len(names)]: the names to_id lacks,
    whose rows are zeros)."""
    table = torch.zeros(len(names), matrix.shape[1])
    lacking = torch.tensor([name not in to_id for name in names], dtype=torch.bool)
    known = [i for i, gone in enumerate(lacking.tolist()) if not gone]
    if known:
        table[known] = matrix[[to_id[names[i]] for i in known]].float()
    return table, lacking


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        device = util.pick_device(args.device)
        outputs = util.OutputFolder(args.out, args.force).check(OUTPUT_FILES)  # before the training, not after
        triples, source = load_triples(args)
        tensors, entity_to_id, relation_to_id, report = train(triples, args, device)
        entity, relation = tensors["entity"], tensors["relation"]
        save_kge(outputs, tensors, entity_to_id, relation_to_id,
                 settings(args, device, source, entity, relation, report, len(triples)))
    except (DataError, util.CheckpointError, util.UsageError) as e:
        sys.exit(f"error: {e}")
    print(f"trained on {report['train_triples']} triples in {report['train_seconds']:.1f}s")
    if "metrics" in report:
        m = report["metrics"]
        print(f"held-out link prediction ({m['held_out_triples']} triples, filtered): MRR {m['mrr']:.4f}, "
              f"Hits@1 {m['hits_at_1']:.4f}, Hits@10 {m['hits_at_10']:.4f}")
    print(f"wrote {args.out}/: {EMBEDDINGS_FILE} (entity {list(entity.shape)}, relation {list(relation.shape)}), "
          f"{ENTITY_IDS_FILE}, {RELATION_IDS_FILE}, {SETTINGS_FILE}")
    return args.out


if __name__ == "__main__":
    main()
