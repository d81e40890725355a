"""Generated samples to NIfTI: ``write_samples`` is the GAN bundles' inference: it draws seeded
latents, runs the generator and writes each sample as NIfTI with an RIA affine (``ria_affine``) at
the sample's voxel size. The 3D GAN's real volumes are ``mriae.data.volumes.VolumeDataset(cube=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


__all__ = ["write_samples", "ria_affine"]


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
