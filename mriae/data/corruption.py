"""Batched, seeded corruption of network INPUTS (the target stays clean), on the device of the batch.

One implementation serves training, validation, evaluation, the compare step and the benchmark
(the same code everywhere). It follows S4 (Arnaiz, brain Residual U-Net
thesis, section 5.4.3), with each operation's range and probability a constructor argument:

- pixel dropout: rate ~ U[dropout[0], dropout[1]) per image, kept pixels scaled by 1 / (1 - rate);
- Gaussian noise: sigma ~ U[noise_std[0], noise_std[1]) per image;
- Rician noise (not in S4; off by default): magnitude of a complex Gaussian perturbation;
- blank-out: with probability ``blankout_prob`` one zero-filled square (cube in 3D) whose side is
  drawn uniformly from the integers in [blankout_size[0], blankout_size[1]) and whose position is
  uniform over the WHOLE image (S4's code put it on the diagonal only; we do not copy that bug);
- blur: with probability ``blur_prob`` a Gaussian filter of sigma ``blur_sigma`` (3x3 in S4);
- renormalisation: min-max back to the clean image's own [min, max] range. S4 min-max scaled every
  image to [0, 1] and renormalised the corrupted input to [0, 1]; our images keep a volume-level
  scale, so we renormalise to the clean range, which is identical when the clean image spans [0, 1].

MONAI's ``RandGaussianNoise`` / ``RandCoarseDropout`` / ``RandGaussianSmooth`` act per sample on the
CPU inside a Dataset; this module works on whole batches on the GPU with per-image random levels,
which is what keeps the training loop fed (issue: speed) and makes validation corruption exactly
repeatable from a seed. Works for ``spatial_dims`` 2 and 3 (inferred from the tensor).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Corruption",
    "Augmentation",
    "gaussian_kernel1d",
    "SEVERITIES",
    "conditions",
    "EVALUATED",
    "eval_conditions",
    "CORRUPTION_SEED",
    "item_seed",
    "corrupt_items",
]


def _range(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    lo, hi = (float(v) for v in value)
    if hi < lo:
        raise ValueError(f"range {value!r}: upper bound below lower bound")
    return lo, hi


def gaussian_kernel1d(
    sigma: float, size: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Normalised 1D Gaussian kernel; ``size`` None means 2 * ceil(3 sigma) + 1."""
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class Corruption:
    """Corrupt a batch ``(B, C, *spatial)`` of images in [0, 1]; returns a new tensor.

    Args:
        dropout: range of the pixel dropout rate (S4: (0, 0.05)).
        dropout_rescale: scale the kept pixels by ``1 / (1 - rate)`` (S4, as Keras' Dropout); without it
            dropped pixels are only missing, and the image's intensity scale is not changed.
        noise_std: range of the Gaussian noise sigma (S4: (0, 0.04)).
        rician_std: range of the Rician noise sigma (off by default).
        rician_prob: None (Gaussian and Rician noise both applied when their ranges are set), or the
            probability that an image gets Rician noise INSTEAD of Gaussian noise (a noise-blind
            denoiser sees both kinds, one per image).
        blankout_prob: probability of one blanked square per image (S4: 0.2).
        blankout_size: [low, high) integer range of the square's side in pixels (S4: (10, 40)).
        blankout_where: ``"anywhere"`` (uniform position, S4) or ``"foreground"`` (centred on a
            random pixel above 5 % of the image maximum: evaluation of in-painting, where a square on
            the background would test nothing).
        blur_prob: probability of blurring an image (S4: 0.1).
        blur_sigma: Gaussian sigma of the blur (S4: 0.6).
        blur_kernel_size: kernel size (S4: 3); None derives it from sigma.
        renormalize: min-max the corrupted image back to the clean image's range.
        nonnegative: clip the corrupted image at 0 (a magnitude image has no negative values).

    Example::

        corrupt = Corruption()                         # S4's training corruption
        g = torch.Generator(device=x.device).manual_seed(0)
        x_in = corrupt(x, generator=g)                 # x: (32, 1, 128, 128)
    """

    def __init__(
        self,
        dropout: float | Sequence[float] = (0.0, 0.05),
        noise_std: float | Sequence[float] = (0.0, 0.04),
        dropout_rescale: bool = True,
        rician_std: float | Sequence[float] = 0.0,
        rician_prob: float | None = None,
        blankout_prob: float = 0.2,
        blankout_size: Sequence[int] = (10, 40),
        blankout_where: str = "anywhere",
        blur_prob: float = 0.1,
        blur_sigma: float = 0.6,
        blur_kernel_size: int | None = 3,
        renormalize: bool = True,
        nonnegative: bool = False,
    ) -> None:
        self.dropout = _range(dropout)
        self.dropout_rescale = bool(dropout_rescale)
        self.noise_std = _range(noise_std)
        self.rician_std = _range(rician_std)
        if rician_prob is not None and not 0 <= float(rician_prob) <= 1:
            raise ValueError(f"rician_prob {rician_prob!r} must lie in [0, 1]")
        self.rician_prob = None if rician_prob is None else float(rician_prob)
        if not 0 <= self.dropout[0] <= self.dropout[1] < 1:
            raise ValueError(f"dropout {dropout!r} must lie in [0, 1)")
        self.blankout_prob = float(blankout_prob)
        lo, hi = (int(v) for v in blankout_size)
        if hi < lo or lo < 0:
            raise ValueError(f"blankout_size {blankout_size!r} must be [low, high) with 0 <= low <= high")
        self.blankout_size = (lo, hi)
        if blankout_where not in ("anywhere", "foreground"):
            raise ValueError(f"blankout_where {blankout_where!r} must be 'anywhere' or 'foreground'")
        self.blankout_where = blankout_where
        self.blur_prob = float(blur_prob)
        self.blur_sigma = float(blur_sigma)
        self.blur_kernel_size = blur_kernel_size
        self.renormalize = renormalize
        self.nonnegative = bool(nonnegative)

    def __repr__(self) -> str:
        keys = (
            "dropout",
            "noise_std",
            "rician_std",
            "blankout_prob",
            "blankout_size",
            "blur_prob",
            "blur_sigma",
        )
        return "Corruption(" + ", ".join(f"{k}={getattr(self, k)}" for k in keys) + ")"

    def config(self) -> dict:
        """The parameters as a flat dict (for tracking)."""
        return {
            "dropout": list(self.dropout),
            "dropout_rescale": self.dropout_rescale,
            "noise_std": list(self.noise_std),
            "rician_std": list(self.rician_std),
            "rician_prob": self.rician_prob,
            "blankout_prob": self.blankout_prob,
            "blankout_size": list(self.blankout_size),
            "blankout_where": self.blankout_where,
            "blur_prob": self.blur_prob,
            "blur_sigma": self.blur_sigma,
            "blur_kernel_size": self.blur_kernel_size,
            "renormalize": self.renormalize,
            "nonnegative": self.nonnegative,
        }

    @staticmethod
    def _uniform(
        lohi: tuple[float, float], n: int, g: torch.Generator | None, like: torch.Tensor
    ) -> torch.Tensor:
        lo, hi = lohi
        u = torch.rand(n, generator=g, device=like.device, dtype=torch.float32)
        return (lo + (hi - lo) * u).to(like.dtype)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim < 4:
            raise ValueError(f"expected a batch (B, C, *spatial), got shape {tuple(x.shape)}")
        # Few full-size kernels (the hot loop of training, issue: speed): per-image scalars are
        # computed on (B, 1, ...) views, the full-size work is fused where PyTorch has the op
        # (aminmax, addcmul, where). The random draws and their order are those of the reference
        # formulas in the module docstring (tests compare against them).
        g = generator
        b = x.shape[0]
        view = (b,) + (1,) * (x.ndim - 1)
        out = x
        if self.renormalize:
            cmin, cmax = (v.view(view) for v in torch.aminmax(x.reshape(b, -1), dim=1))

        if self.dropout[1] > 0:
            rate = self._uniform(self.dropout, b, g, x).view(view)
            keep = torch.rand(x.shape, generator=g, device=x.device, dtype=torch.float32) >= rate
            out = torch.where(keep, out * (1 / (1 - rate)) if self.dropout_rescale else out, 0.0)
        if self.rician_prob is not None:
            out = self._one_noise_per_image(out, b, view, g)
        elif self.noise_std[1] > 0:
            sigma = self._uniform(self.noise_std, b, g, x).view(view)
            out = torch.addcmul(out, sigma, torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype))
        if self.rician_std[1] > 0 and self.rician_prob is None:
            sigma = self._uniform(self.rician_std, b, g, x).view(view)
            n1 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            n2 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            out = torch.hypot(torch.addcmul(out, sigma, n1), sigma * n2)
        if self.blankout_prob > 0 and self.blankout_size[1] > 0:
            out = torch.where(self._blank_mask(x, g), 0.0, out)
        if self.blur_prob > 0 and self.blur_sigma > 0:
            apply = (torch.rand(b, generator=g, device=x.device) < self.blur_prob).view(view)
            out = torch.where(apply, self._blur(out), out)
        if self.renormalize:
            omin, omax = (v.view(view) for v in torch.aminmax(out.reshape(b, -1), dim=1))
            scale = (cmax - cmin) / (omax - omin).clamp_min(1e-8)
            out = torch.addcmul(cmin - omin * scale, out, scale)  # (out - omin) * scale + cmin
        if self.nonnegative:
            out = out.clamp_min(0)
        return out.clone() if out is x else out

    def _one_noise_per_image(
        self, x: torch.Tensor, b: int, view: tuple, g: torch.Generator | None
    ) -> torch.Tensor:
        """Gaussian noise (sigma ~ ``noise_std``) or, with probability ``rician_prob``, Rician noise
        (sigma ~ ``rician_std``): one kind per image."""
        rician = (torch.rand(b, generator=g, device=x.device) < self.rician_prob).view(view)
        s_g = self._uniform(self.noise_std, b, g, x).view(view)
        s_r = self._uniform(self.rician_std, b, g, x).view(view)
        n1 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        n2 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        gauss = torch.addcmul(x, s_g, n1)
        rice = torch.hypot(torch.addcmul(x, s_r, n1), s_r * n2)
        return torch.where(rician, rice, gauss)

    def _blank_mask(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Boolean ``(B, 1, *spatial)``: True inside each image's blanked square (cube)."""
        b, spatial = x.shape[0], x.shape[2:]
        lo, hi = self.blankout_size
        apply = torch.rand(b, generator=g, device=x.device) < self.blankout_prob
        side = torch.randint(lo, max(hi, lo + 1), (b,), generator=g, device=x.device)
        mask = apply.view((b,) + (1,) * len(spatial))
        if self.blankout_where == "foreground":
            flat = x.amax(dim=1).flatten(1)
            weights = (flat > 0.05 * flat.amax(dim=1, keepdim=True)).float() + 1e-12
            centre = torch.multinomial(weights, 1, generator=g).squeeze(1)
            coords = list(torch.unravel_index(centre, tuple(spatial)))
        for d, size in enumerate(spatial):
            s = side.clamp(max=size)
            if self.blankout_where == "foreground":
                start = (coords[d] - s // 2).clamp(min=0)
                start = torch.minimum(start, size - s)
            else:
                start = (torch.rand(b, generator=g, device=x.device) * (size - s + 1)).floor().long()
            coord = torch.arange(size, device=x.device).view(1, size)
            inside = (coord >= start[:, None]) & (coord < (start + s)[:, None])
            shape = [b] + [1] * len(spatial)
            shape[1 + d] = size
            mask = mask & inside.view(shape)
        return mask.unsqueeze(1)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of every image: one depthwise convolution with the separable kernel's
        outer product, reflect padding (as tensorflow-addons' gaussian_filter2d in S4)."""
        nd = x.ndim - 2
        k = gaussian_kernel1d(self.blur_sigma, self.blur_kernel_size, x.device, x.dtype)
        kernel = k
        for _ in range(nd - 1):
            kernel = kernel[..., None] * k
        c = x.shape[1]
        weight = kernel.expand(c, 1, *kernel.shape)
        pad = (k.numel() - 1) // 2
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        return conv(F.pad(x, [pad] * (2 * nd), mode="reflect"), weight, groups=c)


_NONE = {"dropout": 0.0, "noise_std": 0.0, "blankout_prob": 0.0, "renormalize": False}


class Augmentation:
    """Batched, seeded augmentation of CLEAN training images ``(B, C, H, W)`` (before the corruption,
    so input and target change together), on the device of the batch. Per image: a random flip of
    each in-plane axis, a random transpose of the plane (square images), a random gamma
    ``x ** gamma`` with ``log(gamma)`` uniform in ``log(gamma_range)`` and a random intensity scale.
    Contrast variety is what lets a denoiser trained on one template family leave other contrasts
    alone (MONAI's ``RandAdjustContrast`` / ``RandFlip`` / ``RandRotate90`` do the same per sample on the CPU).
    """

    def __init__(
        self,
        flip: bool = True,
        transpose: bool = True,
        gamma_range: Sequence[float] | None = (0.7, 1.5),
        scale_range: Sequence[float] | None = (0.85, 1.15),
        sharpen_range: Sequence[float] | None = None,
        texture_range: Sequence[float] | None = None,
        texture_sigma: float = 0.7,
    ) -> None:
        self.flip, self.transpose = bool(flip), bool(transpose)
        self.texture_range = None if texture_range is None else _range(texture_range)
        self.texture_sigma = float(texture_sigma)
        self.sharpen_range = None if sharpen_range is None else _range(sharpen_range)
        self.gamma_range = None if gamma_range is None else _range(gamma_range)
        self.scale_range = None if scale_range is None else _range(scale_range)
        if self.gamma_range is not None and self.gamma_range[0] <= 0:
            raise ValueError(f"gamma_range {gamma_range!r} must be positive")

    def config(self) -> dict:
        return {
            "flip": self.flip,
            "transpose": self.transpose,
            "gamma_range": None if self.gamma_range is None else list(self.gamma_range),
            "scale_range": None if self.scale_range is None else list(self.scale_range),
            "sharpen_range": None if self.sharpen_range is None else list(self.sharpen_range),
            "texture_range": None if self.texture_range is None else list(self.texture_range),
            "texture_sigma": self.texture_sigma,
        }

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g, b = generator, x.shape[0]
        view = (b,) + (1,) * (x.ndim - 1)
        if self.flip:
            for dim in (-1, -2):
                x = torch.where(
                    (torch.rand(b, generator=g, device=x.device) < 0.5).view(view), x.flip(dim), x
                )
        if self.transpose and x.shape[-1] == x.shape[-2]:
            t = (torch.rand(b, generator=g, device=x.device) < 0.5).view(view)
            x = torch.where(t, x.transpose(-1, -2), x)
        if self.gamma_range is not None:
            lo, hi = (math.log(v) for v in self.gamma_range)
            gamma = torch.exp(lo + (hi - lo) * torch.rand(b, generator=g, device=x.device)).view(view)
            x = x.clamp_min(0) ** gamma.to(x.dtype)
        if self.scale_range is not None:
            x = x * Corruption._uniform(self.scale_range, b, g, x).view(view)
        if self.sharpen_range is not None:  # unsharp mask: edges and fine detail sharper than the templates'
            amount = Corruption._uniform(self.sharpen_range, b, g, x).view(view)
            blur = Corruption(**_NONE, blur_prob=1.0, blur_sigma=1.0, blur_kernel_size=None)._blur(x)
            x = (x + amount * (x - blur)).clamp_min(0)
        if self.texture_range is not None:  # fine anatomy-like texture, the same in every context slice
            field = torch.randn((b, 1, *x.shape[2:]), generator=g, device=x.device, dtype=x.dtype)
            field = Corruption(**_NONE, blur_prob=1.0, blur_sigma=self.texture_sigma, blur_kernel_size=None)._blur(field)
            field = field / field.flatten(1).std(1).clamp_min(1e-8).view(view)
            amount = Corruption._uniform(self.texture_range, b, g, x).view(view)
            x = (x * (1 + amount * field)).clamp_min(0)
        return x.contiguous()


# The one seed of every evaluation's corrupted inputs: validation during training, a bundle's
# evaluate.json and the compare all corrupt an item with ``corrupt_items`` from this seed
CORRUPTION_SEED = 12345


def item_seed(seed: int, corruption: Corruption, key: Sequence) -> int:
    """Seed of one item's corruption, fixed by ``seed``, the corruption's settings and the item's key
    (e.g. ``(subject, slice)``): not by the batch it comes in, its position, the device or the
    condition's name."""
    return _item_seed(seed, _settings(corruption), key)


def _settings(corruption: Corruption) -> str:
    return json.dumps(corruption.config(), sort_keys=True)


def _item_seed(seed: int, settings: str, key: Sequence) -> int:
    text = f"[{settings}, {json.dumps([str(k) for k in key])}]"  # json.dumps([config, key], sort_keys=True)
    return (int(seed) * 1_000_003 + zlib.crc32(text.encode())) % (2**63 - 1)


def corrupt_items(
    corruption: Corruption | None, images: torch.Tensor, keys: Sequence[Sequence], seed: int = CORRUPTION_SEED
) -> torch.Tensor:
    """``images`` (B, C, *spatial), each corrupted on the CPU with a generator of its own seeded by
    ``item_seed(seed, corruption, keys[i])``, returned on ``images``' device as float32. The same item
    under the same condition gets the same corrupted image wherever it is scored (validation,
    evaluate.json, compare), in any batch and on any device; all C channels of an item (a stack of
    neighbouring slices) are corrupted together, as one training item is."""
    x = images.detach().float().cpu()
    if len(keys) != len(x):
        raise ValueError(f"corrupt_items: {len(keys)} keys for {len(x)} images")
    if corruption is None:
        return x.clone().to(images.device)
    out, settings = torch.empty_like(x), _settings(corruption)
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(_item_seed(seed, settings, key))
        out[i : i + 1] = corruption(x[i : i + 1], generator=g)
    return out.to(images.device)


SEVERITIES = {
    "noise": (0.01, 0.03, 0.05),
    "rician": (0.01, 0.03, 0.05),
    "dropout": (0.01, 0.03, 0.05),
    "blankout": (10, 25, 40),
    "blur": (0.6, 1.0, 1.5),
}
# one corruption alone, without S4's min-max renormalisation: with it, additive noise would also
# rescale the whole slice and the score would measure that shift
_OFF = {"dropout": 0.0, "noise_std": 0.0, "blankout_prob": 0.0, "blur_prob": 0.0, "renormalize": False}


def conditions(kinds=tuple(SEVERITIES), levels=(0, 1, 2), combined: bool = True) -> dict:
    """``{name: Corruption or None}``: clean, each kind alone at the chosen severities, and S4's
    training corruption (``combined``)."""
    out: dict[str, Corruption | None] = {"clean": None}
    for kind in kinds:
        for lv in levels:
            v = SEVERITIES[kind][lv]
            if kind == "noise":
                c = Corruption(**{**_OFF, "noise_std": v})
            elif kind == "rician":
                c = Corruption(**{**_OFF, "rician_std": v})
            elif kind == "dropout":
                c = Corruption(**{**_OFF, "dropout": v})
            elif kind == "blankout":
                c = Corruption(
                    **{**_OFF, "blankout_prob": 1.0}, blankout_size=(v, v + 1), blankout_where="foreground"
                )
            else:
                c = Corruption(**{**_OFF, "blur_prob": 1.0}, blur_sigma=v, blur_kernel_size=None)
            out[f"{kind}-{v}"] = c
    if combined:
        out["combined"] = Corruption()
    return out


# the conditions a bundle's evaluate.json scores, by their short names in eval/summary.json
EVALUATED = {
    "noise": "noise-0.03",
    "dropout": "dropout-0.03",
    "blankout": "blankout-25",
    "blur": "blur-1.0",
    "combined": "combined",
}


def eval_conditions(names=tuple(EVALUATED)) -> dict:
    """``{short name: Corruption}`` for a bundle's evaluation (``configs/evaluate.json``): the same
    objects ``conditions`` gives the compare under its long names (``EVALUATED``)."""
    unknown = [n for n in names if n not in EVALUATED]
    if unknown:
        raise ValueError(f"conditions {unknown}: not among {list(EVALUATED)}")
    every = conditions()
    return {n: every[EVALUATED[n]] for n in names}
