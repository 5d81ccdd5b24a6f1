"""Focal loss against a direct computation on known logits."""
import math

import pytest
import torch
import torch.nn.functional as F

from focal import FocalLoss, build_loss

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-2.0, 3.0, 0.0]])
TARGET = torch.tensor([0, 2, 0])


def reference(logits, target, gamma, weight=None, smoothing=0.0):
    """Sum over samples of w_y (1 - p_y)^gamma * CE_smoothed, divided by the sample count: by hand, in floats."""
    total = 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        k = len(row)
        ce = -sum(((1 - smoothing) * (j == y) + smoothing / k) * math.log(p[j]) for j in range(k))
        total += (1.0 if weight is None else weight[y]) * (1 - p[y]) ** gamma * ce
    return total / len(target)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 5.0])
def test_focal_matches_reference(gamma):
    assert FocalLoss(gamma)(LOGITS, TARGET).item() == pytest.approx(reference(LOGITS, TARGET, gamma), rel=1e-5)


def test_focal_with_weights_and_smoothing():
    weight = [0.5, 2.0, 1.5]
    loss = FocalLoss(2.0, weight=weight, label_smoothing=0.1)(LOGITS, TARGET).item()
    assert loss == pytest.approx(reference(LOGITS, TARGET, 2.0, weight, 0.1), rel=1e-5)


def test_gamma_zero_is_cross_entropy_and_focal_downweights_easy_samples():
    assert FocalLoss(0.0)(LOGITS, TARGET).item() == pytest.approx(F.cross_entropy(LOGITS, TARGET).item(), rel=1e-6)
    easy = torch.tensor([[6.0, 0.0, 0.0]])
    ratio = FocalLoss(2.0)(easy, torch.tensor([0])) / F.cross_entropy(easy, torch.tensor([0]))
    assert ratio.item() < 1e-4


def test_unknown_answers_are_ignored():
    target = torch.tensor([0, -1, 0])
    keep = torch.tensor([0, 2])
    assert FocalLoss(2.0)(LOGITS, target).item() == pytest.approx(FocalLoss(2.0)(LOGITS[keep], TARGET[keep]).item())
    assert build_loss("ce")(LOGITS, target).item() == pytest.approx(F.cross_entropy(LOGITS[keep], TARGET[keep]).item())
    assert FocalLoss(2.0)(LOGITS[:1], torch.tensor([-1])).item() == 0.0


def test_gradient_flows():
    logits = LOGITS.clone().requires_grad_()
    FocalLoss(2.0)(logits, TARGET).backward()
    assert logits.grad.abs().sum() > 0


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="focal or ce"):
        build_loss("mse")
