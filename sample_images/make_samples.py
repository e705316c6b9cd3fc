"""Generate the sample prediction / ground-truth image pairs for lossctl.

Run from the repository root::

    python sample_images/make_samples.py

The script writes ``gt/`` (clean reference images) and ``pred/`` (simulated
restoration outputs with a typical error) next to itself. Pairs are matched
by relative path without extension, so ``pred/jpeg_artifacts.jpg`` pairs with
``gt/jpeg_artifacts.png``. All randomness uses fixed seeds, so the output is
reproducible.

scikit-image is needed only to regenerate these samples (it is a test-only
dependency of lossctl); the committed images are used as they are.

Source images (all bundled with ``skimage.data``), cropped to 256x256:

- ``astronaut``: Eileen Collins, NASA Great Images database; public domain.
- ``coffee``: Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0.
- ``chelsea``: Stefan van der Walt; CC0.
- ``rocket``: DSCOVR launch on Falcon 9, SpaceX; released into the public
  domain.
- ``camera``: Lav Varshney; CC0.
- ``coins``: Greek coins from Pompeii, Brooklyn Museum collection; no known
  copyright restrictions.
"""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data, filters

OUT_DIR = Path(__file__).parent
SIZE = 256


def crop(image: np.ndarray, top: int, left: int) -> np.ndarray:
    """Return the SIZE x SIZE window of ``image`` starting at (top, left)."""
    window = image[top : top + SIZE, left : left + SIZE]
    assert window.shape[:2] == (SIZE, SIZE), window.shape
    return np.ascontiguousarray(window)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image in [0, 1] to 8-bit."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def add_gaussian_noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Add Gaussian noise (sigma relative to the [0, 1] range) to an 8-bit image."""
    rng = np.random.default_rng(seed)
    return to_uint8(image / 255.0 + rng.normal(0.0, sigma, image.shape))


def save_png(image: np.ndarray, rel_path: str) -> None:
    """Save an 8-bit image as an optimized PNG under OUT_DIR."""
    path = OUT_DIR / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=True)


def save_png16_rgb(image: np.ndarray, rel_path: str) -> None:
    """Save a uint16 RGB image as a 16-bit PNG (via OpenCV) and verify it."""
    path = OUT_DIR / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = image[..., ::-1]
    cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, bgr), path


def make_jpeg_artifacts() -> None:
    """Astronaut face; pred is the same crop re-encoded as JPEG quality 15."""
    gt = crop(data.astronaut(), 20, 140)
    save_png(gt, "gt/jpeg_artifacts.png")
    path = OUT_DIR / "pred/jpeg_artifacts.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gt).save(path, quality=15)


def make_blur() -> None:
    """Coffee cup; pred is Gaussian-blurred with sigma 1.5."""
    gt = crop(data.coffee(), 10, 170)
    save_png(gt, "gt/blur.png")
    save_png(cv2.GaussianBlur(gt, (0, 0), sigmaX=1.5), "pred/blur.png")


def make_noise() -> None:
    """Chelsea the cat; pred has additive Gaussian noise with sigma 0.04."""
    gt = crop(data.chelsea(), 22, 110)
    save_png(gt, "gt/noise.png")
    save_png(add_gaussian_noise(gt, 0.04, seed=3), "pred/noise.png")


def make_upscale_x4() -> None:
    """Rocket launch pad; pred is a box x4 downscale then bicubic x4 upscale."""
    gt = crop(data.rocket(), 150, 190)
    save_png(gt, "gt/upscale_x4.png")
    small = Image.fromarray(gt).resize((SIZE // 4, SIZE // 4), Image.Resampling.BOX)
    pred = small.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    save_png(np.asarray(pred), "pred/upscale_x4.png")


def make_gray_denoise() -> None:
    """Grayscale cameraman; pred is a 3x3 median filter of a noisy copy."""
    gt = crop(data.camera(), 40, 150)
    save_png(gt, "gt/gray/camera_denoise.png")
    noisy = add_gaussian_noise(gt, 0.05, seed=5)
    save_png(cv2.medianBlur(noisy, 3), "pred/gray/camera_denoise.png")


def make_rgb16() -> None:
    """16-bit RGB coffee saucer; pred adds noise of a few hundred levels.

    The high byte of gt equals the 8-bit source; the low byte carries a smooth
    per-channel gradient so that the full 16-bit precision is exercised.
    """
    img8 = crop(data.coffee(), 144, 300).astype(np.float64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    phases = np.array([0.0, 2.0, 4.0])
    ramp = 0.25 * (1 + xx + yy)[..., None] + 0.2 * np.sin(2 * np.pi * xx[..., None] + phases)
    low = np.rint(255 * ramp)  # within [13, 242]: smooth, never overflows
    gt = (img8 * 256 + low).astype(np.uint16)
    rng = np.random.default_rng(6)
    pred = gt + rng.normal(0.0, 300.0, gt.shape)
    save_png16_rgb(gt, "gt/hdr16/rgb16.png")
    save_png16_rgb(np.clip(np.rint(pred), 0, 65535).astype(np.uint16), "pred/hdr16/rgb16.png")


def make_coins_mask() -> None:
    """Binary coin mask (0/255); pred is a blurred, noisy probability map."""
    coins = crop(data.coins(), 24, 64)
    smooth = filters.gaussian(coins, sigma=2)
    mask = smooth > filters.threshold_otsu(smooth)
    save_png(np.where(mask, 255, 0).astype(np.uint8), "gt/mask/coins_mask.png")
    prob = filters.gaussian(mask.astype(np.float64), sigma=3)
    rng = np.random.default_rng(7)
    save_png(to_uint8(prob + rng.normal(0.0, 0.05, prob.shape)), "pred/mask/coins_mask.png")


SEGMENTATION_CLASSES = 4
SEGMENTATION_SIZE = 64
IGNORE_LABEL = 255


def camera_label_map() -> np.ndarray:
    """A 4-class label map: the camera photo's intensity quartiles, downscaled to 64x64."""
    small = np.asarray(Image.fromarray(data.camera()).resize((SEGMENTATION_SIZE,) * 2, Image.BILINEAR))
    edges = np.quantile(small, [0.25, 0.5, 0.75])
    return np.digitize(small, edges).astype(np.uint8)


def noisy_class_scores(labels: np.ndarray, seed: int) -> np.ndarray:
    """Logits C x H x W that mostly, not always, favour the true class (a plausible network output)."""
    rng = np.random.default_rng(seed)
    one_hot = np.eye(SEGMENTATION_CLASSES, dtype=np.float64)[labels].transpose(2, 0, 1)
    smooth = np.stack([filters.gaussian(channel, sigma=1.5) for channel in one_hot])
    return (4.0 * smooth + rng.normal(0.0, 0.8, smooth.shape)).astype(np.float32)


def make_segmentation() -> None:
    """Segmentation pairs under seg/: .npy class scores against single-channel label maps.

    ``scene_probs``: softmax probabilities against a palette PNG whose 2-pixel border is the
    ignore label 255 (VOC style: run with --ignore-index 255). ``scene_logits``: raw logits
    against an 8-bit grayscale label map.
    """
    labels = camera_label_map()
    for name, seed in (("scene_probs", 11), ("scene_logits", 12)):
        logits = noisy_class_scores(labels, seed)
        if name == "scene_probs":
            scores = np.exp(logits - logits.max(axis=0))
            scores = (scores / scores.sum(axis=0)).astype(np.float32)
            gt = labels.copy()
            gt[:2, :], gt[-2:, :], gt[:, :2], gt[:, -2:] = (IGNORE_LABEL,) * 4
            image = Image.fromarray(gt, mode="P")
            palette = [0, 0, 0, 200, 40, 40, 40, 160, 40, 40, 40, 200] + [255, 255, 255] * 252
            image.putpalette(palette)
        else:
            scores, image = logits, Image.fromarray(labels, mode="L")
        (OUT_DIR / "seg" / "pred").mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "seg" / "gt").mkdir(parents=True, exist_ok=True)
        np.save(OUT_DIR / "seg" / "pred" / f"{name}.npy", scores)
        image.save(OUT_DIR / "seg" / "gt" / f"{name}.png", optimize=True)


def print_summary() -> None:
    """Print file, Pillow mode, pixel dtype, size and bytes of every generated image."""
    total = 0
    paths = sorted(p for d in ("gt", "pred") for p in (OUT_DIR / d).rglob("*") if p.is_file())
    paths += sorted((OUT_DIR / "seg").rglob("*.*"))
    for path in paths:
        if path.suffix == ".npy":
            array = np.load(path)
            mode, size, dtype = "npy", (array.shape[2], array.shape[1]), array.dtype
        else:
            with Image.open(path) as im:
                mode, size = im.mode, im.size
            dtype = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype
        nbytes = path.stat().st_size
        total += nbytes
        print(f"{path.relative_to(OUT_DIR)!s:32} {mode:5} {dtype!s:7} {size[0]}x{size[1]} {nbytes:8d} B")
    print(f"{'total':32} {'':5} {'':7} {'':7} {total:8d} B")


def main() -> None:
    make_jpeg_artifacts()
    make_blur()
    make_noise()
    make_upscale_x4()
    make_gray_denoise()
    make_rgb16()
    make_coins_mask()
    make_segmentation()
    print_summary()


if __name__ == "__main__":
    main()
