"""Input checks and reductions shared by every loss.

All losses promote half-precision inputs (float16, bfloat16) to float32 before computing: their
sums over an image overflow or lose most of their digits in 16-bit floats. The result is float32.
"""

from __future__ import annotations

import math
import numbers

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")


def check_positive(value: float, name: str) -> None:
    """Raise unless ``value`` is a finite number > 0; NaN fails too (every comparison with NaN is
    false), and so does inf (an inf eps or data range gave inf or NaN losses)."""
    _check_number(value, name)
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")


def check_non_negative(value: float, name: str) -> None:
    """Raise unless ``value`` is a finite number >= 0; NaN and inf fail too."""
    _check_number(value, name)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0; got {value}")


def _check_number(value: object, name: str) -> None:
    # numbers.Real takes NumPy's scalars too (a data range from an array's max is one).
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number; got {type(value).__name__}")
    if math.isinf(value):
        raise ValueError(f"{name} must be finite; got {value}")


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` ('none' | 'mean' | 'sum') to ``values``."""
    check_reduction(reduction)
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def per_image_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: ``(N, ...) -> (N,)``."""
    return values.flatten(1).mean(dim=1)


def per_image_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(N, ...) -> (N,)``."""
    return values.flatten(1).sum(dim=1)


def compute_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in a dtype fit for computing: half precision is promoted to float32."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def check_tensor(tensor: object, name: str, *, image: bool = False) -> torch.Tensor:
    """Check that ``tensor`` is a floating-point tensor (of shape (N, C, H, W) when ``image``)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {tensor.dtype}")
    if image and tensor.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W); got shape {tuple(tensor.shape)}")
    if image and 0 in tensor.shape[2:]:  # no images or no channels: empty, as torch.nn's losses
        raise ValueError(f"{name}'s images have no pixels: shape {tuple(tensor.shape)}")
    return compute_dtype(tensor)


def check_pair(pred: object, target: object, *, image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``pred`` and ``target`` as for :func:`check_tensor` and that their shapes are equal.

    Shapes must match exactly: broadcasting a target against a prediction is almost always a bug.
    """
    pred = check_tensor(pred, "pred", image=image)
    target = check_tensor(target, "target", image=image)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape; got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dtype != target.dtype:
        common = torch.promote_types(pred.dtype, target.dtype)
        pred, target = pred.to(common), target.to(common)
    return pred, target


def safe_sqrt(values: torch.Tensor) -> torch.Tensor:
    """``sqrt`` whose gradient at 0 is 0 rather than NaN; NaN stays NaN."""
    zero = values == 0
    return torch.where(zero, 0.0, torch.where(zero, 1.0, values).sqrt())


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor, *, if_zero: float) -> torch.Tensor:
    """``numerator / denominator`` with ``if_zero`` where the denominator is 0, with finite gradients."""
    nonzero = denominator != 0
    ratio = numerator / torch.where(nonzero, denominator, 1.0)
    return torch.where(nonzero, ratio, if_zero)
