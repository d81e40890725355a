"""One entry point, :func:`load_volume`, for the volumes the bundles read: NIfTI, MGZ and DICOM folders.

NIfTI and MGZ go through MONAI's ``LoadImage`` with ``NibabelReader``. MONAI's ``NibabelReader`` only
*advertises* ``.nii``/``.nii.gz`` in ``verify_suffix``, but its ``read`` is ``nibabel.load`` which also
opens FreeSurfer ``.mgz`` (``MGHImage``, whose ``affine`` is already RAS), so the reader is passed
explicitly and ``.mgz`` files load through the same MONAI path. DICOM folders go through
:class:`mriae.io.dicom.DicomSeriesReader` (series grouping, gap/duplicate/spacing checks, no identifiers
in the metadata; see that module for what MONAI's own DICOM readers lack).

Every user mistake raises :class:`VolumeReadError` with a one-line ``"<path>: <problem>"`` message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage

from mriae.io.dicom import DicomSeriesReader, _fail

__all__ = ["load_volume", "volume_format"]

_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".mgz": "mgz"}


def volume_format(path: str | Path) -> str | None:
    """``"nifti"``, ``"mgz"`` or ``"dicom"`` (any directory) from the path alone; None if unknown."""
    p = Path(path)
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    return next((fmt for suffix, fmt in _SUFFIXES.items() if name.endswith(suffix)), None)


def _loader(reader) -> LoadImage:
    """``LoadImage`` returning a channel-first float32 ``MetaTensor``."""
    return LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=np.float32)


def _load_nibabel(path: Path, fmt: str) -> MetaTensor:
    """NIfTI / MGZ through MONAI's ``NibabelReader``; nibabel errors become :class:`VolumeReadError`."""
    reader = NibabelReader()
    try:
        img = _loader(reader)(str(path), reader=reader)
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors, ...)
        raise _fail(path, f"cannot read as {fmt} ({type(e).__name__}: {e})") from e
    img.meta["source_format"] = fmt
    return img


def _load_dicom(path: Path, series: str | None) -> MetaTensor:
    """A DICOM folder through :class:`DicomSeriesReader`; ``filename_or_obj`` holds no identifier."""
    reader = DicomSeriesReader(series=series)
    img = _loader(reader)(str(path), reader=reader)
    if series is not None:  # the folder may hold several series: name the chosen one
        img.meta["filename_or_obj"] = str(path / series)
    return img


def load_volume(path: str | Path, series: str | None = None) -> MetaTensor:
    """Load a 3-D volume as a ``(1, X, Y, Z)`` float32 ``MetaTensor`` with a RAS voxel->world ``.affine``.

    Args:
        path: a ``.nii``, ``.nii.gz`` or ``.mgz`` file, or a folder holding a DICOM series (searched
            recursively).
        series: for DICOM folders with several series, the key to load (keys come from
            :func:`mriae.io.find_dicom_series` or from the error message listing them).

    Returns:
        a ``MetaTensor`` whose meta has ``spatial_shape``, ``affine``, ``original_affine``,
        ``filename_or_obj`` (for DICOM: the folder, plus ``/<series key>`` when ``series`` is given)
        and ``source_format`` (``"nifti"``, ``"mgz"`` or ``"dicom"``).

    Raises:
        VolumeReadError: missing path, unknown suffix, unreadable file, invalid DICOM series or data
            that is not a single 3-D volume.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise _fail(p, "no such file or directory")
    fmt = volume_format(p)
    if fmt is None:
        raise _fail(
            p,
            f"unsupported file type {''.join(p.suffixes) or '(no suffix)'!r}; expected .nii, "
            ".nii.gz, .mgz or a DICOM folder",
        )
    if fmt != "dicom" and series is not None:
        raise _fail(p, "series= only applies to DICOM folders")
    img = _load_dicom(p, series) if fmt == "dicom" else _load_nibabel(p, fmt)
    if img.ndim != 4 or img.shape[0] != 1:
        raise _fail(p, f"expected a single 3-D volume, got array shape {tuple(img.shape)} (channel first)")
    return img
