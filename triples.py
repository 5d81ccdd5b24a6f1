"""Triple prediction: the heads that predict a question's (head, relation, tail) from a feature of the image and the
question (z_iq) and one of the question alone (z_q), independent (GEL-VQA's) or as HiLINK's HK-TriNet+ cascade; their
loss; and what teaches the head classifier beyond the triple rows (logit adjustment by a prior, targets from
answers)."""
import torch
import torch.nn as nn

from focal import known_cross_entropy
from kb import answer_key
from vocab import ABSENT
from vqa_dataset import parse_triples

HEADS = ["independent", "cascade"]


class IndependentHeads(nn.Module):
    """GEL-VQA's: h from z_iq, r and t from z_q, a linear layer each."""

    def __init__(self, dim_h, sizes):
        super().__init__()
        self.h, self.r, self.t = (nn.Linear(dim_h, n) for n in sizes)

    def forward(self, z_iq, z_q):
        return {"h": self.h(z_iq), "r": self.r(z_q), "t": self.t(z_q)}


def mlp(dim_h, n_out):
    """HiLINK's head: dim_h -> 2 dim_h -> 3 dim_h -> n_out, each hidden layer normalised then rectified."""
    return nn.Sequential(nn.Linear(dim_h, 2 * dim_h), nn.LayerNorm(2 * dim_h), nn.ReLU(),
                         nn.Linear(2 * dim_h, 3 * dim_h), nn.LayerNorm(3 * dim_h), nn.ReLU(),
                         nn.Linear(3 * dim_h, n_out))


class FiLMGenerator(nn.Module):
    """gamma and beta [B, width] from a previous prediction's raw logits, each through Linear + LayerNorm + ReLU +
    dropout (HiLINK's)."""

    def __init__(self, n_classes, width, dropout):
        super().__init__()
        self.gamma, self.beta = (nn.Sequential(nn.Linear(n_classes, width), nn.LayerNorm(width), nn.ReLU(),
                                               nn.Dropout(dropout)) for _ in range(2))

    def forward(self, logits):
        return self.gamma(logits), self.beta(logits)


class ConditionedHead(nn.Module):
    """HiLINK's conditioned head: x -> (Linear, ReLU, LayerNorm) twice to 3 dim_h, modulated x (1 + gamma) + beta,
    then a linear classifier."""

    def __init__(self, dim_h, n_out):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim_h, 2 * dim_h), nn.ReLU(), nn.LayerNorm(2 * dim_h),
                                   nn.Linear(2 * dim_h, 3 * dim_h), nn.ReLU(), nn.LayerNorm(3 * dim_h))
        self.out = nn.Linear(3 * dim_h, n_out)

    def forward(self, x, gamma_beta):
        gamma, beta = gamma_beta
        x = self.trunk(x)
        return self.out(x * (1 + gamma) + beta)


class CascadeHeads(nn.Module):
    """HiLINK's HK-TriNet+: a forward chain h -> r -> t (h from z_iq; r from z_q conditioned on h; t from z_q
    conditioned on r) and a backward chain t -> r -> h (t from z_q; r from z_q conditioned on t; h from z_iq
    conditioned on r), each condition FiLM with gamma and beta generated from the previous step's raw logits; the
    relation's conditioned head and the FiLM generated from the relation serve both chains. The chains' logits are
    averaged."""

    def __init__(self, dim_h, sizes, dropout):
        super().__init__()
        n_h, n_r, n_t = sizes
        self.h, self.t = mlp(dim_h, n_h), mlp(dim_h, n_t)  # the chains' first steps
        self.r_given, self.t_given_r, self.h_given_r = (ConditionedHead(dim_h, n) for n in (n_r, n_t, n_h))
        self.from_h, self.from_r, self.from_t = (FiLMGenerator(n, 3 * dim_h, dropout) for n in sizes)

    def forward(self, z_iq, z_q):
        h = self.h(z_iq)
        r = self.r_given(z_q, self.from_h(h))
        t = self.t_given_r(z_q, self.from_r(r))
        back_t = self.t(z_q)
        back_r = self.r_given(z_q, self.from_t(back_t))
        back_h = self.h_given_r(z_iq, self.from_r(back_r))
        return {"h": (h + back_h) / 2, "r": (r + back_r) / 2, "t": (t + back_t) / 2}


def triple_heads(kind, dim_h, sizes, dropout):
    return CascadeHeads(dim_h, sizes, dropout) if kind == "cascade" else IndependentHeads(dim_h, sizes)


def triple_loss(out, triples, head_log_prior=None, heads=None):
    """Cross entropy of the predicted head, relation and tail against the first gold triple, equal weights (GEL-VQA's
    and HiLINK's); parts without a target (ids below 0) add nothing, so rows without a triple teach only the relation
    (NO_KNOWLEDGE). head_log_prior ([relations, heads], head_log_prior): the head's logits adjusted by the prior of
    the gold relation (logit adjustment). heads [B]: the head's targets (head_targets) instead of the triples' own."""
    target = triples[:, 0].clamp(min=-1)  # ABSENT -> -1
    if heads is not None:
        target = torch.cat([heads[:, None].clamp(min=-1), target[:, 1:]], -1)
    logits = dict(out)
    if head_log_prior is not None:
        logits["h"] = out["h"].float() + head_log_prior[target[:, 1].clamp(min=0)]
    return sum(known_cross_entropy(logits[part], target[:, i]) for i, part in enumerate("hrt"))


def head_log_prior(triples, classes, heads=None):
    """[relations, heads] log p(h | r) of the training rows' first gold triples (triples [N, slots, 3] ids; classes:
    the vocabulary's classes per part; heads [N]: the head's targets where they are not the triples' own, as
    head_targets gives them), add-one smoothed. Trained with it added to its logits (logit adjustment, Menon et al.,
    2021), the head classifier gets no gradient toward the heads a relation never had in training, and so learns no
    bias against them; at test its own logits are used, and the knowledge base, not the training questions, says
    which heads a relation has."""
    first = triples[:, 0] if heads is None else torch.cat([heads[:, None], triples[:, 0, 1:]], -1)
    known = (first[:, 0] >= 0) & (first[:, 1] >= 0)
    counts = torch.ones(classes[1], classes[0])
    counts.index_put_((first[known, 1], first[known, 0]), torch.ones(int(known.sum())), accumulate=True)
    return (counts / counts.sum(1, keepdim=True)).log()


def head_targets(df, vocab):
    """[N] the head classifier's targets with head_from_answers: each row's first triple's head id, and for a row
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


def triple_hits(predicted, gold):
    """[n, h, r, t, hrt] counts: of the rows with a gold triple (gold [N, 3], its first one), how many have the
    predicted (predicted [N, 3]) head, relation, tail and all three right."""
    rows = gold[:, 0] != ABSENT
    same = predicted[rows] == gold[rows]
    return [int(rows.sum()), *same.sum(0).tolist(), int(same.all(-1).sum())]
