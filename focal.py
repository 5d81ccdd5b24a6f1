"""The losses: focal loss (Lin et al., 2017), per sample, with optional class weights and label smoothing, and
GEL-VQA's triple loss."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class FocalLoss(nn.Module):
    """loss_i = w[y_i] * (1 - p_i)^gamma * CE_i, where p_i is the predicted probability of the true class
    and CE_i the (label-smoothed) cross entropy. gamma=0 without weights and smoothing is plain cross entropy.
    Targets equal to ignore_index (answers outside the vocabulary) contribute nothing."""

    def __init__(self, gamma=2.0, weight=None, label_smoothing=0.0, ignore_index=-1):
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float))

    def forward(self, logits, target):
        keep = target != self.ignore_index
        logits, target = logits[keep].float(), target[keep]
        if len(target) == 0:
            return logits.sum() * 0.0
        log_p = F.log_softmax(logits, dim=-1)
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        p_true = log_p.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - p_true).pow(self.gamma) * ce
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def build_loss(name, gamma=2.0, label_smoothing=0.0, weight=None):
    if name == "focal":
        return FocalLoss(gamma=gamma, weight=weight, label_smoothing=label_smoothing)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=None if weight is None else torch.as_tensor(weight, dtype=torch.float),
                                   label_smoothing=label_smoothing, ignore_index=-1)
    raise ValueError(f"unknown loss {name!r}: use focal or ce")


def known_cross_entropy(logits, target):
    """Cross entropy over the rows whose target is known (not -1), summed and divided by their count: a batch without
    any still gives every parameter a (zero) gradient, as DistributedDataParallel needs."""
    return F.cross_entropy(logits, target, ignore_index=-1, reduction="sum") / (target >= 0).sum().clamp(min=1)


def triple_loss(out, triples, head_log_prior=None, heads=None):
    """GEL-VQA's knowledge loss: cross entropy of the predicted head, relation and tail against the first gold triple,
    equal weights; rows without a triple and parts unseen in training (ids below 0) add nothing. head_log_prior
    ([relations, heads], knowledge.head_log_prior): the head's logits are adjusted by the prior of the gold relation
    (--head_logit_adjustment). heads [B]: the head's targets (knowledge.head_targets) instead of the triples' own."""
    target = triples[:, 0].clamp(min=-1)  # ABSENT -> -1
    if heads is not None:
        target = torch.cat([heads[:, None].clamp(min=-1), target[:, 1:]], -1)
    logits = dict(out)
    if head_log_prior is not None:
        logits["h"] = out["h"].float() + head_log_prior[target[:, 1].clamp(min=0)]
    return sum(known_cross_entropy(logits[part], target[:, i]) for i, part in enumerate("hrt"))
