"""lossctl.losses as a training library: torch.nn parity, gradients, dtypes, and it trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossctl import losses as L

REDUCTIONS = ["none", "mean", "sum"]


def images(seed: int, shape=(2, 3, 16, 16), dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    pred = (target + 0.2 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0.01, 0.99)
    return pred.to(dtype), target.to(dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_class_indices_matches_torch(reduction):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 6, 7), generator=generator)
    expected = F.cross_entropy(logits, labels, reduction=reduction)
    torch.testing.assert_close(L.cross_entropy_loss(logits, labels, reduction=reduction), expected)
    labels[0, :2] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255, reduction=reduction)
    torch.testing.assert_close(
        L.cross_entropy_loss(logits, labels, ignore_index=255, reduction=reduction), expected
    )
    vector_logits, vector_labels = logits[:, :, 0, 0], labels[:, 2, 0]
    torch.testing.assert_close(
        L.CrossEntropyLoss(reduction=reduction)(vector_logits, vector_labels),
        F.cross_entropy(vector_logits, vector_labels, reduction=reduction),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_probability_targets_matches_torch(reduction):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 5, generator=generator, dtype=torch.float64)
    soft = torch.softmax(torch.randn(2, 4, 5, 5, generator=generator, dtype=torch.float64), dim=1)
    expected = F.cross_entropy(logits, soft, reduction=reduction)
    torch.testing.assert_close(L.cross_entropy_loss(logits, soft, reduction=reduction), expected)


def test_cross_entropy_of_log_probabilities_equals_nll():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    expected = -(np.log(0.7) + np.log(0.8)) / 2
    assert L.cross_entropy_loss(probs.log(), labels).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "logits, target, message",
    [
        (torch.zeros(2, 3), torch.tensor([0, 3]), "class index 3, but logits have 3 classes"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, dtype=torch.long), r"shape \(2, 4, 4\)"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), r"\(N, C\)"),
        (torch.zeros(2, 3), torch.zeros(2, 4), "shape of logits"),
    ],
)
def test_cross_entropy_rejects_bad_targets(logits, target, message):
    with pytest.raises(ValueError, match=message):
        L.cross_entropy_loss(logits, target)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_torch_including_large_logits(reduction):
    logits = torch.tensor([-200.0, -3.0, 0.0, 0.5, 40.0, 300.0], dtype=torch.float64)
    target = torch.tensor([1.0, 0.2, 0.5, 1.0, 0.0, 1.0], dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    torch.testing.assert_close(L.BCEWithLogitsLoss(reduction=reduction)(logits, target), expected)


def test_bce_with_logits_of_infinite_logits_is_torch_s():
    """The textbook max(x, 0) - x t + ... gave NaN for (+inf, target 0) where torch gives inf; now
    torch's kernel itself, NaN and all (-inf against target 1)."""
    logits = torch.tensor([math.inf, -math.inf, math.inf, -math.inf, math.inf])
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5])
    got = L.bce_with_logits_loss(logits, target, reduction="none")
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert got[0].item() == math.inf


def test_multiclass_dice_against_a_float64_reference():
    generator = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (2, 8, 8), generator=generator)
    got = L.multiclass_dice(probs, labels)
    p, y = probs.numpy(), labels.numpy()
    for n in range(2):
        for c in range(3):
            g = (y[n] == c).astype(np.float64)
            expected = 2 * (p[n, c] * g).sum() / (p[n, c].sum() + g.sum())
            assert got[n, c].item() == pytest.approx(expected)
    torch.testing.assert_close(L.DiceLoss(reduction="none")(probs, labels), 1 - got.mean(dim=1))


def test_dice_smoothing_and_ignore_index():
    pred = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert L.dice_coefficient(pred, target).item() == pytest.approx(2 / 3)
    assert L.dice_coefficient(pred, target, smooth=1.0).item() == pytest.approx(3 / 4)
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    dice = L.multiclass_dice(probs, labels, ignore_index=255)
    assert dice.tolist() == [[1.0, 1.0]]  # class 1 only appears on the ignored pixel


def test_psnr_loss_on_the_y_channel():
    pred, target = images(3)
    y = lambda x: (65.481 * x[:, 0] + 128.553 * x[:, 1] + 24.966 * x[:, 2] + 16) / 255  # noqa: E731
    mse = ((y(pred) - y(target)) ** 2).flatten(1).mean(1)
    expected = -10 * torch.log10(1 / (mse + 1e-8))
    torch.testing.assert_close(L.PSNRLoss(y_channel=True, reduction="none")(pred, target), expected)
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        L.psnr_loss(pred[:, :1], target[:, :1], y_channel=True)


def weights_for(pred):
    generator = torch.Generator().manual_seed(9)
    return torch.rand(pred.shape[0], 1, *pred.shape[2:], dtype=torch.float64, generator=generator).to(
        pred.dtype
    )


# Every loss of the library, as a function of (pred, target), for the gradient and dtype tests.
LOSSES = {
    "l1": lambda p, t: L.l1_loss(p, t),
    "mse": lambda p, t: L.mse_loss(p, t),
    "rmse": lambda p, t: L.rmse(p, t),
    "charbonnier": lambda p, t: L.charbonnier_loss(p, t),
    "smooth_l1": lambda p, t: L.smooth_l1_loss(p, t, beta=0.1),
    "huber": lambda p, t: L.huber_loss(p, t, delta=0.1),
    "log_cosh": lambda p, t: L.log_cosh_loss(p, t),
    "quantile": lambda p, t: L.quantile_loss(p, t, q=0.7),
    "bce": lambda p, t: L.bce_loss(p, t),
    "bce_with_logits": lambda p, t: L.bce_with_logits_loss(p, t),
    "cross_entropy_soft": lambda p, t: L.cross_entropy_loss(p, torch.softmax(t, dim=1)),
    "dice": lambda p, t: L.dice_loss(p, t),
    "dice_multiclass": lambda p, t: L.dice_loss(torch.softmax(p, dim=1), t.argmax(dim=1)),
    "tv": lambda p, t: L.tv_loss(p),
    "tv_isotropic": lambda p, t: L.tv_loss(p, isotropic=True),
    "weighted_tv": lambda p, t: L.weighted_tv_loss(p, weights_for(p)),
    "weighted_tv_edge_aware": lambda p, t: L.weighted_tv_loss(p, L.edge_aware_weights(t)),
    "psnr": lambda p, t: L.psnr_loss(p, t),
    "psnr_y": lambda p, t: L.psnr_loss(p, t, y_channel=True),
    "ssim": lambda p, t: L.ssim_loss(p, t),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_in_float64(name):
    pred, target = images(4, shape=(1, 3, 12, 12))
    pred.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: LOSSES[name](p, target), (pred,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(LOSSES) - {"cross_entropy_soft", "bce_with_logits"}))
def test_gradient_descent_reduces_the_loss(name):
    pred, target = images(5, shape=(2, 3, 16, 16), dtype=torch.float32)
    pred = pred.clone().requires_grad_()
    optimiser = torch.optim.Adam([pred], lr=0.01)
    first = None
    for _ in range(30):
        optimiser.zero_grad()
        loss = LOSSES[name](pred, target)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            pred.clamp_(0.001, 0.999)
        first = loss.item() if first is None else first
    assert LOSSES[name](pred, target).item() < first


@pytest.mark.parametrize("name", ["cross_entropy_soft", "bce_with_logits"])
def test_gradient_descent_reduces_logit_losses(name):
    logits, target = images(6, shape=(2, 3, 8, 8), dtype=torch.float32)
    logits = (logits * 4 - 2).requires_grad_()
    optimiser = torch.optim.SGD([logits], lr=1.0)
    first = LOSSES[name](logits, target).item()
    for _ in range(20):
        optimiser.zero_grad()
        LOSSES[name](logits, target).backward()
        optimiser.step()
    assert LOSSES[name](logits, target).item() < first


EDGE_CASES = {
    "charbonnier identical": lambda t: L.charbonnier_loss(t, t.detach().clone()),
    "charbonnier eps 0 identical": lambda t: L.charbonnier_loss(t, t.detach().clone(), eps=0.0),
    "rmse identical": lambda t: L.rmse(t, t.detach().clone()),
    "psnr identical": lambda t: L.psnr_loss(t, t.detach().clone()),
    "ssim identical": lambda t: L.ssim_loss(t, t.detach().clone()),
    "ssim constant images": lambda t: L.ssim_loss(t * 0 + 0.5, torch.full_like(t, 0.5)),
    "weighted tv zero weights": lambda t: L.weighted_tv_loss(t, torch.zeros_like(t[:, :1])),
    "tv isotropic flat": lambda t: L.tv_loss(t * 0, isotropic=True),
    "dice empty masks": lambda t: L.dice_loss(t * 0, torch.zeros_like(t)),
    "bce saturated": lambda t: L.bce_loss(torch.cat([t * 0, t * 0 + 1]), torch.cat([t * 0 + 1, t * 0])),
    "log cosh huge": lambda t: L.log_cosh_loss(t * 1e4, torch.zeros_like(t)),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_no_nan_gradients_at_edge_cases(case):
    _, target = images(7, shape=(1, 3, 16, 16), dtype=torch.float32)
    leaf = target.clone().requires_grad_()
    loss = EDGE_CASES[case](leaf)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()


def test_psnr_of_identical_images_is_inf_with_a_zero_gradient():
    """log10(1 / mse) gave 0 * inf = NaN gradients for an identical image, poisoning the batch's."""
    _, target = images(7, shape=(2, 3, 16, 16), dtype=torch.float32)
    leaf = target.clone().requires_grad_()
    shifted = target.detach().clone()
    shifted[1] = (shifted[1] + 0.01).clamp(0, 1)
    values = L.psnr(leaf, shifted, reduction="none")
    assert values[0].item() == math.inf and math.isfinite(values[1].item())
    values.sum().backward()
    assert torch.isfinite(leaf.grad).all() and not leaf.grad[0].any() and leaf.grad[1].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_in_every_cpu_dtype(name, dtype):
    """Half inputs are computed in float32: equal to float64 on the same (rounded) inputs."""
    pred, target = images(8, shape=(2, 3, 16, 16))
    pred, target = pred.to(dtype), target.to(dtype)
    leaf = pred.clone().requires_grad_()
    value = LOSSES[name](leaf, target)
    value.backward()
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(leaf.grad).all() and leaf.grad.dtype == dtype
    reference = LOSSES[name](pred.double(), target.double())
    # METRICS.md: float32 within 1e-5 of float64. In half types some cases' own inputs (a softmax, a
    # weight map) are made in that type before the loss, and differ from the float64 reference's.
    rel = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-4
    assert value.item() == pytest.approx(reference.item(), rel=rel)


MODULES = [
    (L.L1Loss(), L.l1_loss),
    (L.MSELoss(), L.mse_loss),
    (L.RMSELoss(), L.rmse),
    (L.CharbonnierLoss(eps=0.01), lambda p, t: L.charbonnier_loss(p, t, eps=0.01)),
    (L.SmoothL1Loss(beta=0.5), lambda p, t: L.smooth_l1_loss(p, t, beta=0.5)),
    (L.HuberLoss(delta=0.5), lambda p, t: L.huber_loss(p, t, delta=0.5)),
    (L.LogCoshLoss(), L.log_cosh_loss),
    (L.QuantileLoss(q=0.2), lambda p, t: L.quantile_loss(p, t, q=0.2)),
    (L.BCELoss(), L.bce_loss),
    (L.DiceLoss(smooth=1.0), lambda p, t: L.dice_loss(p, t, smooth=1.0)),
    (L.PSNRLoss(), L.psnr_loss),
    (L.SSIMLoss(), lambda p, t: 1 - L.ssim(p, t)),
]


@pytest.mark.parametrize("module, function", MODULES, ids=lambda item: type(item).__name__)
def test_modules_are_thin_wrappers_of_the_functions(module, function):
    pred, target = images(10)
    torch.testing.assert_close(module(pred, target), function(pred, target))
    assert isinstance(module, torch.nn.Module)


def test_tv_modules():
    pred, target = images(11)
    torch.testing.assert_close(L.TVLoss(isotropic=True)(pred), L.tv_loss(pred, isotropic=True))
    weights = L.edge_aware_weights(target)
    torch.testing.assert_close(L.WeightedTVLoss()(pred, weights), L.weighted_tv_loss(pred, weights))
