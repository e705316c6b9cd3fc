"""Colour conversions used by the losses."""

from __future__ import annotations

import torch

from ._common import check_tensor

# BT.601 luma as MATLAB's rgb2ycbcr and BasicSR compute it, for [0, 1] inputs.
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0


def rgb_to_y(images: torch.Tensor, offset: bool = True) -> torch.Tensor:
    """``Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255`` of ``(N, 3, H, W)`` RGB in [0, 1].

    Returns ``(N, 1, H, W)`` in [16/255, 235/255], as BasicSR's ``rgb2ycbcr(..., y_only=True)``.
    ``offset=False`` leaves out the ``+ 16``: the luma of a difference of two images.
    """
    images = check_tensor(images, "images", image=True)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 (RGB) channels for the Y channel; got {images.shape[1]}")
    red, green, blue = images.unbind(dim=1)
    luma = Y_WEIGHTS[0] * red + Y_WEIGHTS[1] * green + Y_WEIGHTS[2] * blue
    return ((luma + Y_OFFSET if offset else luma) / 255.0).unsqueeze(1)
