"""Losses for probability maps: binary cross-entropy and the soft Dice coefficient."""

from __future__ import annotations

import torch

from ._common import check_pair, per_image_sum, reduce, safe_divide

LOG_CLAMP = -100.0


def _clamped_log(values: torch.Tensor) -> torch.Tensor:
    """``max(log(values), -100)``, with ``log(0) = -100`` and a finite (zero) gradient there."""
    positive = values > 0
    return torch.where(positive, torch.log(torch.where(positive, values, 1.0)), LOG_CLAMP).clamp_min(
        LOG_CLAMP
    )


def binary_cross_entropy_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-(t log p + (1 - t) log(1 - p))`` with each log clamped at -100, as ``torch.nn.BCELoss``."""
    return -(target * _clamped_log(pred) + (1.0 - target) * _clamped_log(1.0 - pred))


def bce_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of probabilities ``pred`` against (soft) targets ``target``.

    Matches ``torch.nn.functional.binary_cross_entropy`` (logs clamped at -100). ``pred`` must lie in
    ``[0, 1]``; ``reduction='none'`` gives the element-wise losses.
    """
    pred, target = check_pair(pred, target)
    if pred.numel() and (pred.min() < 0 or pred.max() > 1):
        raise ValueError("pred must hold probabilities in [0, 1] for binary cross-entropy")
    return reduce(binary_cross_entropy_error(pred, target), reduction)


def dice_from_sums(intersection: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``2 intersection / total``, and 1.0 where ``total == 0`` (both masks empty)."""
    return safe_divide(2.0 * intersection, total, if_zero=1.0)


def dice_coefficient(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Soft Dice coefficient per image, ``2 sum(p t) / (sum(p) + sum(t))`` over ``C*H*W``.

    ``pred``, ``target``: ``(N, C, H, W)`` soft masks in ``[0, 1]``. Two empty masks score 1.0.
    ``reduction='none'`` gives ``(N,)``. Higher is better; ``1 - dice`` is the Dice loss.
    """
    pred, target = check_pair(pred, target, image=True)
    intersection = per_image_sum(pred * target)
    total = per_image_sum(pred) + per_image_sum(target)
    return reduce(dice_from_sums(intersection, total), reduction)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Dice loss ``1 - dice_coefficient`` per image (see :func:`dice_coefficient`)."""
    return reduce(1.0 - dice_coefficient(pred, target, reduction="none"), reduction)
