"""Knowledge in the VQA model (BOK-VQA): the knowledge modes, the vocabularies of heads, relations and tails, the
knowledge base (KB), the frozen KG-embedding codes of triples, how a code enters the fused feature (mul, film, concat),
the triple prediction heads (independent as GEL-VQA, cascade as HK-TriNet+), the KB constraint, and a predicted triple
paired with the question as words (gel_text, Link-Tuning's idea).

model.VQAModel is the skeleton that calls into these; train.py and model.load_run build them from a run's files.
"""
import math
import os

import pandas as pd
import torch
import torch.nn as nn

import kge
import util
from vqa_dataset import clean_text, parse_triples

MODES = ["none", "text", "ideal", "gel", "gel_text"]
FUSIONS = ["mul", "film", "concat"]
TRIPLE_HEADS = ["independent", "cascade"]
TRIPLE_ENCODERS = ["shared", "own"]
KB_SCORES = ["pair", "product"]  # how --kb_constrained scores a KB triple's tail (choose_triple)
ABSENT = -2  # a triple slot of a row with fewer triples (or none); -1 is a part outside the vocabulary
NO_KNOWLEDGE = "(no knowledge)"  # the relation class of rows without a triple, in the modes that predict one
VOCAB_FILE = "knowledge.json"  # a knowledge run's vocabularies
KGE_DIR = "kge"  # in a knowledge run's directory: the KG embeddings it was trained with (kge.py's files)
KB_FILE = "kb.csv"  # the knowledge base a run was trained with (h, r, t), in its run directory
KB_OPTION_HELP = ("a knowledge base CSV (h, r, t) instead of the one the run was trained with (its kb.csv), for runs "
                  "with --kb_constrained or --answer_from_kb: facts edited or added there change the answers without "
                  "training again")  # --kb of the scripts that answer with a trained run


def has_vocab(mode):
    return mode in ("ideal", "gel", "gel_text")


def predicts(mode):
    """The deployable modes: the triple is predicted, nothing gold is used at test."""
    return mode in ("gel", "gel_text")


def reads_gold(mode):
    """The upper-bound modes: they read the row's gold knowledge (as words, or as the triple's KG embeddings)."""
    return mode in ("text", "ideal")


def embeds(mode):
    """The modes that inject a triple's KG embeddings (and need --kge_dir)."""
    return mode in ("ideal", "gel")


# ---------------------------------------------------------------- vocabularies and the knowledge base

class KnowledgeVocab:
    """The heads, relations and tails the model knows, each its own vocabulary (as GEL-VQA's), from the triples of the
    train and valid rows: the triple heads' classes. In the modes that predict a triple the relations end with
    NO_KNOWLEDGE, the class of rows without one, so that such rows (type A) can be told apart and pass without
    knowledge. extended() appends names past the classes (from the knowledge base and the KG embeddings), which a
    triple can name though no train or valid row does. A name outside the vocabulary has id -1."""

    def __init__(self, heads, relations, tails, classes=None):
        self.parts = (list(heads), list(relations), list(tails))
        self.index = [{name: i for i, name in enumerate(names)} for names in self.parts]
        self.classes = list(classes or self.sizes)  # per part: how many of its names are the heads' classes

    @classmethod
    def from_rows(cls, df, predicting):
        triples = [t for cell in df["triple"] for t in parse_triples(cell)]
        heads, relations, tails = (sorted({t[i] for t in triples}) for i in range(3))
        return cls(heads, relations + ([NO_KNOWLEDGE] if predicting else []), tails)

    @classmethod
    def from_json(cls, saved):
        return cls(saved["heads"], saved["relations"], saved["tails"])

    def to_json(self):
        """The classes (what the weights depend on); the extension is made again where the run is loaded."""
        return {key: names[:n] for key, names, n in zip(("heads", "relations", "tails"), self.parts, self.classes)}

    def extended(self, heads=(), relations=(), tails=()):
        """This vocabulary with the given names it lacks appended to each part, ids from its classes on."""
        parts = [names + [n for n in dict.fromkeys(extra) if n not in known]
                 for names, extra, known in zip(self.parts, (heads, relations, tails), self.index)]
        return KnowledgeVocab(*parts, classes=self.classes)

    @property
    def sizes(self):
        return [len(names) for names in self.parts]

    @property
    def no_knowledge(self):
        """The relation id of NO_KNOWLEDGE (None where the relations lack it)."""
        return self.index[1].get(NO_KNOWLEDGE)

    def triple_ids(self, triple):
        return [self.index[i].get(part, -1) for i, part in enumerate(triple)]

    def ids(self, cell, slots):
        """[slots, 3] ids of a triple cell's triples (first hop first), ABSENT past its last one; a cell without a
        triple is (ABSENT, NO_KNOWLEDGE, ABSENT) where the relations have that class."""
        rows = [self.triple_ids(t) for t in parse_triples(cell)[:slots]]
        if not rows and self.no_knowledge is not None:
            rows = [[ABSENT, self.no_knowledge, ABSENT]]
        return rows + [[ABSENT] * 3] * (slots - len(rows))

    def names(self, ids):
        """(head, relation, tail) of predicted ids; None for a prediction of no knowledge."""
        if ids[0] < 0:
            return None
        return tuple(names[i] for names, i in zip(self.parts, ids))


def read_kb(path):
    """The distinct triples of a knowledge-base CSV with columns h, r, t (BOK-VQA's all_triple.csv, the sample's
    triples.csv), in file order."""
    triples, _ = kge.read_triples_csv(path)
    return list(dict.fromkeys(triples))


def training_kb(df):
    """The distinct triples of the rows' triple cells: the knowledge base where no KB file is given."""
    return list(dict.fromkeys(t for cell in df["triple"] for t in parse_triples(cell)))


def write_kb(path, triples):
    util.write_csv(path, pd.DataFrame(triples, columns=["h", "r", "t"]))


def load_run_knowledge(run_dir, config):
    """(vocabularies, KB triples or None, KG embeddings or None) of a knowledge run, from its knowledge.json, kb.csv
    (for --kb_constrained and --answer_from_kb) and kge/ (the KG embeddings it was trained with);
    (None, None, None) for a run without knowledge."""
    if not has_vocab(util.run_option(config, "knowledge")):
        return None, None, None
    path = os.path.join(run_dir, VOCAB_FILE)
    saved = util.read_json(path)
    if "heads" not in saved:
        raise util.CheckpointError(f"{path} was written by an earlier version of main.py (one entity vocabulary for "
                                   f"heads and tails); train the run again with this version.")
    embeddings = kge.load_kge(os.path.join(run_dir, KGE_DIR)) if os.path.isdir(os.path.join(run_dir, KGE_DIR)) else None
    if embeds(config["knowledge"]) and embeddings is None:
        raise util.CheckpointError(f"{run_dir} has no {KGE_DIR}/, the KG embeddings its model reads; restore it from a "
                                   f"copy of the run.")
    if not uses_kb(config):
        return KnowledgeVocab.from_json(saved), None, embeddings
    path = os.path.join(run_dir, KB_FILE)
    if not os.path.isfile(path):
        raise util.CheckpointError(f"{path} not found: a run with --kb_constrained or --answer_from_kb keeps the "
                                   f"knowledge base it was trained with there; restore it from a copy of the run.")
    return KnowledgeVocab.from_json(saved), read_kb(path), embeddings


def save_run_kge(run_dir, kge_dir):
    """A copy of the KG embeddings (kge.py's files) in the run directory, which then needs no --kge_dir to be used."""
    os.makedirs(os.path.join(run_dir, KGE_DIR), exist_ok=True)
    for name in kge.OUTPUT_FILES:
        with open(os.path.join(kge_dir, name), "rb") as f:
            util.atomic_write(os.path.join(run_dir, KGE_DIR, name), f.read())


def uses_kb(config):
    """Whether a run keeps a knowledge base: a mode with a vocabulary, with --kb_constrained or --answer_from_kb."""
    return has_vocab(util.run_option(config, "knowledge")) and \
        bool(config.get("kb_constrained") or config.get("answer_from_kb"))


# ---------------------------------------------------------------- KG-embedding codes and how they enter

class KnowledgeCodes(nn.Module):
    """[head; relation; tail] KG-embedding codes of triples given as vocabulary ids.

    attach() looks up each (extended) vocabulary name in the KG embeddings the run was trained with (a copy is in
    its directory) into frozen tables; a name they lack is embedded from its relations where the knowledge base links
    it to entities they hold (the mean of those entities' rows), else it takes a learned unknown vector of its slot,
    as does a part outside the vocabulary (rather than zeros, which would blank a third of the code). With
    centre_and_normalise (film, concat) rows are centred on their table's mean and L2-normalised: ConvKB's codes then
    differ by direction rather than by a shared offset."""

    SLOTS = ("head", "relation", "tail")

    def __init__(self, widths, centre_and_normalise=False):
        super().__init__()
        entity, relation = widths
        for slot, width in zip(self.SLOTS, (entity, relation, entity)):
            setattr(self, f"{slot}_unknown", nn.Parameter(torch.zeros(width)))
            self.register_buffer(f"{slot}_table", torch.zeros(0, width), persistent=False)
            self.register_buffer(f"{slot}_missing", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.centre_and_normalise = centre_and_normalise
        self.width = 2 * entity + relation

    def build_tables(self, vocab, embeddings, kb=None):
        """Each slot's rows for the vocabulary's names (attach); returns the names left without a row."""
        lacking, linked = [], {}
        for h, _, t in kb or ():  # each entity's KB neighbours, for the names the KG embeddings lack
            linked.setdefault(h, []).append(t)
            linked.setdefault(t, []).append(h)
        for slot, names in zip(self.SLOTS, vocab.parts):
            matrix, row_of = (embeddings.relation, embeddings.relation_to_id) if slot == "relation" else \
                (embeddings.entity, embeddings.entity_to_id)
            rows = [self.row(name, matrix, row_of, linked if slot != "relation" else {}) for name in names]
            missing = torch.tensor([r is None for r in rows], dtype=torch.bool)
            table = torch.stack([r if r is not None else torch.zeros(matrix.shape[1]) for r in rows])
            if self.centre_and_normalise:
                table = torch.nn.functional.normalize(table - matrix.float().mean(0), dim=-1)
            device = self.head_unknown.device
            setattr(self, f"{slot}_table", table.to(device))
            setattr(self, f"{slot}_missing", missing.to(device))
            lacking += [name for name, gone in zip(names, missing.tolist()) if gone and name != NO_KNOWLEDGE]
        return lacking

    @staticmethod
    def row(name, matrix, row_of, linked):
        """A name's row; for an entity the KG embeddings lack, the mean row of the entities the KB links it to
        (linked: each entity's KB neighbours)."""
        if name in row_of:
            return matrix[row_of[name]].float()
        rows = [row_of[other] for other in linked.get(name, ()) if other in row_of]
        return matrix[rows].float().mean(0) if rows else None

    def forward(self, triples):
        """(code [B, width] averaged over a row's triples, present [B]: whether the row has a triple) of triples
        [B, slots, 3]."""
        present = triples[..., 0] != ABSENT  # [B, slots]
        parts = []
        for i, slot in enumerate(self.SLOTS):
            ids = triples[..., i]
            table, missing = getattr(self, f"{slot}_table"), getattr(self, f"{slot}_missing")
            safe = ids.clamp(min=0)
            unknown = (ids < 0) | missing[safe]
            parts.append(torch.where(unknown[..., None], getattr(self, f"{slot}_unknown").to(table.dtype),
                                     table[safe]))
        embedded = torch.cat(parts, -1)
        weights = present[..., None].to(embedded.dtype)
        return (embedded * weights).sum(1) / weights.sum(1).clamp(min=1), present.any(1)


def film(x, gamma_beta):
    """Feature-wise linear modulation: x * (1 + gamma) + beta, gamma and beta the two halves of gamma_beta."""
    gamma, beta = gamma_beta.chunk(2, -1)
    return x * (1 + gamma) + beta


class Injection(nn.Module):
    """How a knowledge code k enters the fused feature f (--knowledge_fusion):
    mul (GEL-VQA's): f * P(k), P the identity where the code has f's width (as in the paper: 3 x 256 = 768), else a
    linear layer starting at the constant 1 (weight 0, bias 1), so that f * P(k) starts as f, as the codes' own
    product would not;
    film: f * (1 + gamma(k)) + beta(k), gamma and beta zero-initialised, so a run starts as the baseline;
    concat: [f; P(k)] into the answer path's first linear layer, as an added term W_k P(k), zero-initialised.
    Rows without knowledge pass through unchanged (type A questions cannot lose to it)."""

    def __init__(self, fusion, code_width, dim_q, dim_h):
        super().__init__()
        self.fusion = fusion
        if fusion == "mul":
            self.project = nn.Identity() if code_width == dim_q else nn.Linear(code_width, dim_q)
            if code_width != dim_q:
                nn.init.zeros_(self.project.weight)
                nn.init.ones_(self.project.bias)
        else:
            self.project = nn.Linear(code_width, 2 * dim_q) if fusion == "film" else nn.Linear(code_width, dim_h,
                                                                                                 bias=False)
            nn.init.zeros_(self.project.weight)
            if self.project.bias is not None:
                nn.init.zeros_(self.project.bias)

    def forward(self, fused, code, present):
        """(fused feature, term added to the answer path's first linear layer or None)."""
        keep = present[:, None]
        if self.fusion == "mul":
            return torch.where(keep, fused * self.project(code), fused), None
        if self.fusion == "film":
            return torch.where(keep, film(fused, self.project(code)), fused), None
        return fused, self.project(code) * keep


# ---------------------------------------------------------------- triple prediction

class FiLMFromLogits(nn.Module):
    """Conditions a feature on a previous prediction: FiLM with gamma and beta generated from its probabilities."""

    def __init__(self, n_classes, dim):
        super().__init__()
        self.generate = nn.Linear(n_classes, 2 * dim)

    def forward(self, x, logits):
        return film(x, self.generate(logits.softmax(-1)))


class TripleHeads(nn.Module):
    """Logits of the triple's head, relation and tail from the answer path's hidden features of the fused feature
    (image and question), z_iq, and of the question feature, z_q (GEL-VQA shares that linear layer and LayerNorm).

    independent (GEL-VQA): h from z_iq, r and t from z_q, a linear layer each.
    cascade (HK-TriNet+): a forward chain h -> r -> t (h from z_iq; r from z_q conditioned on h; t from z_q
    conditioned on r) and a backward chain t -> r -> h, each condition FiLM with gamma and beta generated from the
    previous step's probabilities; the two chains' logits are averaged."""

    def __init__(self, kind, dim_h, sizes):
        super().__init__()
        n_h, n_r, n_t = sizes
        self.kind = kind
        self.h, self.r, self.t = nn.Linear(dim_h, n_h), nn.Linear(dim_h, n_r), nn.Linear(dim_h, n_t)
        if kind == "cascade":
            self.back_h, self.back_r, self.back_t = nn.Linear(dim_h, n_h), nn.Linear(dim_h, n_r), nn.Linear(dim_h, n_t)
            self.r_given_h, self.t_given_r = FiLMFromLogits(n_h, dim_h), FiLMFromLogits(n_r, dim_h)
            self.r_given_t, self.h_given_r = FiLMFromLogits(n_t, dim_h), FiLMFromLogits(n_r, dim_h)

    def forward(self, z_iq, z_q):
        if self.kind == "independent":
            return {"h": self.h(z_iq), "r": self.r(z_q), "t": self.t(z_q)}
        h = self.h(z_iq)
        r = self.r(self.r_given_h(z_q, h))
        t = self.t(self.t_given_r(z_q, r))
        back_t = self.back_t(z_q)
        back_r = self.back_r(self.r_given_t(z_q, back_t))
        back_h = self.back_h(self.h_given_r(z_iq, back_r))
        return {"h": (h + back_h) / 2, "r": (r + back_r) / 2, "t": (t + back_t) / 2}


def head_log_prior(triples, classes, heads=None):
    """[relations, heads] log p(h | r) of the training rows' first gold triples (triples [N, slots, 3] ids; classes:
    the vocabulary's classes per part; heads [N]: the head's targets where they are not the triples' own, as
    head_targets gives them), add-one smoothed: the prior of --head_logit_adjustment. Trained with it
    added to its logits (logit adjustment, Menon et al., 2021), the head classifier gets no gradient toward the heads
    a relation never had in training, and so learns no bias against them; at test its own logits are used, and the
    knowledge base, not the training questions, says which heads a relation has (--kb_constrained)."""
    first = triples[:, 0] if heads is None else torch.cat([heads[:, None], triples[:, 0, 1:]], -1)
    known = (first[:, 0] >= 0) & (first[:, 1] >= 0)
    counts = torch.ones(classes[1], classes[0])
    counts.index_put_((first[known, 1], first[known, 0]), torch.ones(int(known.sum())), accumulate=True)
    return (counts / counts.sum(1, keepdim=True)).log()


def head_targets(df, vocab):
    """[N] the head classifier's targets of --head_from_answers: each row's first triple's head id, and for a row
    without a triple whose answer is the name of a head class (by answer_key), that head; else ABSENT. Such rows
    (type A questions like "what colour is the circle?", whose answer is the head of "which fruit has the colour of
    the circle?") teach the head to read the entity a question points at in more questions than the triple rows, and
    beside other relations than those the triple rows pair it with."""
    names = {}
    for i, name in enumerate(vocab.parts[0][:vocab.classes[0]]):
        names.setdefault(answer_key(name), i)
    heads = []
    for cell, answer in zip(df["triple"], df["answer"]):
        triples = parse_triples(cell)
        heads.append(vocab.triple_ids(triples[0])[0] if triples else names.get(answer_key(answer), ABSENT))
    return torch.tensor(heads, dtype=torch.long)


def log_probs(out, vocab):
    """The heads' log probabilities over the extended vocabulary: a name past the classes gets 1 / classes."""
    return [torch.nn.functional.pad(p, (0, n - p.shape[-1]), value=-math.log(p.shape[-1]))
            for p, n in zip((out[k].detach().float().log_softmax(-1) for k in "hrt"), vocab.sizes)]


def choose_triple(out, kb=None, no_knowledge=None, vocab=None, kb_score="pair", noise=0.0):
    """[B, 3] ids of the predicted triple: the argmax head, relation and tail, or, with a KB (a KnowledgeBase of the
    extended vocabulary), the KB triple with the highest product of the head's, the relation's and the tail's
    probability. kb_score says which tail probability: "pair", p(t | h, r, KB), the tail's probability among the KB's
    tails of that head and relation, so that an edited or added fact is found as readily as a trained one; or
    "product", the tail classifier's own p(t), so that the tail the question points at also chooses the head and
    relation (a tail the classifier never learnt, as an added fact's, is then seldom chosen). A name past the heads'
    classes takes the uniform probability of its part (1 / classes). A predicted NO_KNOWLEDGE relation gives
    (ABSENT, NO_KNOWLEDGE, ABSENT). No gradient flows through the choice.

    noise (--triple_noise, in training, with a KB): returns (chosen, fed), fed the choice with each row that has a
    triple replaced, with probability noise (torch's generator), by the KB triple ranked next, from the same scores.
    On the training questions the triple heads end up right almost always, at test far less often (train_hrt and
    valid_hrt in history.json); fed the model's own nearest confusions, the answer pass learns not to follow a wrong
    triple, and with fed_copy_targets the gate learns when the triple it read can be copied from."""
    if kb is None:
        logp = [out[k].detach().float().log_softmax(-1) for k in "hrt"]
        triple = torch.stack([p.argmax(-1) for p in logp], -1)
    else:
        logp = log_probs(out, vocab)
        score = kb_triple_scores(logp, kb, kb_score)
        triple = kb.ids[score.argmax(-1)]
    if no_knowledge is not None:
        none = logp[1].argmax(-1) == no_knowledge
        triple = torch.where(none[:, None], torch.tensor([ABSENT, no_knowledge, ABSENT], device=triple.device), triple)
    if not noise:
        return triple
    runner_up = kb.ids[score.topk(min(2, score.shape[-1]), dim=-1).indices[:, -1]]
    pick = (torch.rand(len(triple), device=triple.device) < noise) & (triple[:, 0] >= 0)
    return triple, torch.where(pick[:, None], runner_up, triple)


def kb_triple_scores(logp, kb, kb_score="pair"):
    """[B, K] log score of every KB triple (choose_triple's): log p(h) + log p(r) + the tail's (kb_score); logp: the
    heads' log_probs."""
    tail = kb.tail_given_pair(logp[2]) if kb_score == "pair" else logp[2][:, kb.ids[:, 2]]
    return logp[0][:, kb.ids[:, 0]] + logp[1][:, kb.ids[:, 1]] + tail


def fed_copy_targets(copy, fed, gold, tail_from_head=False):
    """[B] the copy gate's targets for the triples the answer pass read (fed [B, 3] ids; --triple_noise): a row's
    copy_targets value (copy [B]) where the part it copies (head or tail) is the gold triple's (gold [B, 3]), else the
    vocabulary, so that the gate learns whether the triple it is given can be copied from. tail_from_head
    (--answer_relation): the tail is looked up among the read head's KB facts, so it can be copied where that head
    is the gold one."""
    tail_right = fed[:, 0] == gold[:, 0] if tail_from_head else fed[:, 2] == gold[:, 2]
    right = torch.where(copy == PATHS.index("head"), fed[:, 0] == gold[:, 0], tail_right)
    return torch.where((copy == 0) | right, copy, torch.zeros_like(copy))


# ---------------------------------------------------------------- gold knowledge as words (text)

def question_alone(input_ids, attention_mask, separator):
    """attention_mask with every row's knowledge text masked out: every token after the question's first separator,
    so that the encoder reads "<s> q </s>", the question as it is encoded alone (a row without knowledge text is
    unchanged)."""
    is_separator = (input_ids == separator).long()
    after_question = is_separator.cumsum(-1) - is_separator > 0
    return attention_mask.masked_fill(after_question, 0)


def withhold_knowledge_text(input_ids, attention_mask, rate, separator):
    """attention_mask with each row's knowledge text masked out (question_alone) at rate (torch's generator;
    --knowledge_dropout). In training, the answer path then also learns to answer a type B question from the image
    and question, as the baseline does, and not only by reading the answer from its knowledge text."""
    withhold = torch.rand(len(input_ids), device=input_ids.device) < rate
    return torch.where(withhold[:, None], question_alone(input_ids, attention_mask, separator), attention_mask)


def withhold_triples(triples, rate):
    """triples [B, slots, 3] with each row's gold triples withheld at rate (torch's generator; --knowledge_dropout
    with ideal): made ABSENT, so that the row passes the injection unchanged, as a row without knowledge does. The
    copy gate still copies from the row's triple (copy_candidates reads it from the data, not from these ids)."""
    withhold = torch.rand(len(triples), device=triples.device) < rate
    return triples.masked_fill(withhold[:, None, None], ABSENT)


# ---------------------------------------------------------------- the predicted triple as words (gel_text)

class TripleText:
    """Pairs questions with their predicted triples as words, 'head relation tail' as --knowledge text writes a
    triple, in the tokenizer's own pair layout (<s> q </s></s> k </s> for XLM-R), the knowledge truncated first so
    that the question stays whole; a prediction of no knowledge leaves the question alone. Each vocabulary name is
    tokenized once, so a step costs no tokenizer call."""

    def __init__(self, tokenizer, vocab, max_token):
        self.parts = [[tokenizer(name, add_special_tokens=False)["input_ids"] for name in names]
                      for names in vocab.parts]
        self.max_token, self.pad_id = max_token, tokenizer.pad_token_id
        # the special tokens around one text and around a pair, found by encoding probes: any tokenizer's layout
        a, b = (tokenizer(x, add_special_tokens=False)["input_ids"] for x in ("a", "b"))
        single, pair = tokenizer("a")["input_ids"], tokenizer("a", "b")["input_ids"]
        start = single.index(a[0])
        self.single_specials = (start, len(single) - start - len(a))  # before and after a question
        start = pair.index(a[0])
        end = start + len(a) + pair[start + len(a):].index(b[0])
        self.prefix, self.middle, self.suffix = pair[:start], pair[start + len(a):end], pair[end + len(b):]

    def pair(self, input_ids, attention_mask, triples):
        """(input_ids, attention_mask) of the questions paired with triples [B, 3] (ids; ABSENT for none)."""
        rows = []
        special = len(self.prefix) + len(self.middle) + len(self.suffix)
        for ids, mask, triple in zip(input_ids.tolist(), attention_mask.tolist(), triples.tolist()):
            ids = ids[:sum(mask)]
            before, after = self.single_specials
            question = ids[before:len(ids) - after]
            room = self.max_token - special - len(question)
            if triple[0] < 0 or room <= 0:
                rows.append(ids)
                continue
            words = [token for part, i in zip(self.parts, triple) for token in part[i]][:room]
            rows.append(self.prefix + question + self.middle + words + self.suffix)
        longest = max(map(len, rows))
        paired = torch.tensor([row + [self.pad_id] * (longest - len(row)) for row in rows], device=input_ids.device)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows], device=input_ids.device)
        return paired, mask


# ---------------------------------------------------------------- a run's model, its metrics

def attach(model, vocab, tokenizer, max_token, kb_triples=None, embeddings=None):
    """Gives a model what its weights do not hold: its vocabulary, extended by the names of the knowledge base
    (kb_triples, for --kb_constrained and --answer_from_kb) and of the KG embeddings (a kge.KGE) that no train or
    valid row has; the KB triples as ids; the KG embeddings and the codes of every name
    (KnowledgeCodes.build_tables); and, for gel_text, the pairing of questions with predicted triples. Returns the
    names without a KG code."""
    if kb_triples is not None:
        vocab = vocab.extended(*zip(*kb_triples))
    if embeddings is not None:
        entities = embeddings.entity_names
        vocab = vocab.extended(entities, sorted(embeddings.relation_to_id, key=embeddings.relation_to_id.get), entities)
    model.vocab, model.kge = vocab, embeddings
    if kb_triples is not None:
        model.kb = KnowledgeBase(kb_triples, vocab).to(next(model.parameters()).device)
    if model.knowledge == "gel_text":
        model.triple_text = TripleText(tokenizer, vocab, max_token)
    return model.codes.build_tables(vocab, embeddings, kb_triples) if embeds(model.knowledge) else []


class KnowledgeBase(nn.Module):
    """A knowledge base as ids of a vocabulary extended by its names: ids [K, 3], and which (head, relation) pair
    each triple has (pair [K]), on the model's device."""

    def __init__(self, kb_triples, vocab):
        super().__init__()
        ids = torch.tensor([vocab.triple_ids(t) for t in kb_triples], dtype=torch.long).reshape(-1, 3)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("pair", torch.unique(ids[:, :2], dim=0, return_inverse=True)[1], persistent=False)
        self.tails = {}  # (head id, relation id) -> the KB's tail ids of that pair
        self.relations = {}  # head id -> the relation classes of its KB facts (what --answer_relation chooses from)
        for h, r, t in ids.tolist():
            self.tails.setdefault((h, r), []).append(t)
            if r < vocab.classes[1] and r not in self.relations.setdefault(h, []):
                self.relations[h].append(r)

    def tail_given_pair(self, tail_logp):
        """[B, K] log p(t | h, r, KB): the tail's log probability ([B, n_tails]) normalised over the KB's tails of its
        triple's head and relation."""
        logp = tail_logp[:, self.ids[:, 2]]
        index = self.pair.expand_as(logp)
        groups = int(self.pair.max()) + 1 if len(self.pair) else 0
        peak = logp.new_full((len(logp), groups), -math.inf).scatter_reduce(1, index, logp, "amax")
        total = logp.new_zeros(len(logp), groups).scatter_add(1, index, (logp - peak.gather(1, index)).exp())
        return logp - (total.log() + peak).gather(1, index)


def beyond_classes(kb_triples, vocab):
    """How many KB triples name a head, relation or tail that is none of the heads' classes (no train or valid row
    has it): reachable only through the knowledge base."""
    def within(triple):
        return all(0 <= i < n for i, n in zip(vocab.triple_ids(triple), vocab.classes))
    return sum(not within(t) for t in kb_triples)


def triple_hits(predicted, gold):
    """[n, h, r, t, hrt] counts: of the rows with a gold triple (gold [N, 3], its first one), how many have the
    predicted (predicted [N, 3]) head, relation, tail and all three right."""
    rows = gold[:, 0] != ABSENT
    same = predicted[rows] == gold[rows]
    return [int(rows.sum()), *same.sum(0).tolist(), int(same.all(-1).sum())]


# ---------------------------------------------------------------- answers copied from the knowledge (--answer_from_kb)

PATHS = ["vocabulary", "head", "tail"]  # the copy gate's choices: the answer classifier, or a copied name
SOURCES = PATHS + ["inferred tail"]  # where an answer came from: a copied tail may be inferred by link prediction


def answer_key(text):
    """How an answer and an entity's name are compared for copying: the repo's text clean-up, case folded, and
    underscores read as spaces (BOK-VQA's entity names write spaces so: Sports_Facilities)."""
    return " ".join(clean_text(text).casefold().replace("_", " ").split())


def copy_targets(df, answer_relations=None):
    """[N] the copy gate's target of each row: 1 where its answer is its (first) triple's head by answer_key, 2 where
    it is its tail, else 0 (the answer vocabulary). With answer_relations (--answer_relation's targets), 2 where the
    answer is the tail of a KB fact of the head (answer_relation_targets), the triple's own or another."""
    targets = []
    for row, (cell, answer) in enumerate(zip(df["triple"], df["answer"])):
        triples, key = parse_triples(cell), answer_key(answer)
        tail = answer_relations[row] >= 0 if answer_relations is not None else \
            bool(triples) and answer_key(triples[0][2]) == key
        targets.append(0 if not triples else PATHS.index("head") if answer_key(triples[0][0]) == key else
                       PATHS.index("tail") if tail else 0)
    return torch.tensor(targets, dtype=torch.long)


def answer_relation_targets(df, vocab, kb):
    """[N] --answer_relation's target of each row: the relation class r of a KB fact (h, r, t) of its (first)
    triple's head h whose tail t is its answer (answer_key), the triple's own relation where that is one; -1 where
    the KB (a KnowledgeBase) has none, or the row no triple. BOK-VQA asks "what order is the livestock in the
    image?" with the triple (Pig, subject, Livestock): the answer, Artiodactyla, is the tail of (Pig, order, ·)."""
    relations = {}  # (head id, the tail's answer_key) -> relation classes, in KB order
    for (h, r), tails in kb.tails.items():
        if r < vocab.classes[1]:
            for t in tails:
                relations.setdefault((h, answer_key(vocab.parts[2][t])), []).append(r)
    targets = []
    for cell, answer in zip(df["triple"], df["answer"]):
        triples = parse_triples(cell)
        h, r, _ = vocab.triple_ids(triples[0]) if triples else (-1, -1, -1)
        found = relations.get((h, answer_key(answer)), [])
        targets.append(r if r in found else found[0] if found else -1)
    return torch.tensor(targets, dtype=torch.long)


def copy_candidates(model, out, df):
    """Per row, the (head, tail, whether the tail is inferred) names an answer may be copied from, or None: for text
    and ideal the row's gold triple; else the predicted triple's head, and its tail as the knowledge base gives it: the
    --kb_constrained choice's own, else the KB tail of the predicted head and relation that the tail head finds
    most probable, else (the KB has no tail for them) the KG embeddings' best-scoring tail, inferred by link
    prediction, or without KG embeddings the tail head's own, also marked inferred. With --answer_relation the
    tail is that of the head's KB fact the answer-relation classifier chooses (answer_relation_tails)."""
    candidates = triple_candidates(model, out, df)
    return candidates if model.answer_relation is None else answer_relation_tails(model, out, candidates)


def answer_relation_tails(model, out, candidates):
    """candidates (copy_candidates') with each row's tail replaced by that of the predicted head's KB fact whose
    relation the answer-relation classifier ranks first among the head's KB relations (of that pair's KB tails, the
    one the tail head finds most probable); a row whose head has no KB fact keeps its own."""
    kb, relation_logits = model.kb, out["answer_relation"].detach().float()
    tail_logp = log_probs(out, model.vocab)[2]
    rows = []
    for row, (candidate, h) in enumerate(zip(candidates, out["triple"][:, 0].tolist())):
        if candidate is None or h not in kb.relations:
            rows.append(candidate)
            continue
        r = max(kb.relations[h], key=lambda i: float(relation_logits[row, i]))
        t = max(kb.tails[h, r], key=lambda i: float(tail_logp[row, i]))
        rows.append((candidate[0], model.vocab.parts[2][t], False))
    return rows


def triple_candidates(model, out, df):
    """copy_candidates without --answer_relation: the names of the row's gold or predicted triple."""
    if not predicts(model.knowledge):
        return [(t[0][0], t[0][2], False) if t else None for t in map(parse_triples, df["triple"])]
    vocab, triples = model.vocab, out["triple"].tolist()
    if model.kb is None or model.kb_constrained:
        return [(vocab.parts[0][h], vocab.parts[2][t], False) if h >= 0 else None for h, _, t in triples]
    tails = model.kb.tails
    tail_logp = log_probs(out, vocab)[2]
    rows = []
    for row, (h, r, t) in enumerate(triples):
        if h < 0:
            rows.append(None)
        elif (h, r) in tails:
            best = max(tails[h, r], key=lambda i: float(tail_logp[row, i]))
            rows.append((vocab.parts[0][h], vocab.parts[2][best], False))
        else:
            rows.append((vocab.parts[0][h], link_prediction(model.kge, vocab.parts[0][h], vocab.parts[1][r]) or
                         vocab.parts[2][t], True))
    return rows


def link_prediction(embeddings, head, relation):
    """The KG embeddings' best-scoring tail of (head, relation) other than the head, or None without them or where
    they lack the head or relation."""
    if embeddings is None or head not in embeddings.entity_to_id or relation not in embeddings.relation_to_id:
        return None
    h = embeddings.entity_to_id[head]
    scores = embeddings.tail_scores(torch.tensor([h]), torch.tensor([embeddings.relation_to_id[relation]]))[0]
    scores[h] = -math.inf
    return embeddings.entity_names[int(scores.argmax())]


class AnswerChooser:
    """The answers of a run with --answer_from_kb: the answer classifier's probabilities times the gate's
    vocabulary probability, and the gate's head and tail probabilities on the names of the triple's head and tail
    (added to the vocabulary answer with the same answer_key, if there is one; else the name is an answer of its
    own, outside the vocabulary). A row without a triple answers from the vocabulary."""

    def __init__(self, answers):
        self.answers = answers
        self.index = {}
        for i, answer in enumerate(answers):  # the most frequent spelling of an answer_key first
            self.index.setdefault(answer_key(answer), i)

    def choose(self, probs, gate_logits, candidates, top_k):
        """Per row [(answer, probability, source)] of its top_k answers, source (SOURCES) the path with the largest
        share of the answer's probability; candidates: per row (head, tail, tail inferred) or None."""
        gates = gate_logits.float().softmax(-1).tolist()
        tops = probs.topk(min(top_k + 2, probs.shape[-1]), dim=-1)
        rows = []
        for row, (gate, names) in enumerate(zip(gates, candidates)):
            if names is None:
                gate = [1.0, 0.0, 0.0]
            shares = {}  # answer -> probability from each path
            for p, i in zip(tops.values[row].tolist(), tops.indices[row].tolist()):
                shares[self.answers[i]] = [gate[0] * p, 0.0, 0.0]
            for path, name in zip((1, 2), names[:2] if names else ()):
                i = self.index.get(answer_key(name))
                answer = self.answers[i] if i is not None else name
                share = shares.setdefault(answer, [gate[0] * float(probs[row, i]) if i is not None else 0.0, 0.0, 0.0])
                share[path] += gate[path]
            ranked = sorted(shares.items(), key=lambda item: -sum(item[1]))[:top_k]
            inferred = bool(names and names[2])
            rows.append([(answer, sum(share), self.source(share, inferred)) for answer, share in ranked])
        return rows

    @staticmethod
    def source(share, inferred):
        path = max(range(len(PATHS)), key=share.__getitem__)
        return SOURCES.index("inferred tail") if inferred and PATHS[path] == "tail" else path


def copied_right(answer, source, gold):
    """A vocabulary answer is right when it is the gold answer; a copied name when it has its answer_key."""
    return answer == gold if SOURCES[source] == "vocabulary" else answer_key(answer) == answer_key(gold)
