"""MINC1 (``.mnc``, netCDF) and Philips PAR/REC (``.par`` + ``.rec``) through nibabel, as a MONAI reader.

MONAI's ``NibabelReader`` cannot be used for them: it builds the metadata with ``dict(img.header)`` and
reads the shape from the header's ``dim``, which ``Minc1Header`` and ``PARRECHeader`` do not have
(``AttributeError: 'PARRECHeader' object has no attribute 'get'``); the PAR header would also carry the
patient name into the metadata. nibabel itself looks for the REC file only with the case of the PAR
suffix (``x.PAR`` -> ``x.REC``), while exports mix cases. :class:`NibabelVolumeReader` loads the image
with nibabel and keeps only geometry.

Choices:
- PAR/REC intensities are nibabel's default ``scaling="dv"`` (the displayed value ``PV * RS + RI``, what
  the scanner console and DICOM export show); the affine is nibabel's scanner-based one
  (``origin="scanner"``, the same frame as the DICOM patient coordinates).
- A PAR/REC holding several volumes (dynamics, echoes, image types such as magnitude and phase) is
  refused with the count: a denoiser reads one 3-D volume.
- MINC2 (HDF5) goes through ITK (:mod:`mriae.io.itk_formats`), which the project installs; nibabel would
  need h5py, which it does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from mriae.io.dicom import VolumeReadError, read_error

__all__ = ["NibabelVolumeReader", "find_rec", "minc_version"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02")


def minc_version(path: str | Path) -> int | None:
    """1 for MINC1 (netCDF), 2 for MINC2 (HDF5), None for neither, from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head == _HDF5_MAGIC:
        return 2
    return 1 if head[:4] in _NETCDF_MAGIC else None


def find_rec(par: str | Path) -> Path:
    """The REC data file beside a PAR header, whatever the case of its suffix.

    Raises:
        VolumeReadError: no ``<stem>.rec`` (any case) beside the header.
    """
    p = Path(par)
    for name in sorted(q.name for q in p.parent.iterdir()):
        if name.lower() == p.stem.lower() + ".rec" and (p.parent / name).is_file():
            return p.parent / name
    raise read_error(p, f"no REC data file beside the PAR header (looked for {p.stem}.REC in any case)")


def _load(path: Path, fmt: str):
    """The nibabel image of a MINC1 file or a PAR/REC pair; nibabel errors become one line."""
    try:
        if fmt == "parrec":
            with open(path, "rb") as f:
                if b"DATA DESCRIPTION FILE" not in f.read(4096):
                    raise read_error(path, "not a Philips PAR header (no '# === DATA DESCRIPTION FILE' line)")
            rec = find_rec(path)
            file_map = nib.parrec.PARRECImage.filespec_to_file_map(str(path))
            file_map["image"].filename = str(rec)
            return nib.parrec.PARRECImage.from_file_map(file_map)
        return nib.minc1.Minc1Image.from_filename(str(path))
    except VolumeReadError:
        raise
    except Exception as e:  # nibabel raises PARRECError, KeyError, ValueError, OSError, ...
        name = "PAR/REC" if fmt == "parrec" else "MINC1"
        raise read_error(path, f"cannot read as {name} ({type(e).__name__}: {e})") from None


class NibabelVolumeReader(ImageReader):
    """MONAI ``ImageReader`` for one MINC1 file or one PAR/REC pair (given by its ``.par`` header).

    Usage: ``LoadImage(reader=NibabelVolumeReader(), image_only=True, ensure_channel_first=True)(path)``.
    The array keeps the file's voxel order and ``affine`` is nibabel's RAS voxel->world affine.
    """

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """True for a single ``.mnc`` or ``.par`` file."""
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return len(names) == 1 and Path(names[0]).suffix.lower() in (".mnc", ".par")

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs):
        """Open the image with nibabel (pixels are read in ``get_data``)."""
        path = Path(data if isinstance(data, (str, Path)) else data[0])
        fmt = "parrec" if path.suffix.lower() == ".par" else "minc"
        img = _load(path, fmt)
        # PAR/REC puts the volumes last (x, y, z, n); MINC puts time / vector dimensions first
        extra = img.shape[3:] if fmt == "parrec" else img.shape[:-3]
        if int(np.prod(extra)) > 1:
            what, how = (
                (
                    "dynamics, echoes or image types",
                    "convert it (dcm2niix or nibabel's parrec2nii) and pass one",
                )
                if fmt == "parrec"
                else ("frames", "extract one first (minc-toolkit's mincreshape)")
            )
            raise read_error(
                path,
                f"holds {int(np.prod(extra))} volumes ({what}; array shape {img.shape}); a single 3-D "
                f"volume is needed: {how}",
            )
        return path, img, fmt

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Voxel values as float32 and geometry-only metadata."""
        path, image, fmt = img
        spatial = image.shape[:3] if fmt == "parrec" else image.shape[-3:]
        try:
            data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(spatial)
        except Exception as e:  # truncated REC / netCDF data
            raise read_error(path, f"cannot read the voxel data ({type(e).__name__}: {e})") from None
        affine = np.asarray(image.affine, dtype=np.float64)
        meta = {
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "spacing": np.linalg.norm(affine[:3, :3], axis=0),
        }
        return data, meta
