"""Volume preprocessing shared by ``prepare`` and inference: one transform chain, invertible.

    load (NIfTI / MGZ / DICOM, ``mriae.io``) -> Orientation(axcodes) -> Spacing(pixdim)
    -> robust intensity scaling to [0, 1] (percentiles) -> ResizeWithPadOrCrop(-1, S, S)
    -> foreground mask -> relevant slices (mask area >= fraction of the slice)

The default orientation ``"RIA"`` makes axis 0 the left-right axis, so ``volume[0, i]`` is an
upright sagittal slice (superior at the top, anterior to the right), S4's slicing. The default
spacing (1.2, 1.875, 1.875) mm is IXI's sagittal spacing with the in-plane 256 -> 128 resize of S4
(0.9375 mm -> 1.875 mm), so a 128x128 slice covers S4's 240 mm field of view.

The geometric steps are MONAI invertible transforms, so inference maps a prediction back onto the
input's exact grid with ``Invertd``. MONAI's ``ScaleIntensityRangePercentiles`` takes percentiles over
all voxels (mostly background); ours takes the upper one over the foreground, and records both so
the scaling can be undone.

``PreprocessConfig`` is the PLAN (nnU-Net's plans.json): what prepare did to the data, recorded in
``datalist.json``, written beside the weights by training and read back by evaluation and inference
(``mriae.prepare.plan``). ``spacing=None`` keeps every volume's own grid (no resampling); ``clip=False``
keeps intensities above the upper percentile (a denoiser must give them back);
``inference_grid="native"`` runs inference on the input's own grid (only a lossless reorientation),
``"plan"`` resamples to ``spacing`` and pads / crops to ``slice_size`` as prepare did (S4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, Orientationd, ResizeWithPadOrCropd, Spacingd
from scipy import ndimage

from mriae.errors import InputError

__all__ = [
    "PreprocessConfig",
    "geometric_transform",
    "geometric_transforms",
    "robust_scale",
    "otsu_threshold",
    "foreground_mask",
    "relevant_slices",
    "preprocess_volume",
]


PREPROCESS_VERSION = 2  # bump when the preprocessing code changes what it writes for the same plan
# fixed rules of the plan, recorded with it so that a reader of a datalist or a model's plan sees them
SCALING_RULE = "low = lower percentile of all voxels, high = upper percentile of voxels above Otsu; (v - low) / (high - low)"
MASK_RULE = "Otsu threshold, closing (3x3x3, 2 iterations), hole filling, largest component"
_DESCRIPTIVE = ("code_version", "scaling_rule", "mask_rule")


@dataclass
class PreprocessConfig:
    """The plan: parameters of the prepare step, recorded in the datalist and beside the weights,
    and checked by later steps. Invalid values raise ``InputError`` (one line)."""

    axcodes: str = "RIA"
    spacing: tuple[float, float, float] | None = (1.2, 1.875, 1.875)
    slice_size: int = 128
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    # S4: keep a slice when its brain mask covers > 3000 px of 256x256 (4.58 %)
    min_mask_fraction: float = 3000 / (256 * 256)
    clip: bool = True
    inference_grid: str = "plan"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = str(self.axcodes).upper()
        try:
            ok = len(codes) == 3 and nib.orientations.axcodes2ornt(codes) is not None
            ok = ok and len({nib.orientations.axcodes2ornt(codes)[i, 0] for i in range(3)}) == 3
        except (ValueError, KeyError):
            ok = False
        if not ok:
            raise InputError(
                f"axcodes {self.axcodes!r}: need three letters, one of L/R, A/P, S/I each (e.g. RIA)"
            )
        self.axcodes = codes
        if self.spacing is not None:
            sp = tuple(float(v) for v in self.spacing)
            if len(sp) != 3 or not all(np.isfinite(v) and v > 0 for v in sp):
                raise InputError(
                    f"spacing {self.spacing!r}: need three positive millimetre values (or native)"
                )
            self.spacing = sp
        if int(self.slice_size) != self.slice_size or not 8 <= self.slice_size <= 2048 or self.slice_size % 8:
            raise InputError(f"slice size {self.slice_size!r}: need a multiple of 8 between 8 and 2048")
        self.slice_size = int(self.slice_size)
        lo, hi = float(self.lower_percentile), float(self.upper_percentile)
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles {lo} {hi}: need 0 <= lower < upper <= 100")
        if not 0 <= float(self.min_mask_fraction) < 1:
            raise InputError(f"min mask fraction {self.min_mask_fraction}: need a value in [0, 1)")
        if self.inference_grid not in ("plan", "native"):
            raise InputError(f"inference grid {self.inference_grid!r}: need 'plan' or 'native'")
        self.clip = bool(self.clip)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(**{k: v for k, v in d.items() if k not in _DESCRIPTIVE})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spacing"] = None if self.spacing is None else [float(s) for s in self.spacing]
        d.update(code_version=PREPROCESS_VERSION, scaling_rule=SCALING_RULE, mask_rule=MASK_RULE)
        return d


def geometric_transforms(cfg: PreprocessConfig, keys: str | list[str] = "image", grid: str = "plan") -> list:
    """The invertible MONAI steps of the plan: canonical orientation, then (``grid="plan"``) resampling
    to ``spacing`` (none when it is None) and pad / crop of the slice plane to ``slice_size``.
    ``grid="native"`` keeps the input's own grid: only the orientation, an exact permutation / flip."""
    steps: list = [Orientationd(keys=keys, axcodes=cfg.axcodes)]
    if grid == "native":
        return steps
    if cfg.spacing is not None:
        steps.append(Spacingd(keys=keys, pixdim=tuple(cfg.spacing), mode="bilinear", padding_mode="zeros"))
    steps.append(ResizeWithPadOrCropd(keys=keys, spatial_size=(-1, cfg.slice_size, cfg.slice_size)))
    return steps


def geometric_transform(cfg: PreprocessConfig, keys: str | list[str] = "image") -> Compose:
    """Invertible MONAI chain of prepare: ``geometric_transforms`` on the plan's grid."""
    return Compose(geometric_transforms(cfg, keys))


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """Head / brain foreground of a 3D volume: Otsu threshold, closing, hole filling, largest
    connected component. Stands in for S4's DeepBrain brain mask (documented in the data guide)."""
    v = np.asarray(volume, dtype=np.float32)
    if not np.any(v > v.min()):
        return np.zeros(v.shape, dtype=bool)
    mask = v > float(otsu_threshold(torch.from_numpy(np.ascontiguousarray(v[::2, ::2, ::2]))))
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask


def otsu_threshold(v: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold from a ``bins``-bin histogram, in torch so that it runs where the volume is."""
    v = v.reshape(-1).float()
    lo, hi = v.min(), v.max()
    hist = torch.histc(v, bins=bins, min=float(lo), max=float(hi))
    centres = lo + (torch.arange(bins, device=v.device, dtype=torch.float32) + 0.5) * (hi - lo) / bins
    w0 = torch.cumsum(hist, 0)
    w1 = w0[-1] - w0
    m0 = torch.cumsum(hist * centres, 0)
    mu0 = m0 / w0.clamp_min(1)
    mu1 = (m0[-1] - m0) / w1.clamp_min(1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return centres[int(torch.argmax(between[:-1]))]


def _quantile(v: torch.Tensor, q: float) -> float:
    v = v.reshape(-1).float()
    if v.numel() > 1 << 24:  # torch.quantile's limit; a regular subsample keeps the estimate exact enough
        v = v[:: -(-v.numel() // (1 << 24))]
    return float(torch.quantile(v, q / 100.0))


def robust_scale(
    volume: torch.Tensor | np.ndarray, lower: float = 0.5, upper: float = 99.5, clip: bool = True
) -> tuple[torch.Tensor, float, float]:
    """Scale to [0, 1] where the volume lives (CPU or GPU): low = ``lower`` percentile of all voxels,
    high = ``upper`` percentile of the voxels above Otsu's threshold (the foreground); clipped to
    [0, 1] unless ``clip`` is False. Returns (scaled float32 tensor, low, high). Prepare and
    inference call this same function. A volume with NaN / Inf voxels or no intensity range raises
    ``InputError``."""
    v = torch.as_tensor(volume).float()
    bad = int((~torch.isfinite(v)).sum())
    if bad:
        raise InputError(f"volume has {bad} NaN or infinite voxel(s)")
    lo = _quantile(v, lower)
    fg = v[v > otsu_threshold(v)]
    hi = _quantile(fg, upper) if fg.numel() else float(v.max())
    if hi <= lo:
        hi = float(v.max())
    if hi <= lo:
        raise InputError(f"volume has no intensity range (every voxel is {float(v.reshape(-1)[0]):g})")
    out = (v - lo) / (hi - lo)
    return (out.clamp_(0.0, 1.0) if clip else out), lo, hi


def relevant_slices(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Indices i along axis 0 whose mask covers at least ``min_fraction`` of the slice."""
    area = mask.reshape(mask.shape[0], -1).mean(axis=1)
    return np.flatnonzero(area >= min_fraction)


def preprocess_volume(image: torch.Tensor, cfg: PreprocessConfig) -> dict:
    """Run the whole chain on a loaded MetaTensor (1, X, Y, Z). Returns a dict with the geometric
    ``data`` dict (for inversion), the scaled volume (X, S, S) float32, mask, relevant slice indices
    and the intensity bounds."""
    data = geometric_transform(cfg)({"image": image})
    scaled_t, lo, hi = robust_scale(
        data["image"][0].detach(), cfg.lower_percentile, cfg.upper_percentile, cfg.clip
    )
    scaled = scaled_t.cpu().numpy()
    mask = foreground_mask(np.clip(scaled, 0, 1) if not cfg.clip else scaled)
    return {
        "data": data,
        "volume": scaled.astype(np.float32),
        "mask": mask,
        "slices": relevant_slices(mask, cfg.min_mask_fraction),
        "intensity_low": lo,
        "intensity_high": hi,
    }
