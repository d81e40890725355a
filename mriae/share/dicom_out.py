"""DICOM in, DICOM out: pick the acquisition series of a study, hand its volume to a network as NIfTI,
and write the network's results back as DICOM that files into the patient's study.

Typical run (``study`` a folder of DICOM files, ``out`` the run's output folder)::

    import nibabel as nib
    from mriae.share import dicom_out as dout

    sel = dout.select_series(study)                        # or select_series(study, series_uid=uid)
    vol, affine_lps = dout.series_volume(sel)              # (slices, rows, cols) float32, real-world values
    nib.save(dout.series_nifti(sel, vol), out / "input.nii.gz")   # overlays the series exactly
    ...                                                    # the network writes out/"denoised.nii.gz"
    img = nib.load(out / "denoised.nii.gz")
    den = dout.volume_on_series_grid(sel, img.get_fdata(), img.affine, name="denoised.nii.gz")
    anon = dout.make_deidentifier() if identity == "research" else None   # ONE per run, shared
    files = dout.write_derived_series(sel, den, out, bundle_name=name, bundle_version=version,
                                      identity=identity, anonymizer=anon)   # out/denoised/IM_0001.dcm ...
    pmap = dout.write_parametric_map(sel, vol - den, out, bundle_name=name, bundle_version=version,
                                     identity=identity, anonymizer=anon)    # out/residual_pmap.dcm

Conventions:

* Series arrays are indexed ``(slice, row, col)``: slices in increasing position along the slice normal
  ``row_cosine x col_cosine`` (ImageOrientationPatient), rows and columns as in the DICOM pixel matrix.
* NIfTI arrays (:func:`series_nifti`, :func:`ras_affine_xyz`) are indexed ``(col, row, slice)``, i.e. the
  series array transposed, with a RAS+ affine: the same layout as :class:`mriae.io.dicom.DicomSeriesReader`
  and dcm2niix-style readers, so MONAI/nibabel tools see the usual ``x, y, z`` order.
* ``identity="clinic"`` keeps the patient and study identifiers of the source so the outputs file back
  into the patient's study; ``identity="research"`` de-identifies every output with ``dicognito`` (a
  maintained implementation of the DICOM PS3.15 basic application confidentiality profile) through one
  :class:`Deidentifier` that all writers of a run share, so the derived series and the parametric map
  keep one (new) patient, study and frame of reference.
* Messages (errors, logs) and file names never carry patient identifiers: series are named by their
  number and description, files ``denoised/IM_0001.dcm`` and ``residual_pmap.dcm``.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mriae.errors import InputError, MissingFileError
from mriae.files import atomic_write
from mriae.io.dicom import (
    LPS_TO_RAS,
    VolumeReadError,
    check_geometry,
    decimal_string,
    scan_series,
    slice_pixels,
)

__all__ = [
    "SelectedSeries",
    "Deidentifier",
    "select_series",
    "series_volume",
    "ras_affine_xyz",
    "series_nifti",
    "volume_on_series_grid",
    "make_deidentifier",
    "write_derived_series",
    "write_parametric_map",
    "DERIVED_DIR",
    "PMAP_NAME",
]

logger = logging.getLogger(__name__)

DERIVED_DIR = "denoised"  # write_derived_series writes out_dir/denoised/IM_0001.dcm, ...
PMAP_NAME = "residual_pmap.dcm"  # write_parametric_map writes out_dir/residual_pmap.dcm
GRID_TOL_MM = 1e-3
_EXCLUDED_IMAGE_TYPES = ("DERIVED", "SECONDARY")
_IDENTITIES = ("clinic", "research")

# Attributes copied from the source slice: Patient, Clinical Trial Subject, General Study, Patient Study,
# Frame of Reference, and the MR acquisition parameters that describe the image contrast (Type 1/2 of
# the MR Image module). SpecificCharacterSet first so the copied strings keep their encoding.
_COPY_PATIENT_STUDY = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "PatientAge", "PatientSize", "PatientWeight",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
)
_COPY_SERIES_ACQ = (
    "BodyPartExamined", "PatientPosition", "Laterality",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName",
    "RepetitionTime", "EchoTime", "InversionTime", "EchoTrainLength", "FlipAngle", "NumberOfAverages",
    "ImagingFrequency", "ImagedNucleus", "MagneticFieldStrength",
    "AcquisitionDate", "AcquisitionTime", "AcquisitionNumber",
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_error(where: str | Path, problem: str) -> InputError:
    """One-line :class:`InputError` ``"<where>: <problem>"``."""
    return InputError(_one_line(f"{where}: {problem}"))


def _lo(text: str, limit: int = 64) -> str:
    """Clip a string to a VR length limit (LO: 64 characters)."""
    return str(text)[:limit]


# --------------------------------------------------------------------------------------------- selection


@dataclass
class SelectedSeries:
    """The acquisition series chosen for a run.

    Attributes:
        uid: SeriesInstanceUID.
        files: slice files in increasing position along the slice normal ``row x col`` cosines.
        headers: their headers (pydicom Datasets read without pixel data), same order.
        description: SeriesDescription ("" when absent).
        affine_lps: 4x4 map of index ``(slice, row, col)`` to patient LPS coordinates in mm.
        study_dir: the folder the series was found in (for messages).
    """

    uid: str
    files: list[Path]
    headers: list[Dataset]
    description: str
    affine_lps: np.ndarray = field(repr=False)
    study_dir: Path = Path(".")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, cols)``."""
        return len(self.files), int(self.headers[0].Rows), int(self.headers[0].Columns)

    @property
    def label(self) -> str:
        """Identifier-free name for messages: ``series <number> '<description>'``."""
        return _series_label(self.headers[0])


def _series_label(ds: Dataset) -> str:
    number = ds.get("SeriesNumber", None)
    desc = _one_line(ds.get("SeriesDescription", "") or "") or "no description"
    return f"series {number if number not in (None, '') else '?'} '{desc}'"


def _rejection(items: list[tuple[Path, Dataset]], min_slices: int) -> tuple[str | None, list, np.ndarray | None]:
    """Why a series is not an acquisition candidate (None if it is), its sorted items and LPS affine."""
    modalities = sorted({str(ds.get("Modality", "") or "none") for _, ds in items})
    if modalities != ["MR"]:
        return f"modality {'/'.join(modalities)}, not MR", items, None
    types = {t.strip().upper() for _, ds in items for t in (ds.get("ImageType", None) or [])}
    bad = [t for t in _EXCLUDED_IMAGE_TYPES if t in types]
    if bad:
        return f"ImageType {'/'.join(bad)} (not an acquired image)", items, None
    multi = [ds for _, ds in items if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        return f"{len(multi)} multi-frame instance(s): only single-frame series are supported", items, None
    if len(items) < min_slices:
        return f"only {len(items)} slice(s), fewer than {min_slices}", items, None
    try:
        files, affine = check_geometry("geometry", items)
    except VolumeReadError as e:
        return _one_line(str(e).split(": ", 1)[-1]), items, None
    by_file = {f: ds for f, ds in items}
    ordered = [(f, by_file[f]) for f in files]
    affine_lps = affine[:, [2, 1, 0, 3]]  # (col, row, slice) -> (slice, row, col)
    return None, ordered, affine_lps


def _listing(ds: Dataset, n: int) -> str:
    return (
        f"SeriesInstanceUID {ds.SeriesInstanceUID} (SeriesNumber {ds.get('SeriesNumber', '?')}, "
        f"'{_one_line(ds.get('SeriesDescription', '') or '') or 'no description'}', {n} slices)"
    )


def select_series(study_dir: str | Path, series_uid: str | None = None, min_slices: int = 8) -> SelectedSeries:
    """Choose the acquisition series of a DICOM study (MONAI Deploy-style series selection).

    All files under ``study_dir`` are scanned (recursively, headers only). A series is a candidate when
    its Modality is MR, no instance has DERIVED or SECONDARY in ImageType, it holds at least
    ``min_slices`` single-frame instances, and its geometry is consistent (one orientation, matrix and
    pixel spacing; evenly spaced slices along the normal, none missing or duplicated).

    Args:
        study_dir: folder holding the study.
        series_uid: SeriesInstanceUID to use (the ``--series`` option); it must be a candidate.
        min_slices: fewest slices a candidate may have.

    Raises:
        MissingFileError: ``study_dir`` does not exist.
        InputError: no DICOM images; no candidate (the message gives each series' reason); several
            candidates and no ``series_uid`` (the message lists them); ``series_uid`` absent or unsuitable.
    """
    root = Path(study_dir)
    if not root.exists():
        raise MissingFileError(f"{root}: study folder does not exist")
    if not root.is_dir():
        raise read_error(root, "not a folder; pass the folder that holds the DICOM study")
    groups = scan_series(root)
    if not groups:
        raise read_error(root, "no DICOM image files found")
    candidates: list[SelectedSeries] = []
    rejected: list[tuple[str, str, str]] = []  # (uid, label, reason)
    for items in groups.values():
        reason, ordered, affine_lps = _rejection(items, min_slices)
        first = ordered[0][1]
        if reason is not None:
            rejected.append((str(first.SeriesInstanceUID), _series_label(first), reason))
            continue
        candidates.append(
            SelectedSeries(
                uid=str(first.SeriesInstanceUID),
                files=[f for f, _ in ordered],
                headers=[ds for _, ds in ordered],
                description=str(first.get("SeriesDescription", "") or ""),
                affine_lps=affine_lps,
                study_dir=root,
            )
        )
    reasons = "; ".join(f"{label}: {reason}" for _, label, reason in rejected)
    if series_uid is not None:
        uid = str(series_uid).strip()
        for c in candidates:
            if c.uid == uid:
                return c
        for r_uid, label, reason in rejected:
            if r_uid == uid:
                raise read_error(root, f"series {uid} ({label.split(' ', 1)[1]}) is not usable: {reason}")
        listing = "; ".join(_listing(c.headers[0], len(c.files)) for c in candidates) or "none"
        raise read_error(root, f"no series with SeriesInstanceUID {uid}; usable series: {listing}")
    if not candidates:
        raise read_error(root, f"no usable MR acquisition series ({len(rejected)} series rejected: {reasons})")
    if len(candidates) > 1:
        listing = "; ".join(_listing(c.headers[0], len(c.files)) for c in candidates)
        raise read_error(
            root,
            f"{len(candidates)} usable MR acquisition series, choose one with --series UID: {listing}",
        )
    sel = candidates[0]
    logger.info("selected %s (%d slices)", sel.label, len(sel.files))
    return sel


# --------------------------------------------------------------------------------------------- volumes


def series_volume(sel: SelectedSeries) -> tuple[np.ndarray, np.ndarray]:
    """Decode the series.

    Returns:
        ``(volume, affine_lps)``: float32 ``(slices, rows, cols)`` real-world values (each slice's
        RescaleSlope/Intercept applied) and the 4x4 map of index ``(slice, row, col)`` to LPS mm.

    Raises:
        InputError: a slice without pixel data, undecodable, or of the wrong size.
    """
    _, rows, cols = sel.shape
    slices = [slice_pixels(str(sel.study_dir), f, (rows, cols)).T for f in sel.files]
    return np.stack(slices).astype(np.float32), sel.affine_lps.copy()


def ras_affine_xyz(sel: SelectedSeries) -> np.ndarray:
    """RAS+ affine of the series for an array indexed ``(col, row, slice)`` (the series array transposed,
    ``volume.transpose(2, 1, 0)``): write that array with this affine and it overlays the series."""
    return LPS_TO_RAS @ sel.affine_lps[:, [2, 1, 0, 3]]


def series_nifti(sel: SelectedSeries, volume: np.ndarray):
    """A ``nibabel.Nifti1Image`` of a ``(slices, rows, cols)`` series-grid array, laid out ``(col, row,
    slice)`` with :func:`ras_affine_xyz` as sform and qform (code 1, scanner), voxel sizes set."""
    import nibabel as nib

    vol = np.asarray(volume)
    if vol.shape != sel.shape:
        raise read_error("volume", f"shape {vol.shape} does not match the series grid {sel.shape}")
    img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), ras_affine_xyz(sel))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    return img


def volume_on_series_grid(
    sel: SelectedSeries, data: np.ndarray, affine_ras: np.ndarray, *, name: str = "volume"
) -> np.ndarray:
    """Bring an array that lies on the series' voxel grid back into series order ``(slices, rows, cols)``.

    ``data`` is a 3-D array (a leading or trailing channel axis of size 1 is dropped) with its nibabel RAS
    voxel->world ``affine_ras``; its axes may be any permutation and flips of the series axes. Only axes
    are permuted and flipped, nothing is resampled.

    Raises:
        InputError ("<name>: ..."): not 3-D, or the grids differ (shape, spacing, orientation or origin)
        by more than 1e-3 mm at any corner.
    """
    arr = np.asarray(data)
    if arr.ndim == 4 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 3:
        raise read_error(name, f"expected a 3-D volume, got shape {tuple(np.shape(data))}")
    a = np.asarray(affine_ras, dtype=np.float64)
    if a.shape != (4, 4) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise read_error(name, "affine is not an invertible 4x4 matrix")
    target = LPS_TO_RAS @ sel.affine_lps  # series index -> RAS
    m = np.linalg.inv(a) @ target  # series index -> data index
    perm = np.round(m[:3, :3])
    if not (
        np.all(np.abs(perm).sum(axis=0) == 1)
        and np.all(np.abs(perm).sum(axis=1) == 1)
        and np.abs(perm).max() == 1
    ):
        raise read_error(name, "its voxel axes are not aligned with the series' (different orientation or spacing)")
    shape = np.array(sel.shape)
    data_axis = [int(np.flatnonzero(perm[:, j])[0]) for j in range(3)]
    if tuple(arr.shape[k] for k in data_axis) != tuple(shape):
        raise read_error(name, f"shape {arr.shape} does not cover the series grid {tuple(shape)}")
    offset = np.round(m[:3, 3])
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    mapped = corners[:, :3] @ perm.T + offset
    if np.any(mapped < -0.5) or np.any(mapped > np.array(arr.shape) - 0.5):
        raise read_error(name, "its grid is shifted by whole voxels relative to the series (no resampling is done)")
    world_series = (target @ corners.T).T[:, :3]
    world_data = (a @ np.c_[mapped, np.ones(len(mapped))].T).T[:, :3]
    err = float(np.linalg.norm(world_series - world_data, axis=1).max())
    if err > GRID_TOL_MM:
        raise read_error(name, f"its grid differs from the series grid by up to {err:.4g} mm (tolerance {GRID_TOL_MM} mm; no resampling is done)")
    out = arr.transpose(data_axis)
    flips = [j for j in range(3) if perm[data_axis[j], j] < 0]
    return np.ascontiguousarray(np.flip(out, axis=flips) if flips else out)


# --------------------------------------------------------------------------------------------- identity


class Deidentifier:
    """De-identifies datasets with one ``dicognito.anonymizer.Anonymizer`` (PS3.15 basic profile).

    UIDs, names, IDs, dates and institutions are replaced deterministically *within* one instance, so
    all outputs of a run passed through the same object keep one (new) patient, study and frame of
    reference, and references between them (SourceImageSequence, ReferencedSeriesSequence) stay valid.
    Create one per run with :func:`make_deidentifier` and pass it to every writer.
    """

    def __init__(self, seed: str | None = None) -> None:
        from dicognito.anonymizer import Anonymizer

        self._anonymizer = Anonymizer(seed=seed)

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (file meta included) and return it."""
        self._anonymizer.anonymize(ds)
        ds.PatientIdentityRemoved = "YES"
        return ds


def make_deidentifier(seed: str | None = None) -> Deidentifier:
    """The one :class:`Deidentifier` that all writers of a research-mode run must share.

    ``seed=None`` (the default) draws a random secret, so the new UIDs and dates cannot be recomputed
    from the originals; a fixed seed makes the mapping reproducible (and guessable by who knows it).
    """
    return Deidentifier(seed)


def _check_identity(identity: str, anonymizer: Deidentifier | None) -> None:
    if identity not in _IDENTITIES:
        raise ValueError(f"identity must be one of {_IDENTITIES}, got {identity!r}")
    if identity == "research" and anonymizer is None:
        raise ValueError(
            "identity='research' needs anonymizer=make_deidentifier(), one object shared by all writers of the run"
        )


def _check_grid_array(sel: SelectedSeries, volume: np.ndarray, what: str) -> np.ndarray:
    vol = np.asarray(volume, dtype=np.float64)
    if vol.shape != sel.shape:
        raise read_error(what, f"shape {vol.shape} does not match the series grid (slices, rows, cols) {sel.shape}")
    if not np.all(np.isfinite(vol)):
        raise read_error(what, f"{int(np.size(vol) - np.isfinite(vol).sum())} non-finite value(s) (NaN/inf)")
    return vol


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _stored_scaling(sel: SelectedSeries, vol: np.ndarray) -> tuple[np.dtype, float, float]:
    """Stored dtype and one (slope, intercept) for the whole derived series.

    The dtype follows the source (uint16 when every source slice is unsigned, else int16). The source's
    RescaleSlope/Intercept are kept when they are the same on every slice and the output range fits the
    stored dtype under them (stored values then mean what they meant in the source); otherwise a new
    pair spans the output range over the whole dtype.
    """
    unsigned = all(int(h.get("PixelRepresentation", 1)) == 0 for h in sel.headers)
    dtype = np.dtype(np.uint16 if unsigned else np.int16)
    info = np.iinfo(dtype)
    pairs = {(float(h.get("RescaleSlope", 1) or 1), float(h.get("RescaleIntercept", 0) or 0)) for h in sel.headers}
    lo, hi = float(vol.min()), float(vol.max())
    if len(pairs) == 1:
        slope, intercept = next(iter(pairs))
        if slope > 0:
            s_lo, s_hi = (lo - intercept) / slope, (hi - intercept) / slope
            if s_lo >= info.min - 0.5 and s_hi <= info.max + 0.5:
                return dtype, slope, intercept
    span = float(info.max) - float(info.min)
    slope = (hi - lo) / span if hi > lo else 1.0
    slope = float(decimal_string(slope))
    if slope <= 0:
        slope = 1.0
    intercept = float(decimal_string(lo - float(info.min) * slope))
    # DS rounding of slope/intercept may push the extremes one step out: shrink until both fit
    while (hi - intercept) / slope > info.max + 0.5 or (lo - intercept) / slope < info.min - 0.5:
        slope = float(decimal_string(slope * (1 + 1e-6)))
        intercept = float(decimal_string(lo - float(info.min) * slope))
    return dtype, slope, intercept


def _window(sel: SelectedSeries, vol: np.ndarray) -> tuple[float, float]:
    src = sel.headers[0]
    if "WindowCenter" in src and "WindowWidth" in src:
        c, w = src.WindowCenter, src.WindowWidth
        c = c[0] if isinstance(c, pydicom.multival.MultiValue) else c
        w = w[0] if isinstance(w, pydicom.multival.MultiValue) else w
        if float(w) > 0:
            return float(c), float(w)
    lo, hi = (float(v) for v in np.percentile(vol, [0.5, 99.5]))
    return (lo + hi) / 2, max(hi - lo, 1e-3)


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _equipment_items(src: Dataset, bundle_name: str, bundle_version: str, what: str) -> list[Dataset]:
    """ContributingEquipmentSequence: the scanner that acquired the source, then the mriae bundle."""
    items = []
    acq = Dataset()
    acq.PurposeOfReferenceCodeSequence = [_code_item(codes.DCM.AcquisitionEquipment)]
    acq.Manufacturer = src.get("Manufacturer", "") or ""
    for key in ("InstitutionName", "InstitutionalDepartmentName", "StationName", "ManufacturerModelName", "SoftwareVersions"):
        if src.get(key, None):
            setattr(acq, key, src.get(key))
    items.append(acq)
    proc = Dataset()
    proc.PurposeOfReferenceCodeSequence = [_code_item(codes.DCM.ProcessingEquipment)]
    proc.Manufacturer = "mriae"
    proc.ManufacturerModelName = _lo(bundle_name)
    proc.SoftwareVersions = _lo(bundle_version)
    proc.ContributionDateTime = _dt.datetime.now().strftime("%Y%m%d%H%M%S")
    proc.ContributionDescription = _lo(f"{what} by mriae bundle {bundle_name} {bundle_version}")
    items.append(proc)
    return items


def _fresh_dir(path: Path) -> None:
    """Make ``path`` an empty folder, removing the IM_*.dcm files a previous run left there."""
    if path.exists() and not path.is_dir():
        raise read_error(path, "exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("IM_*.dcm"):
        f.unlink()
    leftovers = [p for p in path.iterdir() if not p.name.startswith(".")]
    if leftovers:
        raise read_error(path, f"holds {len(leftovers)} other file(s); the derived series needs a folder of its own")


def _series_number(src: Dataset, add: int) -> int:
    try:
        base = int(src.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        base = 0
    return (base + add) % 2**31


# --------------------------------------------------------------------------------------------- writers


def write_derived_series(
    sel: SelectedSeries,
    volume: np.ndarray,
    out_dir: str | Path,
    *,
    bundle_name: str,
    bundle_version: str,
    description: str | None = None,
    identity: str = "clinic",
    anonymizer: Deidentifier | None = None,
    series_number: int | None = None,
) -> list[Path]:
    """Write the denoised volume as a derived MR series, one MR Image Storage file per source slice.

    Files go to ``out_dir/denoised/IM_0001.dcm``, ... in series order (previous ``IM_*.dcm`` there are
    replaced). Each slice copies the source slice's Patient, Study and Frame of Reference modules, MR
    acquisition parameters and geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness), and gets a new SeriesInstanceUID / SOPInstanceUID, ImageType DERIVED\\SECONDARY,
    DerivationDescription and DerivationCodeSequence, a SourceImageSequence item referencing its source
    slice, and a ContributingEquipmentSequence (acquisition scanner, then mriae with the bundle's name
    and version). SeriesDescription is ``"<description or source description> [denoised]"``. Stored
    pixels keep the source's dtype (int16/uint16) with one RescaleSlope/Intercept for the series
    (see ``_stored_scaling``); the window is the source's, or the output's 0.5-99.5 percentiles.

    Args:
        sel: the source series (:func:`select_series`).
        volume: ``(slices, rows, cols)`` real-world values on the series grid.
        out_dir: the run's output folder.
        bundle_name, bundle_version: what produced the volume (recorded in the headers).
        description: base of SeriesDescription (default: the source's).
        identity: ``"clinic"`` (keep identifiers) or ``"research"`` (de-identify with ``anonymizer``).
        anonymizer: the run's :func:`make_deidentifier` object; required for ``"research"``.
        series_number: SeriesNumber (default: source SeriesNumber + 1000).

    Returns:
        the written files, in series order.
    """
    _check_identity(identity, anonymizer)
    vol = _check_grid_array(sel, volume, "denoised volume")
    dtype, slope, intercept = _stored_scaling(sel, vol)
    info = np.iinfo(dtype)
    stored = np.clip(np.round((vol - intercept) / slope), info.min, info.max).astype(dtype.newbyteorder("<"))
    centre, width = _window(sel, vol)
    src0 = sel.headers[0]
    base = _one_line(description if description is not None else sel.description) or "MR"
    series_desc = f"{base[: 64 - len(' [denoised]')]} [denoised]"
    series_uid = generate_uid()
    number = series_number if series_number is not None else _series_number(src0, 1000)
    date, time = _now()
    equipment = _equipment_items(src0, bundle_name, bundle_version, "denoised")
    derivation = _lo(f"denoised by the mriae bundle {bundle_name} version {bundle_version}", 1024)
    folder = Path(out_dir) / DERIVED_DIR
    _fresh_dir(folder)
    paths = []
    for k, src in enumerate(sel.headers):
        ds = Dataset()
        for key in _COPY_PATIENT_STUDY + _COPY_SERIES_ACQ:
            if key in src:
                ds[key] = pydicom.DataElement(src[key].tag, src[key].VR, src[key].value)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, number
        ds.SeriesDescription, ds.SeriesDate, ds.SeriesTime = series_desc, date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "mriae", _lo(bundle_name), _lo(bundle_version)
        ds.ContributingEquipmentSequence = [Dataset(item) for item in equipment]
        ds.InstanceNumber, ds.ImageType = k + 1, ["DERIVED", "SECONDARY"]
        ds.DerivationDescription = derivation
        ds.DerivationCodeSequence = [_code_item(codes.DCM.ImageProcessing)]
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
        ref.PurposeOfReferenceCodeSequence = [_code_item(codes.DCM.SourceImageForImageProcessingOperation)]
        ds.SourceImageSequence = [ref]
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "SpacingBetweenSlices", "SliceLocation"):
            if key in src:
                ds[key] = pydicom.DataElement(src[key].tag, src[key].VR, src[key].value)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = sel.shape[1], sel.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0 if dtype == np.uint16 else 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = decimal_string(slope), decimal_string(intercept), "US"
        ds.WindowCenter, ds.WindowWidth = decimal_string(centre), decimal_string(width)
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.preamble = b"\0" * 128
        if identity == "research":
            anonymizer.apply(ds)  # before anything reaches the disk
        path = folder / f"IM_{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote the derived series of %s: %d slices in %s", sel.label, len(paths), folder)
    return paths


def write_parametric_map(
    sel: SelectedSeries,
    residual: np.ndarray,
    out_dir: str | Path,
    *,
    bundle_name: str,
    bundle_version: str,
    identity: str = "clinic",
    anonymizer: Deidentifier | None = None,
    unit=None,
    series_number: int | None = None,
) -> Path:
    """Write the residual map (input - denoised) as one multi-frame DICOM Parametric Map (highdicom).

    ``out_dir/residual_pmap.dcm``: float32 pixel data, one frame per source slice (positions from the
    source's ImagePositionPatient; highdicom may order frames by position, each frame's
    PlanePositionSequence says where it lies), the source's FrameOfReferenceUID, orientation and pixel
    spacing, references to all source images, an identity RealWorldValueMapping (unit ``unit``, default
    UCUM arbitrary unit ``[arb'U]``), ContentLabel RESIDUAL, and ContentDescription / SeriesDescription
    saying it is for research use, not for clinical use (ContentQualification RESEARCH).

    Args are as for :func:`write_derived_series`; ``series_number`` defaults to source + 1001.

    Returns:
        the written file.
    """
    import highdicom as hd

    _check_identity(identity, anonymizer)
    res = _check_grid_array(sel, residual, "residual map").astype(np.float32)
    lo, hi = float(res.min()), float(res.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="RESIDUAL",
        lut_explanation="input minus denoised, same units as the input",
        unit=unit if unit is not None else codes.UCUM.ArbitraryUnit,
        value_range=(lo, hi if hi > lo else lo + 1.0),
        slope=1.0,
        intercept=0.0,
    )
    positions = [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in h.ImagePositionPatient])
        for h in sel.headers
    ]
    src0 = sel.headers[0]
    width = max(float(np.percentile(np.abs(res), 99.5)) * 2, 1e-3)
    equipment = [
        hd.ContributingEquipment(
            "mriae",
            codes.DCM.ProcessingEquipment,
            manufacturer_model_name=_lo(bundle_name),
            software_versions=_lo(bundle_version),
            contribution_description=_lo(f"residual map of mriae bundle {bundle_name} {bundle_version}"),
        )
    ]
    pm = hd.pm.ParametricMap(
        source_images=list(sel.headers),
        pixel_array=res,
        series_instance_uid=hd.UID(),
        series_number=series_number if series_number is not None else _series_number(src0, 1001),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="mriae",
        manufacturer_model_name=_lo(bundle_name),
        software_versions=_lo(bundle_version),
        device_serial_number=_lo(bundle_version),
        contains_recognizable_visual_features=True,  # conservative: a head residual can show anatomy
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.0, window_width=width)],
        content_description="input-denoised residual; research use only, not for clinical use",
        content_label="RESIDUAL",
        plane_positions=positions,
        contributing_equipment=equipment,
    )
    pm.SeriesDescription = _lo(f"RESIDUAL {bundle_name} - research use only, not for clinical use")
    pm.DerivationDescription = _lo(
        f"residual (input minus output) of the mriae bundle {bundle_name} version {bundle_version}; "
        "research use only, not for clinical use", 1024
    )
    # encode and decode once: highdicom keeps dates as Python objects, dicognito expects DICOM strings
    buf = io.BytesIO()
    pm.save_as(buf, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    if identity == "research":
        anonymizer.apply(ds)  # before anything reaches the disk
    path = atomic_write(Path(out_dir) / PMAP_NAME, lambda tmp: pydicom.dcmwrite(tmp, ds, enforce_file_format=True))
    logger.info("wrote the residual parametric map of %s to %s", sel.label, path)
    return path

