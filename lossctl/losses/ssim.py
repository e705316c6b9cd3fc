"""Structural similarity (SSIM), Wang et al. 2004, as scikit-image computes it.

Gaussian window (11 taps, sigma 1.5), K1 = 0.01, K2 = 0.03, population (not sample) covariances,
and the mean of the SSIM map over the valid region only (the 5 pixels on each side where the window
would leave the image are not averaged) and over channels. This equals
``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=0)`` per image. torchmetrics (1.4.2 and
later) also averages the reflect-padded border and is not the same metric.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from ._common import check_non_negative, check_pair, check_positive, check_tensor, reduce


def gaussian_window(size: int, sigma: float) -> tuple[float, ...]:
    """Normalised 1-D Gaussian of ``size`` taps (odd) and standard deviation ``sigma``."""
    weights = [math.exp(-((k - (size - 1) / 2) ** 2) / (2 * sigma * sigma)) for k in range(size)]
    total = math.fsum(weights)
    return tuple(w / total for w in weights)


def _filter_valid_along(maps: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """Correlate ``maps`` with ``taps`` along ``dim``, keeping only the 'valid' positions.

    A weighted sum of shifted slices: on CPU this is about 8x faster than ``conv2d`` with a
    one-channel kernel (which falls off oneDNN's fast paths), and it is exact in any dtype.
    """
    length = maps.shape[dim] - len(taps) + 1
    out = maps.narrow(dim, 0, length) * taps[0]
    for offset, weight in enumerate(taps[1:], start=1):
        out.add_(maps.narrow(dim, offset, length), alpha=weight)
    return out


def _gaussian_filter_valid(maps: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of the last two dimensions of ``(planes, H, W)`` ``maps``."""
    if maps.device.type == "cpu" and maps.dtype in _OPENCV_TYPES and not maps.requires_grad:
        return _opencv_filter_valid(maps, taps)
    return _filter_valid_along(_filter_valid_along(maps, taps, -2), taps, -1)


_OPENCV_TYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _opencv_filter_valid(maps: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """:func:`_gaussian_filter_valid` by OpenCV, plane by plane: a pass of ``taps`` along the rows,
    then one along the columns.

    On a CPU it is about 2.4x faster than the shifted-slice sums (one vectorised pass per direction
    instead of one pass per tap) and gives the same values to float rounding (OpenCV accumulates in
    the input's precision). It has no gradient, so it is used only where none is needed.

    Two one-dimensional ``filter2D`` passes take 8% less time than one ``sepFilter2D`` on a 512x512
    plane (0.19 against 0.21 ms; SSIM of a 512x512 RGB pair 4.8 -> 4.6 ms). ``filter2D`` switches
    to a DFT once a kernel has 50 taps or more (130 in float32), so long windows keep
    ``sepFilter2D``.
    """
    import cv2

    kernel = np.asarray(taps, dtype=_OPENCV_TYPES[maps.dtype])
    planes = maps.detach().contiguous().numpy()
    filtered = np.empty_like(planes)
    if len(taps) < OPENCV_DFT_TAPS:
        along_rows = np.empty(planes.shape[1:], dtype=planes.dtype)
        for plane, out in zip(planes, filtered, strict=True):
            cv2.filter2D(plane, -1, kernel[np.newaxis, :], dst=along_rows, borderType=cv2.BORDER_CONSTANT)
            cv2.filter2D(along_rows, -1, kernel[:, np.newaxis], dst=out, borderType=cv2.BORDER_CONSTANT)
    else:
        for plane, out in zip(planes, filtered, strict=True):
            cv2.sepFilter2D(plane, -1, kernel, kernel, dst=out, borderType=cv2.BORDER_CONSTANT)
    half = len(taps) // 2
    return torch.from_numpy(filtered)[:, half : filtered.shape[1] - half, half : filtered.shape[2] - half]


OPENCV_DFT_TAPS = 50  # the fewest kernel values for which OpenCV's filter2D may filter by DFT


def check_ssim_settings(
    window_size: int, sigma: float, data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03
) -> None:
    """Raise a ValueError for settings SSIM is not defined with (NaN among them): ``C1`` and ``C2``
    square ``k data_range``, so a negative range or constant would silently act as a positive one."""
    integer = isinstance(window_size, numbers.Integral) and not isinstance(window_size, bool)
    if not integer or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer; got {window_size!r}")
    check_positive(sigma, "sigma")
    if sigma * sigma == 0:
        raise ValueError(f"sigma is too small: its square underflows to 0; got {sigma}")
    check_positive(data_range, "data_range")
    for name, k in (("k1", k1), ("k2", k2)):
        check_non_negative(k, name)
        if not math.isfinite(k * data_range * k * data_range):
            raise ValueError(f"{name} * data_range is too large: C = ({name} * data_range)^2 overflows")


# SSIM's maps are made one block of image planes (or of rows of one plane) at a time. On a CPU a
# block of a 512x512 plane (a megabyte per map) keeps SSIM's temporaries in a core's cache: 3-4x
# faster than filtering whole batches, and 20% faster than blocks of two planes. On a GPU large
# blocks keep it busy; the limit only bounds the memory of huge images.
CPU_BLOCK_VALUES = 1 << 18
GPU_BLOCK_VALUES = 1 << 26


def _blocks(planes: int, height: int, width: int, window: int, block_values: int):
    """``(plane slice, first output row, end output row)`` blocks covering every valid output row of
    every plane, each needing about ``block_values`` input values or fewer (at least one row)."""
    valid_rows = height - window + 1
    if planes * height * width <= block_values:
        yield slice(0, planes), 0, valid_rows
    elif height * width <= block_values:
        step = block_values // (height * width)
        for first in range(0, planes, step):
            yield slice(first, min(first + step, planes)), 0, valid_rows
    else:  # one plane in bands of rows; each band reads window - 1 rows beyond its own
        rows = max(block_values // width - window + 1, 4 * (window - 1), 1)
        for plane in range(planes):
            for first in range(0, valid_rows, rows):
                yield slice(plane, plane + 1), first, min(first + rows, valid_rows)


def _ssim_maps(
    x: torch.Tensor,
    y: torch.Tensor,
    centres: tuple[torch.Tensor, torch.Tensor],
    data_range: float,
    taps: tuple[float, ...],
    k1: float,
    k2: float,
    with_luminance: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The valid-region luminance and contrast-structure maps of the ``(planes, H, W)`` ``x`` and
    ``y``, whose product is the SSIM map (the luminance is None unless ``with_luminance``).
    ``centres``: about each plane's mean of ``x + y`` and of ``x - y`` (:func:`_plane_centres`).

    In float32 the local variance of ``s = x + y`` (see :func:`_ssim_maps_of`) is the difference of
    two filtered maps of order ``s^2``, and where ``s`` keeps far from its plane mean while varying
    little locally (a mask: two flat levels with some noise) their rounding, the same for every
    pixel of a flat stretch, moved SSIM by up to 1.2e-5 relative, over METRICS.md's 1e-5. Those
    two maps are then filtered in float64: on a GPU always (the check below would make the host
    wait for it; the GPU is not what limits lossctl's speed), on a CPU for the planes whose rounding
    a first-order estimate (:func:`_float32_rounding`) puts above ``FLOAT32_ROUNDING_BUDGET``
    (about 3x the time for those planes; photographs stay under it, and the estimate costs 5%).

    The luminance ``1 - 2 mu_d^2 / D`` is off by about float32's rounding, absolute, wherever it is
    near 0 (means far apart: a black prediction of a bright image), so a small SSIM lost its
    relative precision (all-white against all-black, 1e-4: 2.7e-4 relative). The float64 maps made
    for the variances make it from float64 means too: on a GPU always, on a CPU for the planes whose
    rounding the estimate, luminance included, puts over the budget.
    """
    maps_of = functools.partial(
        _ssim_maps_of, data_range=data_range, taps=taps, k1=k1, k2=k2, with_luminance=with_luminance
    )
    if x.dtype != torch.float32 or x.device.type not in ("cpu", "cuda"):  # MPS has no float64
        return maps_of(x, y, centres)
    if x.device.type == "cuda":
        return maps_of(x, y, centres, wide_totals=True)
    luminance, contrast_structure, (variance_rounding, luminance_rounding) = maps_of(
        x, y, centres, with_rounding=True
    )
    rounding = variance_rounding if luminance_rounding is None else variance_rounding + luminance_rounding
    if (risky := (rounding > FLOAT32_ROUNDING_BUDGET).nonzero().flatten()).numel():
        redone = maps_of(x[risky], y[risky], tuple(centre[risky] for centre in centres), wide_totals=True)
        contrast_structure = contrast_structure.index_put((risky,), redone[1])
        if luminance is not None:
            luminance = luminance.index_put((risky,), redone[0])
    return luminance, contrast_structure


# SSIM's float32 rounding error, relative, above which a plane's variances of x + y are filtered
# in float64: a fifth of METRICS.md's 1e-5. The estimate was 2-10x above the error measured on the
# samples (a 256x256 mask: estimate 1.8e-5, error 8.5e-6; a photograph: 1.9e-6 and 4.9e-7).
FLOAT32_ROUNDING_BUDGET = 2e-6
ROUNDING_SAMPLE_STEP = 16  # the estimate reads every 16th row and column of the maps


def _float32_rounding(
    mean_total: torch.Tensor,
    var_total: torch.Tensor,
    mean_difference: torch.Tensor,
    var_difference: torch.Tensor,
) -> torch.Tensor:
    """Per plane, about the float32 rounding error of the mean of SSIM's contrast-structure term
    (and so of SSIM, within the luminance's factor of at most 1), absolute: each filtered square
    ``F(t^2) = var + mu^2`` is off by up to ``u F(t^2)`` (``u`` float32's unit roundoff), and
    ``1 - 2 var_d / D`` (``D = var_s + 2 C2 + var_d``) moves by
    ``2 (var_d d(var_s) + (var_s + 2 C2) d(var_d)) / D^2``; read on a sample of the pixels."""
    step = ROUNDING_SAMPLE_STEP
    mt, vt, md, vd = (m[:, ::step, ::step] for m in (mean_total, var_total, mean_difference, var_difference))
    square_total, square_difference = vt.addcmul(mt, mt), vd.addcmul(md, md)
    # Out of place on the samples: a sample of one value is a view of the map, not a copy.
    bound = square_total.mul_(vd).addcmul_(vt, square_difference).div_((vt + vd).square_())
    return bound.flatten(1).mean(dim=1).mul_(torch.finfo(torch.float32).eps)  # 2 u = eps


def _ssim_maps_of(
    x: torch.Tensor,
    y: torch.Tensor,
    centres: tuple[torch.Tensor, torch.Tensor],
    data_range: float,
    taps: tuple[float, ...],
    k1: float,
    k2: float,
    with_luminance: bool = True,
    wide_totals: bool = False,
    with_rounding: bool = False,
):
    """:func:`_ssim_maps` in ``x``'s precision; if ``wide_totals``, the maps of ``s`` and the mean of
    ``d`` filtered in float64 and the luminance made in float64; with the rounding estimates (of the
    variances, :func:`_float32_rounding`, and of the luminance) as a third result if ``with_rounding``.

    SSIM needs only ``mu_x mu_y``, ``mu_x^2 + mu_y^2``, ``sigma_xy`` and ``sigma_x^2 + sigma_y^2``,
    and each is a sum or difference of the local means and variances of ``s = x + y`` and
    ``d = x - y``: ``4 mu_x mu_y = mu_s^2 - mu_d^2``, ``2 (mu_x^2 + mu_y^2) = mu_s^2 + mu_d^2``,
    ``4 sigma_xy = var_s - var_d`` and ``2 (sigma_x^2 + sigma_y^2) = var_s + var_d``. So four maps
    are filtered instead of five. Each variance is a difference of two terms, large where the mean
    is large against the spread (a bright image against a dark one makes ``d`` large everywhere),
    so ``s`` and ``d`` are centred on their plane means first: variances do not depend on the
    centre, and float32 then stays within 1e-7 of float64 where uncentred ``d`` lost 1e-4 against
    ``C2``. The two terms are then::

        contrast_structure = 1 - 2 var_d / (var_s + var_d + 2 C2)
        luminance = 1 - 2 mu_d^2 / (mu_s^2 + mu_d^2 + 2 C1)

    with ``2 C2`` added to ``s^2`` before filtering (the taps sum to 1), each step one fused pass.
    """
    total_centre, difference_centre = centres
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    one = torch.ones((), dtype=x.dtype, device=x.device)
    total = torch.add(x, y).sub_(total_centre)
    if wide_totals:
        total = total.double()
    difference = torch.sub(x, y).sub_(difference_centre)
    mean_total = _gaussian_filter_valid(total, taps)
    # wide_totals makes the luminance in float64 too (from float64 means): 1 - 2 mu_d^2 / D is off
    # by float32's rounding absolutely, which a small SSIM (means far apart) cannot afford.
    wide_mean_difference = _gaussian_filter_valid(
        difference.double() if wide_totals and with_luminance else difference, taps
    )
    mean_difference = wide_mean_difference.to(x.dtype)
    # var_s + 2 C2 and var_d
    var_total = _gaussian_filter_valid(torch.addcmul(one.to(total.dtype) * (2 * c2), total, total), taps)
    var_total = var_total.addcmul_(mean_total, mean_total, value=-1).to(x.dtype)
    wide_mean_total, mean_total = mean_total, mean_total.to(x.dtype)
    var_difference = _gaussian_filter_valid(difference * difference, taps)
    var_difference.addcmul_(mean_difference, mean_difference, value=-1)
    del total, difference
    rounding = None
    if with_rounding:
        rounding = _float32_rounding(mean_total, var_total, mean_difference, var_difference)
    contrast_structure = torch.addcdiv(one, var_difference, var_total.add_(var_difference), value=-2)
    del var_total, var_difference
    luminance = None
    if with_luminance:
        mean_difference_squared = (wide_mean_difference + difference_centre).square()
        uncentred_total = wide_mean_total + total_centre
        denominator = torch.addcmul(mean_difference_squared, uncentred_total, uncentred_total).add_(2 * c1)
        luminance = torch.addcdiv(
            one.to(denominator.dtype), mean_difference_squared, denominator, value=-2
        ).to(x.dtype)
    if rounding is None:
        return luminance, contrast_structure
    # Relative to the mean of SSIM's map where it is made, else of its contrast-structure term.
    step = ROUNDING_SAMPLE_STEP
    value = contrast_structure[:, ::step, ::step]
    luminance_rounding = None
    if luminance is not None:
        product = value * luminance[:, ::step, ::step]
        # 1 - 2 mu_d^2 / D is off by about 2 eps (1 - l), absolute; times cs: |cs - cs l|.
        luminance_rounding = torch.sub(value, product).abs_().flatten(1).mean(dim=1)
        luminance_rounding.mul_(2 * torch.finfo(x.dtype).eps)
        value = product
    size = value.flatten(1).mean(dim=1).abs_().clamp_min_(1e-3)
    if luminance_rounding is not None:
        luminance_rounding.div_(size)
    return luminance, contrast_structure, (rounding.div_(size), luminance_rounding)


def _ssim_and_contrast_structure_maps(
    pred: torch.Tensor, target: torch.Tensor, data_range: float, taps: tuple[float, ...], k1: float, k2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSIM map and its contrast-structure term over the valid region, ``(N, C, H', W')`` each,
    with ``H' = H - len(taps) + 1`` and ``W' = W - len(taps) + 1``."""
    batch, channels, height, width = pred.shape
    x, y = pred.reshape(-1, height, width), target.reshape(-1, height, width)
    luminance, contrast_structure = _ssim_maps(x, y, _plane_centres(pred, target), data_range, taps, k1, k2)
    size = contrast_structure.shape[-2:]
    full = luminance * contrast_structure
    return full.reshape(batch, channels, *size), contrast_structure.reshape(batch, channels, *size)


def _plane_centres(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The means of ``pred + target`` and of ``pred - target`` per image plane, ``(N * C, 1, 1)``
    each, without gradient."""
    mean_pred, mean_target = (images.mean(dim=(2, 3)).detach().reshape(-1, 1, 1) for images in (pred, target))
    return mean_pred + mean_target, mean_pred - mean_target


def _ssim_and_contrast_structure(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float,
    taps: tuple[float, ...],
    k1: float,
    k2: float,
    with_ssim: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Means over the valid region of the SSIM map (None unless ``with_ssim``) and of its
    contrast-structure term, ``(N, C)`` each.

    Every map value depends only on a window of its plane, so the maps are made in blocks of planes
    or of rows (see :func:`_blocks`) and their sums added: the same numbers up to summation order,
    with memory bounded by the block instead of the image.
    """
    batch, channels, height, width = pred.shape
    window = len(taps)
    total_centre, difference_centre = _plane_centres(pred, target)
    x, y = pred.reshape(-1, height, width), target.reshape(-1, height, width)
    block_values = CPU_BLOCK_VALUES if pred.device.type == "cpu" else GPU_BLOCK_VALUES
    cs_sums = x.new_zeros(x.shape[0])
    full_sums = x.new_zeros(x.shape[0]) if with_ssim else None
    for planes, first, end in _blocks(x.shape[0], height, width, window, block_values):
        rows = slice(first, end + window - 1)
        centres = (total_centre[planes], difference_centre[planes])
        luminance, contrast_structure = _ssim_maps(
            x[planes, rows], y[planes, rows], centres, data_range, taps, k1, k2, with_ssim
        )
        # Not a BLAS dot product: its float32 sums drift by 1e-5 on a 256x256 plane; torch.sum's don't.
        cs_sums[planes] += contrast_structure.flatten(1).sum(dim=1)
        if full_sums is not None:
            full_sums[planes] += (luminance * contrast_structure).flatten(1).sum(dim=1)
    count = (height - window + 1) * (width - window + 1)
    full = None if full_sums is None else (full_sums / count).reshape(batch, channels)
    return full, (cs_sums / count).reshape(batch, channels)


def _check_size(pred: torch.Tensor, smallest: int, what: str) -> None:
    height, width = pred.shape[-2:]
    if height < smallest or width < smallest:
        raise ValueError(f"images of {height}x{width} are smaller than {what}")


def matlab_downsample_factor(height: int, width: int) -> int:
    """``max(1, round(min(H, W) / 256))`` with MATLAB's rounding (halves away from zero)."""
    return max(1, math.floor(min(height, width) / 256 + 0.5))


def _matlab_downsample_along(images: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    dim %= images.dim()
    size = images.shape[dim]
    before = (factor + 1) // 2 - 1  # MATLAB's kernel centre is floor((f + 1) / 2), 1-based
    kept = -(-size // factor)
    # The f rows averaged into each kept row, symmetric padding reflecting those beyond an edge.
    # Made on the device: a list copied there (torch.tensor) would wait for every queued kernel.
    rows = torch.arange(kept * factor, device=images.device) - before
    rows = torch.where(rows < 0, -rows - 1, torch.where(rows >= size, 2 * size - rows - 1, rows))
    picked = images.index_select(dim, rows)
    shape = list(images.shape)
    shape[dim : dim + 1] = [kept, factor]
    return picked.reshape(shape).mean(dim=dim + 1)


def matlab_downsample(images: torch.Tensor) -> torch.Tensor:
    """The downsampling of the original ``ssim.m``: a ``f x f`` mean filter with symmetric padding
    ('same'), then every ``f``-th pixel from the first, ``f = max(1, round(min(H, W) / 256))``.

    MATLAB's window starts ``floor((f + 1) / 2) - 1`` pixels before the kept one: for ``f = 2`` this
    is 2x2 block averaging (``avg_pool2d``, which piq does for every ``f``); for larger ``f`` the
    windows are shifted from the blocks (0.27 apart at ``f = 4`` on random pixels).
    """
    images = check_tensor(images, "images", image=True)
    factor = matlab_downsample_factor(*images.shape[-2:])
    if factor == 1:
        return images
    return _matlab_downsample_along(_matlab_downsample_along(images, factor, -2), factor, -1)


def _ssim_inputs(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int,
    sigma: float,
    data_range: float,
    k1: float,
    k2: float,
    downsample: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked SSIM inputs, downsampled as ``ssim.m`` when ``downsample``, at least a window large."""
    pred, target = check_pair(pred, target, image=True)
    check_ssim_settings(window_size, sigma, data_range, k1, k2)
    if downsample:
        pred, target = matlab_downsample(pred), matlab_downsample(target)
    _check_size(pred, window_size, f"the {window_size}x{window_size} SSIM window")
    return pred, target


def ssim_components(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel, ``(N, C)`` each: the valid-region mean of the SSIM map (see
    :func:`ssim`) and of its contrast-structure term ``(2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)``.

    :func:`ssim` is the channel mean of the first; :func:`ms_ssim` uses both at its first scale, and
    accepts them through ``first_scale`` so that an evaluator computing both filters once.
    """
    pred, target = _ssim_inputs(pred, target, window_size, sigma, data_range, k1, k2, downsample=False)
    return _ssim_and_contrast_structure(pred, target, data_range, gaussian_window(window_size, sigma), k1, k2)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
    downsample: bool = False,
) -> torch.Tensor:
    """Mean SSIM of each image pair over its valid region and channels.

    ``pred``, ``target``: ``(N, C, H, W)`` with ``H, W >= window_size``. With ``C1 = (k1 L)^2``,
    ``C2 = (k2 L)^2`` and Gaussian-weighted local means ``mu``, variances ``sigma^2`` and covariance
    ``sigma_xy``::

        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

    ``downsample=True`` first applies :func:`matlab_downsample`, as MATLAB's original ``ssim.m``.
    ``reduction='none'`` gives the ``(N,)`` per-image SSIM. Higher is better (1 for identical images).
    """
    pred, target = _ssim_inputs(pred, target, window_size, sigma, data_range, k1, k2, downsample)
    per_channel, _ = _ssim_and_contrast_structure(
        pred, target, data_range, gaussian_window(window_size, sigma), k1, k2
    )
    return reduce(per_channel.mean(dim=1), reduction)


def ssim_map(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    downsample: bool = False,
) -> torch.Tensor:
    """The per-pixel SSIM map that :func:`ssim` averages, ``(N, C, H', W')``.

    Only the valid region is returned (``H' = H - window_size + 1``, likewise ``W'``; after
    :func:`matlab_downsample` when ``downsample``), so that the mean of an image's map over its
    channels and pixels is exactly its ``ssim(..., reduction='none')``. Values lie in [-1, 1].
    """
    pred, target = _ssim_inputs(pred, target, window_size, sigma, data_range, k1, k2, downsample)
    taps = gaussian_window(window_size, sigma)
    return _ssim_and_contrast_structure_maps(pred, target, data_range, taps, k1, k2)[0]


def ssim_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
    downsample: bool = False,
) -> torch.Tensor:
    """``1 - ssim(pred, target)`` per image (see :func:`ssim`)."""
    score = ssim(
        pred, target, data_range, window_size, sigma, k1, k2, reduction="none", downsample=downsample
    )
    return reduce(1.0 - score, reduction)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def check_ms_ssim_weights(weights: tuple[float, ...]) -> None:
    """Raise unless there is a weight per scale, at least one (their values are pytorch-msssim's
    to choose: it checks none)."""
    if isinstance(weights, torch.Tensor) or not isinstance(weights, tuple | list):
        raise ValueError(f"weights must be a tuple of numbers, one per scale; got {type(weights).__name__}")
    if not weights:
        raise ValueError("weights must hold one weight per scale; got none")
    if not all(isinstance(weight, numbers.Real) and math.isfinite(weight) for weight in weights):
        raise ValueError(f"weights must be finite numbers; got {weights}")


def ms_ssim_min_size(window_size: int = 11, scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """The shortest side MS-SSIM accepts: ``(window_size - 1) * 2^(scales - 1) + 1`` (161 by default)."""
    return (window_size - 1) * 2 ** (scales - 1) + 1


def ms_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
    reduction: str = "mean",
    first_scale: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Multi-scale SSIM (Wang, Simoncelli and Bovik 2003) as pytorch-msssim computes it.

    At each of the ``len(weights)`` scales the valid-region SSIM terms are taken per channel; the
    contrast-structure term of every scale but the last, and the full SSIM of the last, are clipped
    at 0 (ReLU), raised to their weight and multiplied; scales are 2x2 average-pooled (zero padding
    of 1 on odd sides, counted in the mean). The result is averaged over channels.
    ``pred``, ``target``: ``(N, C, H, W)`` with ``min(H, W) >= 161`` for the defaults.
    Equals ``pytorch_msssim.ms_ssim(pred, target, data_range, size_average=False)``.
    ``reduction='none'`` gives ``(N,)``. ``first_scale``: :func:`ssim_components` of ``pred`` and
    ``target`` with the same settings, when already computed.
    """
    pred, target = check_pair(pred, target, image=True)
    check_ssim_settings(window_size, sigma, data_range, k1, k2)
    check_ms_ssim_weights(weights)
    smallest = ms_ssim_min_size(window_size, len(weights))
    _check_size(pred, smallest, f"the {smallest} px MS-SSIM needs for {len(weights)} scales")
    taps = gaussian_window(window_size, sigma)
    factors = []
    for scale in range(len(weights)):
        if scale == 0 and first_scale is not None:
            full, contrast_structure = first_scale
        else:
            # The last scale uses only its full SSIM, the others only their contrast-structure.
            full, contrast_structure = _ssim_and_contrast_structure(
                pred, target, data_range, taps, k1, k2, with_ssim=scale == len(weights) - 1
            )
        if scale < len(weights) - 1:
            factors.append(F.relu(contrast_structure))
            pred, target = _halve(pred), _halve(target)
    factors.append(F.relu(full))
    # Filled on the device, not copied there (torch.tensor): on a GPU a copy from the host waits
    # for every kernel already queued.
    exponents = [torch.full((), weight, dtype=pred.dtype, device=pred.device) for weight in weights]
    per_channel = torch.prod(torch.stack(factors) ** torch.stack(exponents).view(-1, 1, 1), dim=0)
    return reduce(per_channel.mean(dim=1), reduction)


def _halve(images: torch.Tensor) -> torch.Tensor:
    """MS-SSIM's 2x2 average pooling: ``F.avg_pool2d(images, 2, padding=[H % 2, W % 2])`` (zero
    padding counted in the mean), bit for bit, as a sum of four strided views: on a CPU
    ``avg_pool2d`` is 5x slower. An odd side's padding enters only the first window: the last one
    ends at the last pixel."""
    odd_rows, odd_columns = (side % 2 for side in images.shape[-2:])
    if odd_rows or odd_columns:
        images = F.pad(images, (odd_columns, 0, odd_rows, 0))
    top, bottom = images[..., 0::2, :], images[..., 1::2, :]
    return (top[..., 0::2] + top[..., 1::2] + bottom[..., 0::2] + bottom[..., 1::2]) * 0.25


def ms_ssim_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
) -> torch.Tensor:
    """``1 - ms_ssim(pred, target)`` per image (see :func:`ms_ssim`)."""
    score = ms_ssim(pred, target, data_range, window_size, sigma, k1, k2, weights, reduction="none")
    return reduce(1.0 - score, reduction)
