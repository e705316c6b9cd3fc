"""Total variation of a prediction, plain and weighted (BasicSR ``WeightedTVLoss``)."""

from __future__ import annotations

import torch

from ._common import check_tensor, per_image_sum, reduce, safe_divide, safe_sqrt


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences ``(x[:, :, i+1, j] - x[:, :, i, j], x[:, :, i, j+1] - x[:, :, i, j])``.

    Shapes ``(N, C, H-1, W)`` (vertical) and ``(N, C, H, W-1)`` (horizontal).
    """
    return images[:, :, 1:, :] - images[:, :, :-1, :], images[:, :, :, 1:] - images[:, :, :, :-1]


def tv_loss(pred: torch.Tensor, isotropic: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Total variation of each image, normalised by its ``C*H*W`` values.

    Anisotropic (default): ``(sum |dy| + sum |dx|) / (C H W)``. Isotropic:
    ``sum sqrt(dy^2 + dx^2) / (C H W)`` over the ``(H-1) x (W-1)`` grid where both differences exist.
    ``pred``: ``(N, C, H, W)``; ``reduction='none'`` gives ``(N,)``. torchmetrics'
    ``TotalVariation`` reports the anisotropic sum without the normalisation.
    """
    pred = check_tensor(pred, "pred", image=True)
    dy, dx = image_gradients(pred)
    if isotropic:
        total = per_image_sum(safe_sqrt(dy[:, :, :, :-1] ** 2 + dx[:, :, :-1, :] ** 2))
    else:
        total = per_image_sum(dy.abs()) + per_image_sum(dx.abs())
    return reduce(total / pred[0].numel(), reduction)


def edge_aware_weights(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights that relax TV across the target's edges: ``w_d = exp(-mean_C |grad_d target|)``.

    Returns the vertical and horizontal weights, shaped ``(N, 1, H-1, W)`` and ``(N, 1, H, W-1)``.
    """
    dy, dx = image_gradients(check_tensor(target, "target", image=True))
    return torch.exp(-dy.abs().mean(dim=1, keepdim=True)), torch.exp(-dx.abs().mean(dim=1, keepdim=True))


def _directional_weighted_tv(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.expand_as(grad)
    return safe_divide(per_image_sum(weight * grad.abs()), per_image_sum(weight), if_zero=0.0)


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
    dy, dx = image_gradients(pred)
    for name, grad, w in (("vertical", dy, weight_y), ("horizontal", dx, weight_x)):
        if (
            w.shape[0] != grad.shape[0]
            or w.shape[1] not in (1, grad.shape[1])
            or w.shape[2:] != grad.shape[2:]
        ):
            raise ValueError(
                f"weight does not fit pred: {name} weights {tuple(w.shape)} for differences {tuple(grad.shape)}"
            )
    return reduce(_directional_weighted_tv(dy, weight_y) + _directional_weighted_tv(dx, weight_x), reduction)
