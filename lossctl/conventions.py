"""The conventions under which published numbers are made, applied before every metric.

``skimage`` (the default) computes on the images as they are. ``basicsr`` computes on the BT.601
luma (Y) of RGB images with ``--scale`` pixels cropped from every side, as BasicSR's
``calculate_psnr`` / ``calculate_ssim(test_y_channel=True, crop_border=scale)`` and most
super-resolution papers. ``matlab`` downsamples before SSIM as the original ``ssim.m`` does (it sets
the ``ssim.downsample`` parameter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import LossctlError

if TYPE_CHECKING:
    import torch

PRESETS = ("skimage", "basicsr", "matlab")


@dataclass(frozen=True)
class Convention:
    preset: str = "skimage"
    y_channel: bool = False
    crop_border: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"preset {self.preset}"]
        if self.y_channel:
            parts.append("Y channel")
        if self.crop_border:
            parts.append(f"crop {self.crop_border}")
        return ", ".join(parts)

    @property
    def param_defaults(self) -> dict[str, dict[str, int]]:
        """Metric parameters the preset changes (``--param`` still overrides them)."""
        return {"ssim": {"downsample": 1}} if self.preset == "matlab" else {}

    def check_size(self, height: int, width: int) -> str | None:
        """Why an image of this size cannot be computed under the convention, or None."""
        if self.crop_border and min(height, width) <= 2 * self.crop_border:
            return f"image of {width}x{height} is too small for --crop-border {self.crop_border}"
        return None

    def apply(self, images: torch.Tensor, offset: bool = True) -> torch.Tensor:
        """Crop and convert ``(N, C, H, W)`` images; ``offset=False`` for differences of images."""
        from .losses.color import rgb_to_y

        border = self.crop_border
        if border:
            images = images[:, :, border:-border, border:-border]
        if self.y_channel and images.shape[1] == 3:
            images = rgb_to_y(images, offset=offset)
        return images


def resolve_convention(
    preset: str | None, scale: int | None, y_channel: bool | None, crop_border: int | None
) -> Convention:
    """The convention of ``--preset``, with ``--y-channel`` / ``--crop-border`` overriding it."""
    name = preset or "skimage"
    if name not in PRESETS:
        raise LossctlError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    if scale is not None and scale < 1:
        raise LossctlError(f"--scale must be at least 1; got {scale}")
    if crop_border is not None and crop_border < 0:
        raise LossctlError(f"--crop-border must be >= 0; got {crop_border}")
    if name == "basicsr":
        if scale is None and crop_border is None:
            raise LossctlError(
                "--preset basicsr crops the super-resolution scale: give --scale N (or --crop-border N)"
            )
        base = Convention("basicsr", y_channel=True, crop_border=scale or 0)
    elif scale is not None:
        raise LossctlError("--scale is used by --preset basicsr only; use --crop-border N to crop")
    elif name == "matlab":
        base = Convention("matlab")
    else:
        base = Convention()
    return Convention(
        base.preset,
        base.y_channel if y_channel is None else y_channel,
        base.crop_border if crop_border is None else crop_border,
    )
