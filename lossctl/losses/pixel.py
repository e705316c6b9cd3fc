"""Pixel-wise regression losses and the PSNR / RMSE image metrics.

Each loss has an error kernel that maps the difference ``diff = pred - target`` to a per-element
error (the evaluator computes ``diff`` once per batch and passes it to every kernel), and a loss
function ``*_loss(pred, target, ..., reduction='mean')`` built on that same kernel.

For the element-wise losses ``reduction='none'`` returns the per-element errors, shaped like the
input; ``'mean'`` and ``'sum'`` reduce over every element, as torch.nn does. RMSE and PSNR are
image-level: they need ``(N, C, H, W)`` input and ``'none'`` returns one value per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import check_non_negative, check_pair, check_positive, per_image_mean, reduce, safe_sqrt
from .color import rgb_to_y


def absolute_error(diff: torch.Tensor) -> torch.Tensor:
    """``|d|``, the L1 / MAE error."""
    return diff.abs()


def squared_error(diff: torch.Tensor) -> torch.Tensor:
    """``d^2``, the L2 / MSE error."""
    return diff * diff


def charbonnier_error(diff: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """``sqrt(d^2 + eps^2)``: a differentiable L1 (Charbonnier penalty)."""
    # An eps that rounds to 0 in diff's dtype (1e-46 in float32) is 0: hypot's gradient at d = 0 is NaN.
    if eps == 0 or float(torch.tensor(eps, dtype=diff.dtype)) == 0:
        return safe_sqrt(diff * diff)  # |d|, with gradient 0 rather than NaN at d = 0
    # new_full: filled on the device; new_tensor copies from the host and makes it wait for the GPU
    return torch.hypot(diff, diff.new_full((), eps))  # one fused pass; never overflows d^2


def _zeros_like(diff: torch.Tensor) -> torch.Tensor:
    return diff.new_zeros(()).expand_as(diff)


def smooth_l1_error(diff: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta`` (``|d|`` when beta = 0).

    Computed by ``torch.nn.functional.smooth_l1_loss(d, 0)``, whose fused kernel is 10x faster on a
    CPU than the same formula in separate steps.
    """
    check_non_negative(beta, "beta")
    return F.smooth_l1_loss(diff, _zeros_like(diff), reduction="none", beta=beta)


def huber_error(diff: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """``0.5 d^2`` where ``|d| <= delta``, else ``delta (|d| - 0.5 delta)``, by
    ``torch.nn.functional.huber_loss(d, 0)`` (one fused kernel)."""
    check_positive(delta, "delta")
    return F.huber_loss(diff, _zeros_like(diff), reduction="none", delta=delta)


LOG_COSH_SWITCH = 10.0


def log_cosh_error(diff: torch.Tensor) -> torch.Tensor:
    """``log(cosh(d))``, accurate for small and large ``d`` alike.

    Small ``|d|``: ``log1p(2 sinh(d/2)^2)`` (exact identity; no cancellation, so float32 keeps its
    relative precision for errors of one 16-bit level). Large ``|d|``: ``|d| + softplus(-2|d|) - log 2``,
    which never overflows.
    """
    # On a CPU, one min/max pass shows whether the far branch is needed at all (never, for images in
    # [0, 1]); a GPU would have to synchronise to check, so it computes both.
    if diff.device.type == "cpu" and diff.numel() and max(-diff.min(), diff.max()) < LOG_COSH_SWITCH:
        return torch.log1p(2 * torch.sinh(diff / 2) ** 2)
    magnitude = diff.abs()
    small = magnitude < LOG_COSH_SWITCH
    half = torch.where(small, diff, 0.0) / 2  # keeps sinh finite (and its gradient) in the unused branch
    near = torch.log1p(2 * torch.sinh(half) ** 2)
    far = magnitude + F.softplus(-2.0 * magnitude) - math.log(2.0)
    return torch.where(small, near, far)


def check_quantile(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1]; got {q}")


def quantile_error(diff: torch.Tensor, q: float = 0.5) -> torch.Tensor:
    """Pinball error ``max(q e, (q - 1) e)`` with ``e = target - pred = -diff``."""
    check_quantile(q)
    return torch.maximum(diff * -q, diff * (1.0 - q))  # e = -diff, written without negating diff


def l1_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L1 / mean absolute error: ``mean |pred - target|``. Matches ``torch.nn.L1Loss``."""
    pred, target = check_pair(pred, target)
    return reduce(absolute_error(pred - target), reduction)


def mse_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L2 / mean squared error: ``mean (pred - target)^2``. Matches ``torch.nn.MSELoss``."""
    pred, target = check_pair(pred, target)
    return reduce(squared_error(pred - target), reduction)


def charbonnier_loss(
    pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3, reduction: str = "mean"
) -> torch.Tensor:
    """Charbonnier loss ``mean sqrt((pred - target)^2 + eps^2)``, eps = 1e-3 as in MPRNet.

    BasicSR's ``CharbonnierLoss`` adds 1e-12 under the root, which is ``eps=1e-6`` here.
    """
    check_non_negative(eps, "eps")
    pred, target = check_pair(pred, target)
    return reduce(charbonnier_error(pred - target, eps), reduction)


def smooth_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Smooth L1 loss; matches ``torch.nn.functional.smooth_l1_loss(pred, target, beta=beta)``."""
    pred, target = check_pair(pred, target)
    return reduce(smooth_l1_error(pred - target, beta), reduction)


def huber_loss(
    pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Huber loss; matches ``torch.nn.functional.huber_loss(pred, target, delta=delta)``."""
    pred, target = check_pair(pred, target)
    return reduce(huber_error(pred - target, delta), reduction)


def log_cosh_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Log-cosh loss ``mean log(cosh(pred - target))``, numerically stable for large errors."""
    pred, target = check_pair(pred, target)
    return reduce(log_cosh_error(pred - target), reduction)


def quantile_loss(
    pred: torch.Tensor, target: torch.Tensor, q: float = 0.5, reduction: str = "mean"
) -> torch.Tensor:
    """Quantile (pinball) loss ``mean max(q (target - pred), (q - 1)(target - pred))``.

    ``q = 0.5`` gives half the L1 loss; ``q > 0.5`` penalises under-prediction more.
    """
    pred, target = check_pair(pred, target)
    return reduce(quantile_error(pred - target, q), reduction)


def rmse_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """``sqrt(mse)``, with a zero (not NaN) gradient where ``mse == 0``."""
    return safe_sqrt(mse)


def psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``10 log10(data_range^2 / mse)`` in dB; ``+inf`` where ``mse == 0``, with a gradient of 0
    there (identical images: no change improves them) where ``log10`` gave ``0 * inf = NaN``."""
    identical = mse == 0
    finite = torch.where(identical, torch.ones_like(mse), mse)
    return torch.where(identical, math.inf, 10.0 * torch.log10(data_range * data_range / finite))


def rmse(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Root mean squared error per image, ``sqrt(mean_{C,H,W} (pred - target)^2)``.

    ``pred``, ``target``: ``(N, C, H, W)``. ``reduction='none'`` gives the ``(N,)`` per-image RMSE;
    ``'mean'`` averages it over images (not the square root of the batch MSE).
    """
    pred, target = check_pair(pred, target, image=True)
    return reduce(rmse_from_mse(per_image_mean(squared_error(pred - target))), reduction)


def psnr(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range^2 / mse)`` dB.

    ``pred``, ``target``: ``(N, C, H, W)`` in ``[0, data_range]``; the MSE is taken over each
    image's ``C*H*W`` values. Identical images give ``+inf``. ``reduction='none'`` gives ``(N,)``.
    Equals ``skimage.metrics.peak_signal_noise_ratio`` per image.
    """
    check_positive(data_range, "data_range")
    pred, target = check_pair(pred, target, image=True)
    return reduce(psnr_from_mse(per_image_mean(squared_error(pred - target)), data_range), reduction)


def psnr_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    eps: float = 1e-8,
    y_channel: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative PSNR as a loss: ``-10 log10(data_range^2 / (mse + eps))`` per image.

    Minimising it maximises PSNR (the popular write-up's version returns +PSNR, which a minimiser
    would drive down). ``eps`` (1e-8, as BasicSR's ``PSNRLoss``) keeps the loss and its gradient
    finite for identical images, capping PSNR at 80 dB for ``data_range=1``. ``y_channel=True``
    compares the BT.601 luma of RGB inputs in [0, 1] (:func:`rgb_to_y`), as super-resolution papers do.
    ``reduction='none'`` gives ``(N,)``.
    """
    check_positive(data_range, "data_range")
    check_non_negative(eps, "eps")
    pred, target = check_pair(pred, target, image=True)
    if y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    mse = per_image_mean(squared_error(pred - target))
    return reduce(-psnr_from_mse(mse + eps, data_range), reduction)
