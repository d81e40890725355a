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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.transforms import Compose, Orientationd, ResizeWithPadOrCropd, Spacingd
from scipy import ndimage

__all__ = ["PreprocessConfig", "geometric_transform", "robust_scale", "foreground_mask", "relevant_slices"]


@dataclass
class PreprocessConfig:
    """Parameters of the prepare step; recorded in the datalist and checked by later steps."""

    axcodes: str = "RIA"
    spacing: tuple[float, float, float] = (1.2, 1.875, 1.875)
    slice_size: int = 128
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    # S4: keep a slice when its brain mask covers > 3000 px of 256x256 (4.58 %)
    min_mask_fraction: float = 3000 / (256 * 256)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spacing"] = [float(s) for s in self.spacing]
        return d


def geometric_transform(cfg: PreprocessConfig, keys: str | list[str] = "image") -> Compose:
    """Invertible MONAI chain: canonical orientation, resampling, pad/crop of the slice plane."""
    return Compose(
        [
            Orientationd(keys=keys, axcodes=cfg.axcodes),
            Spacingd(keys=keys, pixdim=tuple(cfg.spacing), mode="bilinear", padding_mode="zeros"),
            ResizeWithPadOrCropd(keys=keys, spatial_size=(-1, cfg.slice_size, cfg.slice_size)),
        ]
    )


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """Head / brain foreground of a 3D volume: Otsu threshold, closing, hole filling, largest
    connected component. Stands in for S4's DeepBrain brain mask (documented in the data guide)."""
    from skimage.filters import threshold_otsu

    v = np.asarray(volume, dtype=np.float32)
    if not np.any(v > v.min()):
        return np.zeros(v.shape, dtype=bool)
    mask = v > threshold_otsu(v[::2, ::2, ::2])
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask


def robust_scale(
    volume: np.ndarray, mask: np.ndarray | None, lower: float = 0.5, upper: float = 99.5
) -> tuple[np.ndarray, float, float]:
    """Scale to [0, 1] (clipped): low = ``lower`` percentile of all voxels, high = ``upper``
    percentile of the foreground voxels. Returns (scaled, low, high)."""
    v = np.asarray(volume, dtype=np.float32)
    lo = float(np.percentile(v, lower))
    fg = v[mask] if mask is not None and mask.any() else v
    hi = float(np.percentile(fg, upper))
    if hi <= lo:
        hi = float(v.max())
    if hi <= lo:
        raise ValueError("volume has no intensity range (constant image)")
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0), lo, hi


def relevant_slices(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Indices i along axis 0 whose mask covers at least ``min_fraction`` of the slice."""
    area = mask.reshape(mask.shape[0], -1).mean(axis=1)
    return np.flatnonzero(area >= min_fraction)


def preprocess_volume(image: torch.Tensor, cfg: PreprocessConfig) -> dict:
    """Run the whole chain on a loaded MetaTensor (1, X, Y, Z). Returns a dict with the geometric
    ``data`` dict (for inversion), the scaled volume (X, S, S) float32, mask, relevant slice indices
    and the intensity bounds."""
    data = geometric_transform(cfg)({"image": image})
    vol = data["image"][0].detach().cpu().numpy()
    mask = foreground_mask(vol)
    scaled, lo, hi = robust_scale(vol, mask, cfg.lower_percentile, cfg.upper_percentile)
    return {
        "data": data,
        "volume": scaled.astype(np.float32),
        "mask": mask,
        "slices": relevant_slices(mask, cfg.min_mask_fraction),
        "intensity_low": lo,
        "intensity_high": hi,
    }
