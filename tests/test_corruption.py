"""The corruption's statistics match its configuration (S4's four operations, batched)."""

import numpy as np
import pytest
import torch

from mriae.data.corruption import Corruption


def _only(**kw):
    base = dict(dropout=0.0, noise_std=0.0, blankout_prob=0.0, blur_prob=0.0, renormalize=False)
    base.update(kw)
    return Corruption(**base)


@pytest.fixture(scope="module")
def images():
    # a real-ish image: a smooth positive field, far from 0 so that dropout zeros are detectable
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.3 * torch.rand(512, 1, 64, 64, generator=g)
    return x


def test_dropout_rate_uniform_and_rescaled(images):
    c = _only(dropout=(0.0, 0.05))
    y = c(images, torch.Generator().manual_seed(1))
    rate = (y == 0).float().mean(dim=(1, 2, 3)).numpy()
    assert 0 <= rate.min() and rate.max() < 0.06
    assert abs(rate.mean() - 0.025) < 0.004  # mean of U[0, 0.05)
    assert abs(rate.std() - 0.05 / np.sqrt(12)) < 0.004
    kept = y != 0
    ratio = (y[kept] / images[kept]).numpy()
    assert ratio.min() >= 1.0 - 1e-6 and ratio.max() <= 1 / (1 - 0.05) + 1e-5  # scaled by 1/(1-rate)


def test_gaussian_noise_sigma_uniform(images):
    c = _only(noise_std=(0.0, 0.04))
    y = c(images, torch.Generator().manual_seed(2))
    sigma = (y - images).std(dim=(1, 2, 3)).numpy()
    assert sigma.max() < 0.0415 and abs(sigma.mean() - 0.02) < 0.003
    fixed = _only(noise_std=0.03)(images, torch.Generator().manual_seed(3))
    assert abs(float((fixed - images).std()) - 0.03) < 5e-4


def test_blankout_probability_size_and_position_anywhere(images):
    c = _only(blankout_prob=0.2, blankout_size=(10, 40))
    y = c(images, torch.Generator().manual_seed(4))
    hit = (y == 0).flatten(1).any(1).numpy()
    assert abs(hit.mean() - 0.2) < 0.05
    sides, offdiag = [], 0
    for i in np.flatnonzero(hit):
        zero = (y[i, 0] == 0).numpy()
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        assert len(rows) == len(cols)  # a square
        assert zero.sum() == len(rows) ** 2
        sides.append(len(rows))
        offdiag += rows[0] != cols[0]
    assert min(sides) >= 10 and max(sides) < 40
    assert offdiag > 0.8 * len(sides)  # not only on the diagonal (S4's code bug)


def test_blur_probability_and_kernel(images):
    c = _only(blur_prob=0.1, blur_sigma=0.6)
    y = c(images, torch.Generator().manual_seed(5))
    changed = (y - images).abs().flatten(1).amax(1) > 1e-6
    assert abs(changed.float().mean().item() - 0.1) < 0.04
    # a blurred image keeps its mean (normalised kernel) and loses variance
    i = int(torch.nonzero(changed)[0, 0])
    assert abs(float(y[i].mean() - images[i].mean())) < 1e-3
    assert float(y[i].std()) < float(images[i].std())


def test_renormalisation_keeps_the_clean_range(images):
    y = Corruption()(images, torch.Generator().manual_seed(6))
    assert torch.allclose(y.amin(dim=(1, 2, 3)), images.amin(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(y.amax(dim=(1, 2, 3)), images.amax(dim=(1, 2, 3)), atol=1e-5)


def test_seeded_and_3d():
    x = 0.5 + 0.5 * torch.rand(3, 1, 24, 24, 24)
    c = Corruption(blankout_prob=1.0, blur_prob=1.0)
    a = c(x, torch.Generator().manual_seed(7))
    b = c(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape
    cube = _only(blankout_prob=1.0)(x, torch.Generator().manual_seed(7))
    assert (cube == 0).flatten(1).sum(1).min() >= 10**3  # a cube of side >= 10 blanked


def test_foreground_blankout_lands_on_the_object():
    x = torch.zeros(64, 1, 64, 64)
    x[:, :, 24:40, 24:40] = 1.0
    c = _only(blankout_prob=1.0, blankout_size=(8, 9), blankout_where="foreground")
    y = c(x, torch.Generator().manual_seed(8))
    removed = (x - y).sum(dim=(1, 2, 3))
    assert (removed > 0).all()


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError):
        Corruption(dropout=(0.1, 0.05))
    with pytest.raises(ValueError):
        Corruption(blankout_where="diagonal")
