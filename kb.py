"""The knowledge base (KB) and answers copied from it: a CSV of (head, relation, tail) facts read at run time, the
predicted triple constrained to its facts, and a copy gate that answers from the answer vocabulary or copies the
triple's head or tail, so that an answer can be a name no training question had (an edited or added fact)."""
import math

import pandas as pd
import torch
import torch.nn as nn

import kge
import util
from vocab import ABSENT
from vqa_dataset import clean_text, parse_triples

PATHS = ["vocabulary", "head", "tail"]  # the copy gate's choices: the answer classifier, or a copied name
SOURCES = PATHS + ["inferred tail"]  # where an answer came from: a copied tail may be inferred by link prediction
KB_OPTION_HELP = ("a knowledge base CSV (h, r, t) instead of the one the run was trained with (its kb.csv), for the "
                  "models that read one: facts edited or added there change the answers without training again")


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


class KnowledgeBase(nn.Module):
    """A knowledge base as ids of a vocabulary extended by its names: ids [K, 3], and which (head, relation) pair
    each triple has (pair [K]), on the model's device."""

    def __init__(self, kb_triples, vocab):
        super().__init__()
        ids = torch.tensor([vocab.triple_ids(t) for t in kb_triples], dtype=torch.long).reshape(-1, 3)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("pair", torch.unique(ids[:, :2], dim=0, return_inverse=True)[1], persistent=False)
        self.tails = {}  # (head id, relation id) -> the KB's tail ids of that pair
        for h, r, t in ids.tolist():
            self.tails.setdefault((h, r), []).append(t)

    def tail_given_pair(self, tail_logp):
        """[B, K] log p(t | h, r, KB): the tail's log probability ([B, n_tails]) normalised over the KB's tails of its
        triple's head and relation."""
        logp = tail_logp[:, self.ids[:, 2]]
        index = self.pair.expand_as(logp)
        groups = int(self.pair.max()) + 1 if len(self.pair) else 0
        peak = logp.new_full((len(logp), groups), -math.inf).scatter_reduce(1, index, logp, "amax")
        total = logp.new_zeros(len(logp), groups).scatter_add(1, index, (logp - peak.gather(1, index)).exp())
        return logp - (total.log() + peak).gather(1, index)

    def scores(self, out, vocab):
        """[B, K] the log score of every KB triple: log p(h) + log p(r) + log p(t | h, r, KB), so that an edited or
        added fact's tail is found as readily as a trained one."""
        logp = log_probs(out, vocab)
        return logp[0][:, self.ids[:, 0]] + logp[1][:, self.ids[:, 1]] + self.tail_given_pair(logp[2])


def beyond_classes(kb_triples, vocab):
    """How many KB triples name a head, relation or tail that is none of the heads' classes (no train or valid row
    has it): reachable only through the knowledge base."""
    def within(triple):
        return all(0 <= i < n for i, n in zip(vocab.triple_ids(triple), vocab.classes))
    return sum(not within(t) for t in kb_triples)


def log_probs(out, vocab):
    """The triple heads' log probabilities over the extended vocabulary: a name past the classes gets 1 / classes."""
    return [torch.nn.functional.pad(p, (0, n - p.shape[-1]), value=-math.log(p.shape[-1]))
            for p, n in zip((out[k].detach().float().log_softmax(-1) for k in "hrt"), vocab.sizes)]


def choose_triple(out, no_knowledge, kb=None, vocab=None):
    """[B, 3] ids of the predicted triple: the argmax head, relation and tail, or with a KB (a KnowledgeBase of the
    extended vocabulary; --kb_constrained) its best-scoring triple (KnowledgeBase.scores). A predicted NO_KNOWLEDGE
    relation gives (ABSENT, NO_KNOWLEDGE, ABSENT). No gradient flows through the choice."""
    if kb is None:
        triple = torch.stack([out[k].detach().argmax(-1) for k in "hrt"], -1)
    else:
        triple = kb.ids[kb.scores(out, vocab).argmax(-1)]
    none = out["r"].detach().argmax(-1) == no_knowledge
    return torch.where(none[:, None], torch.tensor([ABSENT, no_knowledge, ABSENT], device=triple.device), triple)


def misread(out, read, kb, vocab, rate):
    """read [B, 3] with each row that has a triple replaced, at rate (torch's generator; --triple_noise), by the KB
    triple the model scores highest among those other than the one it reads. The triple heads end up right on
    almost every training question but not at test; fed the model's own nearest confusions, the answer learns not
    to follow a wrong triple."""
    best = kb.ids[kb.scores(out, vocab).topk(min(2, len(kb.ids)), dim=-1).indices]  # [B, 2, 3]
    other = torch.where((best[:, :1] == read[:, None]).all(-1), best[:, -1], best[:, 0])
    pick = (torch.rand(len(read), device=read.device) < rate) & (read[:, 0] >= 0)
    return torch.where(pick[:, None], other, read)


# ---------------------------------------------------------------- answers copied from the knowledge (answer_from_kb)

def answer_key(text):
    """How an answer and an entity's name are compared for copying: the repo's text clean-up, case folded, and
    underscores read as spaces (BOK-VQA's entity names write spaces so: Sports_Facilities)."""
    return " ".join(clean_text(text).casefold().replace("_", " ").split())


def copy_targets(df):
    """[N] the copy gate's target of each row: 1 where its answer is its (first) triple's head by answer_key, 2 where
    it is its tail, else 0 (the answer vocabulary)."""
    targets = []
    for cell, answer in zip(df["triple"], df["answer"]):
        triples, key = parse_triples(cell), answer_key(answer)
        targets.append(0 if not triples else PATHS.index("head") if answer_key(triples[0][0]) == key else
                       PATHS.index("tail") if answer_key(triples[0][2]) == key else 0)
    return torch.tensor(targets, dtype=torch.long)


def read_copy_targets(copy, read, gold):
    """[B] the copy gate's targets for the triples the answer read (read [B, 3] ids): a row's copy_targets value
    (copy [B]) where the part it copies (head or tail) is the gold triple's (gold [B, 3]), else the vocabulary, so
    that the gate learns whether the triple it is given can be copied from."""
    right = torch.where(copy == PATHS.index("head"), read[:, 0] == gold[:, 0], read[:, 2] == gold[:, 2])
    return torch.where((copy == 0) | right, copy, torch.zeros_like(copy))


def gold_candidates(df):
    """Per row, the (head, tail, tail inferred) names of its gold triple an answer may be copied from, or None."""
    return [(t[0][0], t[0][2], False) if t else None for t in map(parse_triples, df["triple"])]


def predicted_candidates(model, out):
    """Per row, the (head, tail, whether the tail is inferred) names of the predicted triple an answer may be copied
    from, or None: its head, and its tail as the knowledge base gives it: the --kb_constrained choice's own, else
    the KB tail of the predicted head and relation that the tail head finds most probable, else (the KB has no tail
    for them) the KG embeddings' best-scoring tail, inferred by link prediction, or without KG embeddings the tail
    head's own, also marked inferred."""
    vocab, triples = model.vocab, out["triple"].tolist()
    if model.kb is None or model.config.kb_constrained:
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
    """The answers of a model with a copy gate: the answer classifier's probabilities times the gate's
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
