"""Total variation of a prediction, plain and weighted (BasicSR ``WeightedTVLoss``)."""

from __future__ import annotations

import math

import torch

from ._common import check_pair, check_tensor, per_image_sum, reduce, safe_divide, safe_sqrt


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences ``(x[:, :, i+1, j] - x[:, :, i, j], x[:, :, i, j+1] - x[:, :, i, j])``.

    Shapes ``(N, C, H-1, W)`` (vertical) and ``(N, C, H, W-1)`` (horizontal).
    """
    return images[:, :, 1:, :] - images[:, :, :-1, :], images[:, :, :, 1:] - images[:, :, :, :-1]


# Images of more than this many values (a whole batch) are taken in bands of rows, so that the
# gradients and their temporaries need a band's memory rather than the image's (a 12000 x 12000 RGB
# image is 432M values: each full-size float32 temporary 1.7 GB).
TV_BAND_VALUES = 1 << 24


def _row_bands(images: torch.Tensor) -> list[tuple[int, int]]:
    """Row ranges ``[first, end)`` that cover the images: one unless they exceed ``TV_BAND_VALUES``."""
    batch, channels, height, width = images.shape
    rows = max(1, TV_BAND_VALUES // max(1, batch * channels * width))
    return [(first, min(first + rows, height)) for first in range(0, height, rows)]


def _band_gradients(images: torch.Tensor, first: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The vertical differences of rows ``[first, min(end, H - 1))`` and the horizontal differences of
    rows ``[first, end)``: over all bands, every difference of :func:`image_gradients` exactly once."""
    band = images[:, :, first : min(end + 1, images.shape[2])]
    return band[:, :, 1:] - band[:, :, :-1], band[:, :, : end - first, 1:] - band[:, :, : end - first, :-1]


def tv_loss(pred: torch.Tensor, isotropic: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Total variation of each image, normalised by its ``C*H*W`` values.

    Anisotropic (default): ``(sum |dy| + sum |dx|) / (C H W)``. Isotropic:
    ``sum sqrt(dy^2 + dx^2) / (C H W)`` over the ``(H-1) x (W-1)`` grid where both differences exist.
    ``pred``: ``(N, C, H, W)``; ``reduction='none'`` gives ``(N,)``. torchmetrics'
    ``TotalVariation`` reports the anisotropic sum without the normalisation.
    """
    pred = check_tensor(pred, "pred", image=True)
    total = 0
    for first, end in _row_bands(pred):
        dy, dx = _band_gradients(pred, first, end)
        if isotropic:
            total = total + per_image_sum(safe_sqrt(dy[:, :, :, :-1] ** 2 + dx[:, :, : dy.shape[2], :] ** 2))
        else:
            total = total + per_image_sum(dy.abs()) + per_image_sum(dx.abs())
    return reduce(total / math.prod(pred.shape[1:]), reduction)


def edge_aware_weights(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights that relax TV across the target's edges: ``w_d = exp(-mean_C |grad_d target|)``.

    Returns the vertical and horizontal weights, shaped ``(N, 1, H-1, W)`` and ``(N, 1, H, W-1)``.
    """
    dy, dx = image_gradients(check_tensor(target, "target", image=True))
    return _edge_weights(dy), _edge_weights(dx)


def _edge_weights(grad: torch.Tensor) -> torch.Tensor:
    return torch.exp(-grad.abs().mean(dim=1, keepdim=True))


def _weighted_sums(grad: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: ``sum(w |grad|)`` and ``sum(w)`` with ``w`` repeated over the gradient's channels."""
    weight = weight.expand_as(grad)
    return per_image_sum(weight * grad.abs()), per_image_sum(weight)


def _check_weights(pred: torch.Tensor, weight_y: torch.Tensor, weight_x: torch.Tensor) -> None:
    batch, channels, height, width = pred.shape
    for name, weight, grid in (
        ("vertical", weight_y, (height - 1, width)),
        ("horizontal", weight_x, (height, width - 1)),
    ):
        if (
            weight.shape[0] != batch
            or weight.shape[1] not in (1, channels)
            or tuple(weight.shape[2:]) != grid
        ):
            raise ValueError(
                f"weight does not fit pred: {name} weights {tuple(weight.shape)} for differences {(batch, channels, *grid)}"
            )


def _weighted_tv(pred: torch.Tensor, band_weights) -> torch.Tensor:
    """``sum_d sum(w_d |grad_d pred|) / sum(w_d)`` per image, the sums taken band by band;
    ``band_weights(first, end)`` gives the vertical and horizontal weights of rows ``[first, end)``
    (the vertical ones end at the last difference, row ``H - 2``)."""
    sums = [0, 0, 0, 0]  # weighted |dy|, dy weights, weighted |dx|, dx weights
    for first, end in _row_bands(pred):
        dy, dx = _band_gradients(pred, first, end)
        weight_y, weight_x = band_weights(first, end)
        for index, part in enumerate((*_weighted_sums(dy, weight_y), *_weighted_sums(dx, weight_x))):
            sums[index] = sums[index] + part
    return safe_divide(sums[0], sums[1], if_zero=0.0) + safe_divide(sums[2], sums[3], if_zero=0.0)


def weighted_tv_loss(
    pred: torch.Tensor,
    weight: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    reduction: str = "mean",
) -> torch.Tensor:
    """Weighted total variation, BasicSR ``WeightedTVLoss`` with ``reduction='mean'`` per image.

    For each direction ``d``: ``sum(w_d |grad_d pred|) / (C sum(w_d))``, summed over both directions.
    ``weight`` is either one map ``(N, 1 or C, H, W)``, cut to each difference grid as BasicSR does
    (``w[:, :, :-1, :]`` vertically, ``w[:, :, :, :-1]`` horizontally), or a pair of per-direction
    weights such as :func:`edge_aware_weights` returns. A direction whose weights are all zero
    contributes 0. ``reduction='none'`` gives ``(N,)``.
    """
    pred = check_tensor(pred, "pred", image=True)
    if isinstance(weight, tuple):
        weight_y, weight_x = (check_tensor(w, "weight", image=True).to(pred.dtype) for w in weight)
    else:
        weight = check_tensor(weight, "weight", image=True).to(pred.dtype)
        weight_y, weight_x = weight[:, :, :-1, :], weight[:, :, :, :-1]
    _check_weights(pred, weight_y, weight_x)

    def band_weights(first: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return weight_y[:, :, first:end], weight_x[:, :, first:end]  # weight_y has H - 1 rows

    return reduce(_weighted_tv(pred, band_weights), reduction)


def edge_aware_tv_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """:func:`weighted_tv_loss` of ``pred`` with the :func:`edge_aware_weights` of ``target``,
    computed band by band so that a huge image never needs its full-size weights and gradients at once.
    ``pred``, ``target``: ``(N, C, H, W)``; ``reduction='none'`` gives ``(N,)``.
    """
    pred, target = check_pair(pred, target, image=True)

    def band_weights(first: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        target_dy, target_dx = _band_gradients(target, first, end)
        return _edge_weights(target_dy), _edge_weights(target_dx)

    return reduce(_weighted_tv(pred, band_weights), reduction)
