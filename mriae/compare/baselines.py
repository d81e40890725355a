"""Classical baselines of the compare step, run on exactly the inputs the networks get.

Each baseline maps a batch of corrupted slices ``(N, 1, H, W)`` in [0, 1] plus each slice's subject
id to restored slices of the same shape. Baselines that work in 3D get, per subject, the stack of
that subject's corrupted test slices in slice order (axis 0 = left-right, 1.2 mm apart; when the
compare keeps only some slices per subject the stack has gaps, which is stated in the results).

CPU cost, bounded on purpose (the networks run on the GPU, these do not):
- ``identity``: nothing (what doing nothing scores).
- ``gaussian``: Gaussian smoothing, sigma 1 px, batched in torch (``Corruption``'s blur, no renormalisation).
- ``nlm``: scikit-image ``denoise_nl_means`` in fast mode, patch 5, search distance 6, h = 0.8 sigma with
  sigma from ``estimate_noise_sigma``; 2D per slice by default (about 10 ms a slice), ``mode="3d"`` on the
  subject stack (patch 3, distance 3) costs roughly 20x more.
- ``bm4d``: the ``bm4d`` package on the subject stack with sigma from ``estimate_noise_sigma``; optional, minutes
  per IXI volume on one core; ``available`` is False when it is not installed and the table says so.
"""

from __future__ import annotations

import numpy as np
import torch

from mriae.data.corruption import Corruption

__all__ = [
    "estimate_noise_sigma",
    "Baseline",
    "Identity",
    "GaussianSmoothing",
    "NonLocalMeans",
    "BM4D",
    "make_baselines",
]


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Gaussian noise sigma of a 2D image (or the mean over the slices of a 3D stack) by Immerkaer's
    Laplacian-difference method (CVIU 1996). scikit-image's ``estimate_sigma`` needs PyWavelets,
    which is not a dependency here."""
    from scipy.ndimage import convolve

    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        return float(np.mean([estimate_noise_sigma(s) for s in a]))
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    h, w = a.shape
    r = np.abs(convolve(a, k, mode="reflect"))[1:-1, 1:-1].sum()
    return float(np.sqrt(np.pi / 2) * r / (6 * (w - 2) * (h - 2)))


class Baseline:
    name = "baseline"
    available = True
    note = ""

    def __call__(self, x: torch.Tensor, subjects: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _by_subject(subjects: list[str]) -> dict[str, np.ndarray]:
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(subjects):
            groups.setdefault(s, []).append(i)
        return {s: np.asarray(ix) for s, ix in groups.items()}


class Identity(Baseline):
    name, note = "identity", "the corrupted input itself"

    def __call__(self, x, subjects):
        return x.clone()


class GaussianSmoothing(Baseline):
    name = "gaussian"

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = sigma
        self.note = f"Gaussian smoothing, sigma {sigma} px"
        self.blur = Corruption(
            dropout=0.0,
            noise_std=0.0,
            blankout_prob=0.0,
            blur_prob=1.0,
            blur_sigma=sigma,
            blur_kernel_size=None,
            renormalize=False,
        )

    def __call__(self, x, subjects):
        return self.blur(x).clamp(0, 1)


class NonLocalMeans(Baseline):
    name = "nlm"

    def __init__(self, mode: str = "2d", h_factor: float = 0.8) -> None:
        if mode not in ("2d", "3d"):
            raise ValueError(f"mode {mode!r} must be '2d' or '3d'")
        self.mode, self.h_factor = mode, h_factor
        self.kw = (
            {"patch_size": 5, "patch_distance": 6} if mode == "2d" else {"patch_size": 3, "patch_distance": 3}
        )
        self.note = (
            f"non-local means ({mode}, patch {self.kw['patch_size']}, distance {self.kw['patch_distance']}, "
            f"h = {h_factor} x estimated sigma)"
        )

    def _denoise(self, img: np.ndarray) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        sigma = estimate_noise_sigma(img)
        if not sigma > 0:
            return img
        return denoise_nl_means(img, h=self.h_factor * sigma, sigma=sigma, fast_mode=True, **self.kw)

    def __call__(self, x, subjects):
        a = x[:, 0].cpu().numpy().astype(np.float64)
        out = np.empty_like(a)
        if self.mode == "2d":
            for i in range(len(a)):
                out[i] = self._denoise(a[i])
        else:
            for ix in self._by_subject(subjects).values():
                out[ix] = self._denoise(a[ix])
        return torch.from_numpy(out).to(x.dtype).unsqueeze(1).clamp(0, 1)


class BM4D(Baseline):
    name = "bm4d"

    def __init__(self) -> None:
        try:
            import bm4d  # noqa: F401

            self.available, self.note = True, "BM4D on the subject stack, sigma estimated"
        except ImportError:
            self.available, self.note = False, "not installed (pip install bm4d)"

    def __call__(self, x, subjects):
        import bm4d

        a = x[:, 0].cpu().numpy().astype(np.float64)
        out = np.empty_like(a)
        # one subject at a time: the library threads internally and aborts (a C++ assertion in its
        # global thread pool) when called from two Python threads at once
        for ix in self._by_subject(subjects).values():
            vol = a[ix]
            sigma = estimate_noise_sigma(vol)
            out[ix] = np.asarray(bm4d.bm4d(vol, max(sigma, 1e-4))).reshape(vol.shape)
        return torch.from_numpy(out).to(x.dtype).unsqueeze(1).clamp(0, 1)


def make_baselines(names: list[str], nlm_mode: str = "2d") -> dict[str, Baseline]:
    """Baselines by name (``identity``, ``gaussian``, ``nlm``, ``bm4d``)."""
    table = {
        "identity": Identity,
        "gaussian": GaussianSmoothing,
        "nlm": lambda: NonLocalMeans(mode=nlm_mode),
        "bm4d": BM4D,
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(table)}")
    return {n: table[n]() for n in names}
