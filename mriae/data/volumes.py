"""Datasets over the prepared cache for the volume models (S1's CAE and 3D GAN) and S2's coronal-slab CAE.

Both read the same ``datalist.json`` / ``cache/*.npy`` as ``mriae.data.slices.SliceDataset`` (volumes of
shape (X, 128, 128) in RIA orientation: axis 0 left-right, so ``vol[i]`` is sagittal; axis 2
anterior, so ``vol[:, :, k]`` is a coronal slice) and check the cache checksums the same way.

- ``VolumeDataset``: every volume of a partition, resized once at load to ``size`` (S1: 160x64x64,
  trilinear with anti-aliasing, MONAI's ``Resize``), or padded to an isotropic cube first and
  area-averaged (the 3D GAN), items ``{"image": (1, *size)}``.
- ``CoronalSlabDataset``: S2's data: a slab of middle coronal slices per volume (default the middle
  51, as S2's 78:129 of 207), one global min-max scaling over the training partition (S2 scaled by
  the global min and max; pass the training set's ``intensity_range`` to validation / test), and
  zero-padding (or centred cropping) to ``pad_to`` x ``pad_to`` (S2: 176). Slices keep the cache's
  axis order (left-right x inferior), the same slices ``SliceInferer(spatial_dim=2)`` cuts at
  inference.
- ``RandomAffineBatch``: a trainer's ``prepare_batch`` that moves each training volume of a batch
  by its own random rotation, scaling and translation (input and target alike) on the batch's
  device: the demo cohort's variation (its subjects are one template under random affine and
  elastic warps), so a volume autoencoder trained on 17 volumes sees new poses at every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, ResizeWithPadOrCrop

from mriae.data.slices import IndexedSlices
from mriae.prepare.datalist import partition_records

__all__ = ["VolumeDataset", "CoronalSlabDataset", "RandomAffineBatch", "random_affines"]


class VolumeDataset(torch.utils.data.Dataset):
    """Whole prepared volumes of one partition as one ``(N, 1, *size)`` float32 tensor in [0, 1],
    resized once at load; items ``{"image", "subject", "slice"}`` (``slice`` is -1: the item is a volume).

    Two geometries:
    - the cache's own box resized to ``size`` (S1's volume CAE: 160x64x64; ``mode="trilinear"``, with
      anti-aliasing, MONAI's ``Resize``);
    - ``cube=True``: each axis first centre padded (zeros) or cropped to ``fov_mm`` (default: the
      in-plane field of view, 128 x 1.875 mm), so the cube is isotropic in millimetres, then resized to
      ``size`` cubed (the 3D GAN: 64^3, 3.75 mm voxels, ``voxel_mm``; ``mode="area"``, no aliasing).
    """

    def __init__(
        self,
        datalist: str | Path | Mapping,
        partition: str = "training",
        size: int | Sequence[int] = (160, 64, 64),
        max_subjects: int | None = None,
        expect: Mapping | None = None,
        mode: str = "trilinear",
        cube: bool = False,
        fov_mm: float | None = None,
    ) -> None:
        if mode not in ("trilinear", "area"):
            raise ValueError(f"mode {mode!r} must be 'trilinear' or 'area'")
        dl, root, recs = partition_records(datalist, partition, expect, max_subjects)
        size = (int(size),) * 3 if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        spacing = [float(s) for s in dl["preprocessing"]["spacing"]]
        resize = Resize(spatial_size=size, mode="trilinear", anti_aliasing=True) if mode == "trilinear" else None
        vols, fov = [], None
        for rec in recs:
            vol = torch.from_numpy(np.asarray(np.load(root / rec["image"]), dtype=np.float32))
            if cube:
                fov = fov_mm or vol.shape[1] * spacing[1]
                vol = _pad_or_crop(vol, [round(fov / s) for s in spacing])
            if resize is not None:
                vol = torch.as_tensor(resize(vol[None])).float()
            else:
                vol = F.interpolate(vol[None, None], size=size, mode="area")[0]
            vols.append(vol.clamp_(0, 1))
        self.images = torch.stack(vols)
        self.subjects = [rec["subject"] for rec in recs]
        self.index = [(sid, -1) for sid in self.subjects]  # (subject, slice) as SliceDataset: DeviceBatchLoader
        self.voxel_mm = fov / size[0] if cube else None
        self.preprocessing = dl["preprocessing"]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "subject": self.subjects[i], "slice": -1}

    def middle_slices(self) -> dict[str, int]:
        return {}  # per-case 2D figures do not apply to volumes


def _pad_or_crop(vol: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Centre pad (zeros) or crop each axis to ``shape``."""
    for ax, n in enumerate(shape):
        cur = vol.shape[ax]
        if cur > n:
            vol = vol.narrow(ax, (cur - n) // 2, n)
        elif cur < n:
            pad = [0, 0] * vol.ndim
            before = (n - cur) // 2
            k = 2 * (vol.ndim - 1 - ax)  # F.pad lists the LAST axis first
            pad[k], pad[k + 1] = before, n - cur - before
            vol = F.pad(vol, pad)
    return vol


class CoronalSlabDataset(IndexedSlices):
    """S2's middle coronal slices, globally min-max scaled and padded to ``pad_to`` squared.

    Args:
        datalist: path of ``datalist.json`` (or the loaded dict).
        partition: ``training``, ``validation`` or ``test``.
        n_slices: how many middle coronal slices per volume (S2: 51); or ``slab=(start, stop)``.
        pad_to: output side (S2: 176).
        intensity_range: ``(min, max)`` for the global min-max; None computes it on this partition
            (do that on the training partition and pass ``train_dataset.intensity_range`` on).
    """

    def __init__(
        self,
        datalist: str | Path | Mapping,
        partition: str = "training",
        n_slices: int = 51,
        slab: Sequence[int] | None = None,
        pad_to: int = 176,
        intensity_range: Sequence[float] | None = None,
        max_subjects: int | None = None,
        expect: Mapping | None = None,
    ) -> None:
        dl, root, recs = partition_records(datalist, partition, expect, max_subjects)
        pad = ResizeWithPadOrCrop(spatial_size=(pad_to, pad_to), mode="constant")
        images, index, self.slice_shapes = [], [], {}
        for rec in recs:
            vol = np.load(root / rec["image"], mmap_mode="r")
            self.slice_shapes[rec["subject"]] = (int(vol.shape[0]), int(vol.shape[1]))
            depth = vol.shape[2]
            if slab is not None:
                start, stop = int(slab[0]), int(slab[1])
            else:
                start = max(0, depth // 2 - n_slices // 2)
                stop = min(depth, start + n_slices)
            ks = list(range(start, stop))
            sl = torch.from_numpy(np.asarray(vol[:, :, start:stop], dtype=np.float32)).permute(2, 0, 1)
            images.append(torch.as_tensor(pad(sl)))  # (K, pad_to, pad_to)
            index.extend((rec["subject"], k) for k in ks)
        imgs = torch.cat(images)[:, None]
        if intensity_range is None:
            intensity_range = (float(imgs.min()), float(imgs.max()))
        lo, hi = (float(v) for v in intensity_range)
        self.intensity_range = (lo, hi)
        # the zero padding stays zero only when lo == 0 (true for prepared data, scaled to [0, 1])
        self.images = ((imgs - lo) / max(hi - lo, 1e-8)).clamp_(0, 1)
        self.index = index
        self.preprocessing = dl["preprocessing"]
        self._pad = pad

    def own_pixels(self) -> torch.Tensor:
        """``(N, 1, S, S)`` bool: each slice's own pixels, not the zero padding around them."""
        return torch.stack(
            [torch.as_tensor(self._pad(torch.ones(1, *self.slice_shapes[s]))) > 0.5 for s, _ in self.index]
        )


def random_affines(
    n: int, rotate_deg: float, scale: float, translate: float, generator: torch.Generator, device=None
) -> torch.Tensor:
    """``n`` affine matrices ``(n, 3, 4)`` in ``F.affine_grid``'s normalised coordinates: rotations
    about the three axes each ~ U(-rotate_deg, rotate_deg), per-axis scales ~ U(1 - scale, 1 + scale),
    per-axis shifts ~ U(-translate, translate) (a fraction of the half field of view)."""
    u = torch.rand(n, 9, generator=generator, device=generator.device) * 2 - 1
    u = u.to(device) if device is not None else u
    ang = u[:, :3] * math.radians(rotate_deg)
    c, s = ang.cos(), ang.sin()
    eye = torch.eye(3, device=u.device).expand(n, 3, 3)
    rot = eye.clone()
    for ax in range(3):
        i, j = (k for k in range(3) if k != ax)
        r = eye.clone()
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c[:, ax], -s[:, ax], s[:, ax], c[:, ax]
        rot = rot @ r
    mat = rot @ torch.diag_embed(1 + scale * u[:, 3:6])
    return torch.cat([mat, (translate * u[:, 6:9])[..., None]], dim=2)


class RandomAffineBatch:
    """``prepare_batch(batchdata, device, non_blocking) -> (volumes, volumes)``: each volume of the batch
    resampled (trilinear, zeros outside) under its own random affine (``random_affines``), the same
    volume as input and target. Seeded (``seed``) with a generator on the batch's device, so a run is
    reproducible. ``enabled=False`` returns the batch unchanged (S1's training). MONAI's ``RandAffine``
    does the same one volume at a time on the host; this is one batched ``grid_sample`` where the
    batch lives.

    Defaults follow the demo cohort's own variation (``mriae.prepare.cohort``: rotations up to 8 degrees per
    axis, scales within 8 %, shifts of 4 mm; we shift by up to 5 % of the field of view)."""

    def __init__(
        self,
        rotate_deg: float = 8.0,
        scale: float = 0.08,
        translate: float = 0.05,
        seed: int = 0,
        enabled: bool = True,
        key: str = "image",
    ) -> None:
        self.rotate_deg, self.scale, self.translate = float(rotate_deg), float(scale), float(translate)
        self.seed, self.enabled, self.key = int(seed), bool(enabled), key
        self._gen: torch.Generator | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        x = batchdata[self.key] if isinstance(batchdata, Mapping) else batchdata
        x = torch.as_tensor(x).to(device=device, non_blocking=non_blocking).float()
        if not self.enabled:
            return x, x
        theta = random_affines(
            x.shape[0], self.rotate_deg, self.scale, self.translate, self._generator(x.device), x.device
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return y, y
