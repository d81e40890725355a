"""Data for the GAN bundles: whole prepared volumes for the 3D GAN, and generated samples to NIfTI.

``VolumeDataset`` reads the prepared datalist's ``cache/*.npy`` volumes (``(X, 128, 128)`` float16,
RIA: axis 0 left-right at the prepared sagittal spacing, axes 1-2 the 240 mm in-plane field of view
at 1.875 mm), pads or crops axis 0 to the same 240 mm (so the cube is isotropic in millimetres),
and resizes to ``size^3`` with area averaging (no aliasing), once, at load. 64^3 gives 3.75 mm
voxels. ``write_samples`` is the GAN bundles' inference: it draws seeded latents, runs the
generator and writes each sample as NIfTI with an RIA affine at the sample's voxel size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mriae.prepare.datalist import DatalistError, load_datalist

__all__ = ["VolumeDataset", "write_samples", "ria_affine"]


class VolumeDataset(torch.utils.data.Dataset):
    """All volumes of one partition as one ``(N, 1, S, S, S)`` float32 tensor in [0, 1].

    Items are ``{"image": (1, S, S, S), "subject": str}``. ``fov_mm`` (default: the in-plane field of
    view, 128 x 1.875 mm) is the cube's side before resizing."""

    def __init__(
        self,
        datalist: str | Path | Mapping,
        partition: str = "training",
        size: int = 64,
        max_subjects: int | None = None,
        fov_mm: float | None = None,
    ) -> None:
        dl = datalist if isinstance(datalist, Mapping) else load_datalist(datalist)
        root = Path(dl["_root"])
        records = dl[partition][:max_subjects] if max_subjects else dl[partition]
        if not records:
            raise DatalistError(f"{root / 'datalist.json'}: partition '{partition}' is empty")
        spacing = [float(s) for s in dl["preprocessing"]["spacing"]]
        vols = []
        for rec in records:
            vol = torch.from_numpy(np.asarray(np.load(root / rec["image"]), dtype=np.float32))
            fov = fov_mm or vol.shape[1] * spacing[1]
            vol = _pad_or_crop(vol, [round(fov / s) for s in spacing])
            vol = F.interpolate(vol[None, None], size=(size,) * 3, mode="area")[0]
            vols.append(vol.clamp_(0, 1))
        self.images = torch.stack(vols)
        self.subjects = [rec["subject"] for rec in records]
        self.voxel_mm = (fov_mm or 128 * spacing[1]) / size

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "subject": self.subjects[i]}


def _pad_or_crop(vol: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Centre pad (zeros) or crop each axis to ``shape``."""
    for ax, n in enumerate(shape):
        cur = vol.shape[ax]
        if cur > n:
            start = (cur - n) // 2
            vol = vol.narrow(ax, start, n)
        elif cur < n:
            pad = [0, 0] * vol.ndim
            before = (n - cur) // 2
            # F.pad lists the LAST axis first
            k = 2 * (vol.ndim - 1 - ax)
            pad[k], pad[k + 1] = before, n - cur - before
            vol = F.pad(vol, pad)
    return vol


def ria_affine(voxel_mm: float, shape) -> np.ndarray:
    """Affine of an RIA-stored array (axis 0 -> +x right, axis 1 -> -z inferior, axis 2 -> +y
    anterior), centred on the origin."""
    a = np.zeros((4, 4))
    a[0, 0], a[2, 1], a[1, 2], a[3, 3] = voxel_mm, -voxel_mm, voxel_mm, 1.0
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    a[:3, 3] = -a[:3, :3] @ centre
    return a


def write_samples(
    generator: torch.nn.Module,
    n_samples: int,
    output_dir: str,
    latent_size: int = 200,
    voxel_mm: float = 3.75,
    seed: int = 0,
    device: str | torch.device = "cpu",
    prefix: str = "sample",
) -> list[str]:
    """Generate ``n_samples`` from ``N(0, I)`` latents drawn with ``seed`` and write each as
    ``<prefix>_NNN.nii.gz`` in ``output_dir`` (2D samples as one-slice sagittal volumes ``(1, H, W)``,
    3D samples as ``(D, H, W)``), intensities in [0, 1]. Returns the paths."""
    import nibabel as nib

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    z = torch.randn(n_samples, latent_size, generator=torch.Generator().manual_seed(seed))
    generator.eval()
    paths = []
    with torch.no_grad():
        for i, zi in enumerate(z):
            x = generator(zi[None].to(device))[0, 0].float().cpu().numpy()
            arr = x[None] if x.ndim == 2 else x
            p = out / f"{prefix}_{i:03d}.nii.gz"
            img = nib.Nifti1Image(arr.astype(np.float32), ria_affine(voxel_mm, arr.shape))
            img.header.set_xyzt_units("mm")
            nib.save(img, p)
            paths.append(str(p))
    print(f"wrote {len(paths)} generated samples to {out}", flush=True)
    return paths
