"""``torch.nn.Module`` wrappers: each stores its parameters and calls its functional loss."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_non_negative, check_positive, check_reduction
from .classification import bce_loss, bce_with_logits_loss, cross_entropy_loss, dice_loss
from .pixel import (
    charbonnier_loss,
    check_quantile,
    huber_loss,
    l1_loss,
    log_cosh_loss,
    mse_loss,
    psnr_loss,
    quantile_loss,
    rmse,
    smooth_l1_loss,
)
from .ssim import MS_SSIM_WEIGHTS, check_ms_ssim_weights, check_ssim_settings, ms_ssim_loss, ssim_loss
from .tv import tv_loss, weighted_tv_loss


class _Loss(nn.Module):
    """A loss module: its settings are checked when it is made (not at its first forward, as a bad
    one used to be), and shown by ``repr``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self._shown: tuple[str, ...] = ()

    def _settings_shown(self, **settings: object) -> None:
        """Keep ``settings`` as attributes, listed by :meth:`extra_repr` after those kept before."""
        for name, value in settings.items():
            setattr(self, name, value)
        self._shown = (*self._shown, *settings)

    def extra_repr(self) -> str:
        shown = [f"{name}={getattr(self, name)!r}" for name in self._shown]
        return ", ".join([*shown, f"reduction={self.reduction!r}"])


class L1Loss(_Loss):
    """Mean absolute error; see :func:`lossctl.losses.l1_loss`."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return l1_loss(pred, target, self.reduction)


class MSELoss(_Loss):
    """Mean squared error (the "L2 loss"); see :func:`lossctl.losses.mse_loss`."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse_loss(pred, target, self.reduction)


class RMSELoss(_Loss):
    """Per-image root mean squared error; see :func:`lossctl.losses.rmse`."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return rmse(pred, target, self.reduction)


class CharbonnierLoss(_Loss):
    """``mean sqrt((pred - target)^2 + eps^2)``; see :func:`lossctl.losses.charbonnier_loss`."""

    def __init__(self, eps: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_non_negative(eps, "eps")
        self._settings_shown(eps=eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return charbonnier_loss(pred, target, self.eps, self.reduction)


class SmoothL1Loss(_Loss):
    """Smooth L1 loss, as ``torch.nn.SmoothL1Loss``; see :func:`lossctl.losses.smooth_l1_loss`."""

    def __init__(self, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_non_negative(beta, "beta")
        self._settings_shown(beta=beta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return smooth_l1_loss(pred, target, self.beta, self.reduction)


class HuberLoss(_Loss):
    """Huber loss, as ``torch.nn.HuberLoss``; see :func:`lossctl.losses.huber_loss`."""

    def __init__(self, delta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(delta, "delta")
        self._settings_shown(delta=delta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return huber_loss(pred, target, self.delta, self.reduction)


class LogCoshLoss(_Loss):
    """``mean log(cosh(pred - target))``; see :func:`lossctl.losses.log_cosh_loss`."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return log_cosh_loss(pred, target, self.reduction)


class QuantileLoss(_Loss):
    """Pinball loss at quantile ``q``; see :func:`lossctl.losses.quantile_loss`."""

    def __init__(self, q: float = 0.5, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_quantile(q)
        self._settings_shown(q=q)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return quantile_loss(pred, target, self.q, self.reduction)


class BCELoss(_Loss):
    """Binary cross-entropy of probabilities, as ``torch.nn.BCELoss``; see :func:`lossctl.losses.bce_loss`."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce_loss(pred, target, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy of logits, as ``torch.nn.BCEWithLogitsLoss``; see :func:`lossctl.losses.bce_with_logits_loss`."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce_with_logits_loss(logits, target, self.reduction)


class CrossEntropyLoss(_Loss):
    """Categorical cross-entropy of logits, as ``torch.nn.CrossEntropyLoss``; see :func:`lossctl.losses.cross_entropy_loss`."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self._settings_shown(ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(logits, target, self.ignore_index, self.reduction)


class DiceLoss(_Loss):
    """``1 - dice`` per image, binary or multi-class; see :func:`lossctl.losses.dice_loss`."""

    def __init__(self, smooth: float = 0.0, reduction: str = "mean", ignore_index: int | None = None) -> None:
        super().__init__(reduction)
        check_non_negative(smooth, "smooth")
        self._settings_shown(smooth=smooth, ignore_index=ignore_index)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(pred, target, self.smooth, self.reduction, self.ignore_index)


class TVLoss(_Loss):
    """Total variation of the prediction; see :func:`lossctl.losses.tv_loss`."""

    def __init__(self, isotropic: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self._settings_shown(isotropic=isotropic)

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        return tv_loss(pred, self.isotropic, self.reduction)


class WeightedTVLoss(_Loss):
    """BasicSR's weighted total variation; see :func:`lossctl.losses.weighted_tv_loss`."""

    def forward(
        self, pred: torch.Tensor, weight: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return weighted_tv_loss(pred, weight, self.reduction)


class PSNRLoss(_Loss):
    """Negative PSNR, so that minimising it maximises PSNR; see :func:`lossctl.losses.psnr_loss`."""

    def __init__(
        self, data_range: float = 1.0, eps: float = 1e-8, y_channel: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        check_positive(data_range, "data_range")
        check_non_negative(eps, "eps")
        self._settings_shown(data_range=data_range, eps=eps, y_channel=y_channel)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return psnr_loss(pred, target, self.data_range, self.eps, self.y_channel, self.reduction)


class _SSIMSettings(_Loss):
    """The settings SSIM and MS-SSIM share, checked when the module is made."""

    def __init__(
        self,
        data_range: float = 1.0,
        window_size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        check_ssim_settings(window_size, sigma, data_range, k1, k2)
        self._settings_shown(data_range=data_range, window_size=window_size, sigma=sigma, k1=k1, k2=k2)

    def _settings(self) -> dict[str, float | int | str]:
        """The keyword arguments :func:`ssim_loss` and :func:`ms_ssim_loss` share."""
        return {
            "data_range": self.data_range,
            "window_size": self.window_size,
            "sigma": self.sigma,
            "k1": self.k1,
            "k2": self.k2,
            "reduction": self.reduction,
        }


class SSIMLoss(_SSIMSettings):
    """``1 - ssim`` per image; see :func:`lossctl.losses.ssim` (``downsample``: MATLAB's ``ssim.m``)."""

    def __init__(
        self,
        data_range: float = 1.0,
        window_size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: str = "mean",
        downsample: bool = False,
    ) -> None:
        super().__init__(data_range, window_size, sigma, k1, k2, reduction)
        self._settings_shown(downsample=downsample)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssim_loss(pred, target, downsample=self.downsample, **self._settings())


class MSSSIMLoss(_SSIMSettings):
    """``1 - ms_ssim`` per image; see :func:`lossctl.losses.ms_ssim` (``weights``: one per scale)."""

    def __init__(
        self,
        data_range: float = 1.0,
        window_size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: str = "mean",
        weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
    ) -> None:
        super().__init__(data_range, window_size, sigma, k1, k2, reduction)
        check_ms_ssim_weights(weights)
        self._settings_shown(weights=tuple(weights))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ms_ssim_loss(pred, target, weights=self.weights, **self._settings())
