"""One entry point, :func:`load_volume`, for the volumes the bundles read.

| format | suffix | read through |
|---|---|---|
| NIfTI-1/2 | ``.nii``, ``.nii.gz`` | MONAI ``NibabelReader`` |
| FreeSurfer MGZ | ``.mgz`` | MONAI ``NibabelReader`` |
| NRRD (3D Slicer) | ``.nrrd``, ``.nhdr`` (+ data file) | MONAI ``ITKReader`` (:mod:`mriae.io.itk_formats`) |
| MetaImage (ITK-SNAP) | ``.mha``, ``.mhd`` (+ data file) | MONAI ``ITKReader`` (:mod:`mriae.io.itk_formats`) |
| MINC2 (HDF5) | ``.mnc`` | MONAI ``ITKReader``, RAS world kept (:mod:`mriae.io.itk_formats`) |
| MINC1 (netCDF) | ``.mnc`` | nibabel (:mod:`mriae.io.nibabel_formats`) |
| Philips PAR/REC | ``.par`` (+ ``.rec``) | nibabel (:mod:`mriae.io.nibabel_formats`) |
| DICOM series | a folder | :class:`mriae.io.dicom.DicomSeriesReader` |

MONAI's ``NibabelReader`` only *advertises* ``.nii``/``.nii.gz`` in ``verify_suffix``, but its ``read`` is
``nibabel.load`` which also opens FreeSurfer ``.mgz`` (``MGHImage``, whose ``affine`` is already RAS), so the
reader is passed explicitly and ``.mgz`` files load through the same MONAI path. DICOM folders go through
:class:`mriae.io.dicom.DicomSeriesReader` (series grouping, gap/duplicate/spacing checks, no identifiers
in the metadata; see that module for what MONAI's own DICOM readers lack). Suffixes are matched without
regard to case (``scan.PAR``, ``scan.MHA``).

Every user mistake raises :class:`VolumeReadError` with a one-line ``"<path>: <problem>"`` message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage

from mriae.io.dicom import DicomSeriesReader, read_error
from mriae.io.itk_formats import ItkVolumeReader
from mriae.io.nibabel_formats import NibabelVolumeReader, minc_version

__all__ = ["FORMATS", "VOLUME_SUFFIXES", "load_volume", "volume_format"]

_SUFFIXES = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".mgz": "mgz",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".mnc": "minc",
    ".par": "parrec",
}
VOLUME_SUFFIXES = tuple(_SUFFIXES)
"""File suffixes :func:`load_volume` reads (lower case; a DICOM series is a folder)."""
FORMATS = (*dict.fromkeys(_SUFFIXES.values()), "dicom")
"""Values of ``meta["source_format"]``."""
_DATA_FILES = {  # data files that a header describes: the header is what must be passed
    ".rec": "its .PAR header",
    ".raw": "its .mhd or .nhdr header",
    ".raw.gz": "its .nhdr header",
    ".zraw": "its .mhd header",
}
_EXPECTED = ".nii, .nii.gz, .mgz, .nrrd, .nhdr, .mha, .mhd, .mnc, .par or a DICOM folder"


def volume_format(path: str | Path) -> str | None:
    """The format (one of :data:`FORMATS`; ``"dicom"`` for any directory) from the path alone; None if unknown."""
    p = Path(path)
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    return next((fmt for suffix, fmt in _SUFFIXES.items() if name.endswith(suffix)), None)


def _loader(reader) -> LoadImage:
    """``LoadImage`` returning a channel-first float32 ``MetaTensor``."""
    return LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=np.float32)


def _refuse_complex(path: Path) -> None:
    """MONAI's loader would keep only the real part of complex voxels, silently."""
    import nibabel as nib

    try:
        kind = np.dtype(nib.load(str(path)).get_data_dtype()).kind
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the reader itself
        return
    if kind == "c":
        raise read_error(path, "complex voxels (real and imaginary parts): give the magnitude image")


def _load_nibabel(path: Path, fmt: str) -> MetaTensor:
    """NIfTI / MGZ through MONAI's ``NibabelReader``; nibabel errors become :class:`VolumeReadError`."""
    _refuse_complex(path)
    reader = NibabelReader()
    try:
        img = _loader(reader)(str(path), reader=reader)
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors, ...)
        raise read_error(path, f"cannot read as {fmt} ({type(e).__name__}: {e})") from e
    img.meta["source_format"] = fmt
    return img


def _load_with(path: Path, reader, fmt: str) -> MetaTensor:
    """Load through one of this package's readers (they raise one-line :class:`VolumeReadError`)."""
    img = _loader(reader)(str(path), reader=reader)
    img.meta["source_format"] = fmt
    return img


def _load_minc(path: Path) -> MetaTensor:
    """MINC2 (HDF5) through ITK, MINC1 (netCDF) through nibabel, told apart by the first bytes."""
    version = minc_version(path)
    if version is None:
        raise read_error(path, "not a MINC file (neither a netCDF MINC1 nor an HDF5 MINC2 file)")
    img = _load_with(path, ItkVolumeReader() if version == 2 else NibabelVolumeReader(), "minc")
    img.meta["minc_version"] = version
    return img


def _load_dicom(path: Path, series: str | None) -> MetaTensor:
    """A DICOM folder through :class:`DicomSeriesReader`; ``filename_or_obj`` holds no identifier."""
    reader = DicomSeriesReader(series=series)
    img = _loader(reader)(str(path), reader=reader)
    if series is not None:  # the folder may hold several series: name the chosen one
        img.meta["filename_or_obj"] = str(path / series)
    return img


def load_volume(path: str | Path, series: str | None = None, min_slices: int = 2) -> MetaTensor:
    """Load a 3-D volume as a ``(1, X, Y, Z)`` float32 ``MetaTensor`` with a RAS voxel->world ``.affine``.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.mgz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.mnc`` or
            ``.par`` file, or a folder holding a DICOM series (searched recursively).
        series: for DICOM folders with several series, the key to load (keys come from
            :func:`mriae.io.find_dicom_series` or from the error message listing them).
        min_slices: the fewest voxels along every axis (2 by default: a single slice is not a 3-D
            volume to denoise or train on; 1 reads one-slice data as it is).

    Returns:
        a ``MetaTensor`` whose meta has ``spatial_shape``, ``affine``, ``original_affine``,
        ``filename_or_obj`` (for DICOM: the folder, plus ``/<series key>`` when ``series`` is given)
        and ``source_format`` (one of :data:`FORMATS`).

    Raises:
        VolumeReadError: missing path, unknown suffix, unreadable file, invalid DICOM series or data
            that is not a single 3-D volume.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise read_error(p, "no such file or directory")
    fmt = volume_format(p)
    if fmt is None:
        data_of = next((h for suf, h in _DATA_FILES.items() if p.name.lower().endswith(suf)), None)
        if data_of is not None:
            raise read_error(p, f"this is a data file; pass {data_of} instead")
        raise read_error(
            p, f"unsupported file type {''.join(p.suffixes) or '(no suffix)'!r}; expected {_EXPECTED}"
        )
    if fmt != "dicom" and series is not None:
        raise read_error(p, "series= only applies to DICOM folders")
    if fmt == "dicom":
        img = _load_dicom(p, series)
    elif fmt in ("nifti", "mgz"):
        img = _load_nibabel(p, fmt)
    elif fmt == "minc":
        img = _load_minc(p)
    elif fmt == "parrec":
        img = _load_with(p, NibabelVolumeReader(), fmt)
    else:
        img = _load_with(p, ItkVolumeReader(), fmt)
    if img.ndim != 4 or img.shape[0] != 1:
        raise read_error(p, f"expected a single 3-D volume, got array shape {tuple(img.shape)} (channel first)")
    if min(img.shape[1:]) < min_slices:
        raise read_error(p, f"a single slice (shape {tuple(img.shape[1:])}): need a 3-D volume of at least 2 slices")
    aff = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise read_error(p, "singular or non-finite voxel-to-world affine: the volume cannot be placed in space")
    return img
