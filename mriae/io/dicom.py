"""DICOM series reading (as a MONAI ``ImageReader``) and writing, with strict geometry checks.

MONAI's own DICOM paths (``ITKReader`` / ``PydicomReader`` on a folder) load whatever the folder holds:
they do not let a user see and choose among several series in one folder, they stack slices even when one
is missing, duplicated or shifted (so the affine silently lies about part of the volume), and they copy
every header element, patient identifiers included, into the metadata that ends up in logs and file
names. This module uses pydicom directly because it reads headers cheaply (``stop_before_pixels``), gives
access to every tag needed to group by ``SeriesInstanceUID`` and to validate positions, and decodes the
compressed transfer syntaxes through the pylibjpeg plugins. Series are named by a hash of their UID, and
only geometry plus the series description ever leave this module.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from mriae.errors import InputError

__all__ = [
    "DicomSeriesReader",
    "VolumeReadError",
    "check_geometry",
    "decimal_string",
    "find_dicom_series",
    "is_dicom_dir",
    "scan_series",
    "slice_pixels",
    "write_dicom_series",
]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_FORCE_SUFFIXES = ("", ".dcm", ".ima", ".dicom")  # preamble-less (old) DICOM files are only tried here
_ORIENT_TOL = 1e-4  # direction cosines
_POS_TOL = 1e-3  # mm


class VolumeReadError(InputError):
    """A volume could not be loaded because of the input; the message is one line ``"<path>: <problem>"``.

    Defined in this module (the lowest of ``mriae.io``) and re-exported by ``mriae.io``.
    """


def read_error(path: str | Path, problem: str) -> VolumeReadError:
    """Build a one-line :class:`VolumeReadError`."""
    return VolumeReadError(f"{path}: " + " ".join(str(problem).split()))


def _mm(x: float) -> str:
    """Format a length in mm for messages."""
    return str(round(float(x), 3))


def series_key(series_uid: str) -> str:
    """Safe, stable name of a series: ``"series-" + sha1(SeriesInstanceUID)[:12]``."""
    return "series-" + hashlib.sha1(str(series_uid).encode()).hexdigest()[:12]


def _read_header(path: Path) -> Dataset | None:
    """Header of an image DICOM file (no pixels), or None for anything else."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if path.suffix.lower() not in _FORCE_SUFFIXES:
            return None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds:
                return None
        except Exception:
            return None
    except Exception:
        return None
    return ds if "SeriesInstanceUID" in ds and "Rows" in ds and "Columns" in ds else None


def scan_series(root: str | Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Headers of all image DICOM files under ``root`` (recursively), grouped by series key."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for f in sorted(Path(root).rglob("*")):
        if not f.is_file():
            continue
        ds = _read_header(f)
        if ds is None:
            logger.debug("skipping non-DICOM file %s", f)
            continue
        groups.setdefault(series_key(ds.SeriesInstanceUID), []).append((f, ds))
    return groups


def find_dicom_series(root: str | Path) -> dict[str, list[Path]]:
    """Group the DICOM image files under ``root`` (recursively) by series; non-DICOM files are ignored.

    Returns:
        ``{series_key: [files sorted by path]}`` with keys from :func:`series_key`.
    """
    return {k: [f for f, _ in v] for k, v in scan_series(root).items()}


def is_dicom_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory holding at least one DICOM image file (searched recursively)."""
    p = Path(path)
    return p.is_dir() and any(f.is_file() and _read_header(f) is not None for f in p.rglob("*"))


def _describe(key: str, items: list[tuple[Path, Dataset]]) -> str:
    """``key (description, N slices, RxC)`` for the series-choice message."""
    ds = items[0][1]
    desc = str(ds.get("SeriesDescription", "") or "no description").replace(",", " ")
    return f"{key} ({desc}, {len(items)} slices, {ds.Columns}x{ds.Rows})"


@dataclass
class DicomSeries:
    """A validated series: slice files in order along the slice normal and the LPS voxel->world affine."""

    root: str
    key: str
    description: str
    files: list[Path]
    affine_lps: np.ndarray

    @property
    def affine_ras(self) -> np.ndarray:
        """Voxel->world affine in RAS+ (MONAI's convention)."""
        return LPS_TO_RAS @ self.affine_lps


def check_geometry(root: str, items: list[tuple[Path, Dataset]]) -> tuple[list[Path], np.ndarray]:
    """Validate one series and return its files sorted along the slice normal and its LPS affine."""
    first = items[0][1]
    for _, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise read_error(
                root,
                f"multi-frame DICOM (NumberOfFrames={ds.NumberOfFrames}) without per-slice "
                "geometry is not supported; convert it with dcm2niix",
            )
        if "MOSAIC" in [str(t).upper() for t in ds.get("ImageType", [])]:
            raise read_error(
                root,
                "Siemens mosaic images (several slices tiled in one frame) are not supported; "
                "convert the series with dcm2niix",
            )
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise read_error(root, "colour (multi-sample) DICOM images are not supported")
        missing = [
            t for t in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing") if t not in ds
        ]
        if missing:
            raise read_error(root, f"slice without {', '.join(missing)}: not a positioned image series")
    iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in items])
    if np.abs(iop - iop[0]).max() > _ORIENT_TOL:
        raise read_error(root, "inconsistent ImageOrientationPatient between slices")
    if len({(int(ds.Rows), int(ds.Columns)) for _, ds in items}) > 1:
        raise read_error(root, "inconsistent matrix size (Rows x Columns) between slices")
    spacing = np.array([[float(v) for v in ds.PixelSpacing] for _, ds in items])
    if np.abs(spacing - spacing[0]).max() > _POS_TOL:
        raise read_error(root, "inconsistent PixelSpacing between slices")
    row, col = iop[0, :3], iop[0, 3:]
    normal = np.cross(row, col)
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    pos, ipp = pos[order], ipp[order]
    files = [items[i][0] for i in order]
    if len(files) == 1:
        dz = float(first.get("SliceThickness", 0) or 1.0)
    else:
        dz = _check_spacing(root, pos, [items[i][1].get("InstanceNumber", "?") for i in order])
        drift = (ipp[-1] - ipp[0]) - (pos[-1] - pos[0]) * normal
        if np.linalg.norm(drift) > 0.01 * dz * (len(pos) - 1) + _POS_TOL:
            raise read_error(root, "slices are not stacked along the slice normal (gantry tilt / sheared series)")
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[0, 1]  # array axis 0 runs along a row (column index)
    affine[:3, 1] = col * spacing[0, 0]  # array axis 1 runs down a column (row index)
    affine[:3, 2] = normal * dz
    affine[:3, 3] = ipp[0]
    return files, affine


def _check_spacing(root: str, pos: np.ndarray, instances: Sequence) -> float:
    """Refuse duplicated, missing and unevenly spaced slices; return the slice spacing (median, mm)."""
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < _POS_TOL)
    if dup.size:
        i = int(dup[0])
        raise read_error(
            root,
            f"duplicated slice position {_mm(pos[i])} mm (instances {instances[i]} and "
            f"{instances[i + 1]}); {dup.size + 1} slices share a position",
        )
    dz = float(np.median(gaps))
    big = np.flatnonzero(gaps > 1.5 * dz)
    if big.size:
        i = int(big[0])
        raise read_error(
            root,
            f"missing slice between positions {_mm(pos[i])} and {_mm(pos[i + 1])} mm (spacing {_mm(dz)} mm)",
        )
    dev = np.abs(gaps - dz)
    if dev.max() > max(0.01 * dz, _POS_TOL):
        i = int(np.argmax(dev))
        raise read_error(
            root,
            f"uneven slice spacing: {_mm(gaps[i])} mm between positions {_mm(pos[i])} and "
            f"{_mm(pos[i + 1])} mm, median spacing {_mm(dz)} mm",
        )
    return dz


def slice_pixels(root: str, path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Rescaled pixels of one slice, transposed to (columns, rows) = (axis 0, axis 1)."""
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise read_error(root, f"{Path(path).name}: no pixel data (the PixelData element is missing)")
    try:
        arr = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as e:  # missing decoder plugin, truncated or corrupt pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        raise read_error(root, f"cannot decode pixel data ({syntax}): {type(e).__name__}") from None
    if arr.shape != shape:
        raise read_error(root, f"pixel data of shape {arr.shape} where the header says {shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    return (arr * slope + float(ds.get("RescaleIntercept", 0) or 0)).T


class DicomSeriesReader(ImageReader):
    """MONAI ``ImageReader`` for one positioned DICOM series in a folder (searched recursively).

    Usage: ``LoadImage(reader=DicomSeriesReader(), image_only=True, ensure_channel_first=True)(folder)``.
    Array axes follow the affine: axis 0 along ImageOrientationPatient[:3] (column index), axis 1 along
    ImageOrientationPatient[3:] (row index), axis 2 in increasing position along the slice normal.
    Rescale slope/intercept are applied. Series are validated (see ``check_geometry``), and failures raise
    :class:`VolumeReadError` (note that ``LoadImage`` wraps reader errors unless the reader is passed at
    call time, ``loader(folder, reader=r)``, as :func:`mriae.io.load_volume` does).

    Args:
        series: key (from :func:`find_dicom_series`) of the series to load; required when the folder
            holds several.
    """

    def __init__(self, series: str | None = None) -> None:
        super().__init__()
        self.series = series

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """True for a single directory path (DICOM series are read from folders)."""
        names = ensure_tuple(filename)
        return len(names) == 1 and Path(names[0]).is_dir()

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs) -> DicomSeries:
        """Scan the folder, choose the series, validate its geometry; pixels are read in ``get_data``."""
        names = ensure_tuple(data)
        if len(names) != 1:
            raise VolumeReadError(f"{names}: DicomSeriesReader reads one folder at a time")
        root = str(names[0])
        if not Path(root).is_dir():
            raise read_error(root, "not a directory; pass the folder that holds the DICOM series")
        groups = scan_series(root)
        if not groups:
            raise read_error(root, "no DICOM image files found")
        listing = "; ".join(_describe(k, v) for k, v in groups.items())
        if self.series is None and len(groups) > 1:
            raise read_error(root, f"{len(groups)} DICOM series found, choose one with series=: {listing}")
        key = self.series if self.series is not None else next(iter(groups))
        if key not in groups:
            raise read_error(root, f"no series {key!r}; available: {listing}")
        files, affine = check_geometry(root, groups[key])
        desc = str(groups[key][0][1].get("SeriesDescription", "") or "")
        return DicomSeries(root=root, key=key, description=desc, files=files, affine_lps=affine)

    def get_data(self, img: DicomSeries) -> tuple[np.ndarray, dict]:
        """Decode the slices into an (X, Y, Z) float32 array and build identifier-free metadata."""
        hdr = pydicom.dcmread(img.files[0], stop_before_pixels=True)
        shape = (int(hdr.Rows), int(hdr.Columns))
        data = np.stack([slice_pixels(img.root, f, shape) for f in img.files], axis=-1).astype(np.float32)
        affine = img.affine_ras
        meta = {
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "spacing": np.linalg.norm(affine[:3, :3], axis=0),
            "source_format": "dicom",
            "series_key": img.key,
            "series_description": img.description,
            "modality": str(hdr.get("Modality", "")),
        }
        return data, meta


def decimal_string(x: float) -> DSfloat:
    """A float as a valid (16-character) DICOM decimal string."""
    return DSfloat(float(x), auto_format=True)


def _int16_scaling(volume: np.ndarray, rescale: bool) -> tuple[float, float]:
    """(slope, intercept) mapping ``volume`` onto int16 stored values."""
    if not rescale:
        if not np.array_equal(volume, np.round(volume)) or volume.min() < -32768 or volume.max() > 32767:
            raise ValueError("rescale=False needs integer values within the int16 range")
        return 1.0, 0.0
    lo, hi = float(volume.min()), float(volume.max())
    slope = (hi - lo) / 65534.0 if hi > lo else 1.0
    return slope, (hi + lo) / 2.0


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    patient_name: str = "Anonymous^Test",
    patient_id: str = "TEST0001",
    series_description: str = "T1 from template",
    series_uid: str | None = None,
    study_uid: str | None = None,
    rescale: bool = True,
    image_type: Sequence[str] = ("DERIVED", "SECONDARY"),
    modality: str = "MR",
) -> list[Path]:
    """Write ``volume`` (X, Y, Z) as a positioned MR Image Storage series, one file per slice along axis 2.

    Pixels are int16 with RescaleSlope/Intercept (global, so float data round-trips to ~1e-5 of its
    range); ``affine`` is the RAS voxel->world affine (nibabel/MONAI) and is converted to LPS for the
    tags. Files are explicit VR little endian with valid file meta, named ``slice_0001.dcm``, ...
    ``image_type`` (default ``DERIVED\\SECONDARY``) and ``modality`` (default ``MR``) set ImageType and
    Modality, e.g. ``("ORIGINAL", "PRIMARY")`` to write what looks like an acquired series.

    Note: readers (this one, ITK, dcm2niix) order slices along the normal ``row x col``; when axis 2 of
    ``affine`` points the other way the series reads back with axis 2 reversed (same world geometry).

    Returns:
        the written files, in axis-2 order.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D (X, Y, Z), got shape {vol.shape}")
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    steps = np.linalg.norm(lps[:3, :3], axis=0)
    row, col, slc = (lps[:3, i] / steps[i] for i in range(3))
    normal = np.cross(row, col)
    if abs(row @ col) > _ORIENT_TOL or np.linalg.norm(np.cross(slc, normal)) > _ORIENT_TOL:
        raise ValueError("affine must have orthogonal axes (no shear) to be written as DICOM")
    slope, intercept = _int16_scaling(vol, rescale)
    stored = np.clip(np.round((vol - intercept) / slope), -32768, 32767).astype(np.int16)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = (
        series_uid or generate_uid(),
        study_uid or generate_uid(),
        generate_uid(),
    )
    centre = (float(vol.max()) + float(vol.min())) / 2
    paths = []
    for k in range(vol.shape[2]):
        ipp = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20000101", "000000", "1", ""
        ds.ReferringPhysicianName, ds.PositionReferenceIndicator = "", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = modality, "mriae", 1, k + 1
        ds.SeriesDescription, ds.ImageType = series_description, [str(t) for t in image_type]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
        ds.ImagePositionPatient = [decimal_string(v) for v in ipp]
        ds.ImageOrientationPatient = [decimal_string(v) for v in (*row, *col)]
        ds.PixelSpacing = [decimal_string(steps[1]), decimal_string(steps[0])]  # [between rows, between columns]
        ds.SliceThickness = ds.SpacingBetweenSlices = decimal_string(steps[2])
        ds.SliceLocation = decimal_string(ipp @ normal)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = decimal_string(slope), decimal_string(intercept), "US"
        ds.WindowCenter, ds.WindowWidth = decimal_string(centre), decimal_string(max(float(vol.max() - vol.min()), 1.0))
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
            MRImageStorage,
            ds.SOPInstanceUID,
        )
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.preamble = b"\0" * 128
        path = out / f"slice_{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
