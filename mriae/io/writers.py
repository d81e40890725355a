"""Write an output volume "like the input": on the input's exact grid, in the input's format where possible.

| input (``source_format``) | written as | through |
|---|---|---|
| NIfTI ``.nii`` / ``.nii.gz`` | the same suffix | nibabel, with the input's header as template |
| FreeSurfer ``.mgz`` | ``.mgz`` | nibabel, with the input's header as template |
| NRRD ``.nrrd`` / ``.nhdr`` | the same suffix (gzip data; ``.nhdr`` + ``.raw.gz``) | MONAI ``ITKWriter`` |
| MetaImage ``.mha`` / ``.mhd`` | the same suffix (zlib data; ``.mhd`` + ``.zraw``) | MONAI ``ITKWriter`` |
| MINC ``.mnc``, PAR/REC ``.par``, DICOM | NIfTI ``.nii.gz`` beside it | nibabel |

The output's geometry is the input's ``original_affine`` (what the reader found in the file), not an
affine recomputed by the transforms, so the output overlays the input exactly; an output that is not on
the input's grid (shape or affine off, e.g. the preprocessing was not inverted) is refused.

Why not only MONAI's writers: ``SaveImaged`` writes one format for every input, and its ``NibabelWriter``
builds a new NIfTI header from the affine alone (qform/sform codes and units of the input are lost). For
NIfTI and MGZ inputs the input's own header is reused (its qform and sform stay as they were). A NIfTI
written beside a MINC / PAR/REC / DICOM input gets the affine in its sform only (qform_code 0) and
millimetre units: a qform is a float32 quaternion, which loses about 1e-5 of the direction cosines for
the common near-180-degree rotations (LPS-stored scans: the quaternion's ``a`` is then
``sqrt(1 - b^2 - c^2 - d^2)`` of a number near 0), and ITK prefers the qform when both are set. NRRD
and MetaImage go through MONAI's ``ITKWriter``. MINC, PAR/REC and DICOM are not written back: nothing
installed writes MINC1 or PAR/REC, ITK's MINC2 writer stores LPS coordinates where MINC expects RAS
(:mod:`mriae.io.itk_formats`), and a derived DICOM series needs the input's identifiers, which this
package never carries.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ITKWriter, MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from mriae.errors import InputError

__all__ = ["SaveLikeInputd", "VolumeWriteError", "output_path", "write_like_input"]

logger = logging.getLogger(__name__)

_SAME_SUFFIX = {
    "nifti": (".nii.gz", ".nii"),
    "mgz": (".mgz",),
    "nrrd": (".nrrd", ".nhdr"),
    "metaimage": (".mha", ".mhd"),
}
_GRID_TOL = 1e-3  # mm (translation) and mm per voxel (matrix entries)


class VolumeWriteError(InputError):
    """An output could not be written like its input; the message is one line ``"<path>: <problem>"``."""


def write_error(path: str | Path, problem: str) -> VolumeWriteError:
    return VolumeWriteError(f"{path}: " + " ".join(str(problem).split()))


def _input_suffix(name: str, fmt: str) -> str | None:
    """The suffix of the input file name that the output keeps (None: written as NIfTI beside it)."""
    return next((s for s in _SAME_SUFFIX.get(fmt, ()) if name.lower().endswith(s)), None)


def output_path(meta: Mapping, output_dir: str | Path, output_postfix: str = "") -> Path:
    """Where :func:`write_like_input` writes the output of the input that ``meta`` describes.

    ``<output_dir>/<input name without suffix>[_<postfix>]<suffix>``: the input's suffix for NIfTI, MGZ,
    NRRD and MetaImage, ``.nii.gz`` otherwise. For a DICOM series the name is the folder's (or the series
    key, when one was chosen).
    """
    source = Path(str(meta["filename_or_obj"]))
    fmt = str(meta.get("source_format", ""))
    suffix = _input_suffix(source.name, fmt)
    if suffix is not None:
        stem = source.name[: -len(suffix)]
    else:  # a DICOM folder (or series key) keeps its whole name, a .mnc / .par file loses its suffix
        stem = source.name if fmt == "dicom" or not source.suffix else source.name[: -len(source.suffix)]
    tail = f"_{output_postfix}" if output_postfix else ""
    return Path(output_dir) / f"{stem}{tail}{suffix or '.nii.gz'}"


def _array(image, source: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The image as a float32 (X, Y, Z) array; refuses several channels and a shape off the input's grid."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise write_error(source, f"the output has {arr.shape[0]} channels; one volume per file is written")
        arr = arr[0]
    if tuple(arr.shape) != shape:
        raise write_error(
            source,
            f"the output's shape {tuple(arr.shape)} is not the input's {shape}: invert the preprocessing "
            "(Invertd) before saving",
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _write_nibabel(arr: np.ndarray, affine: np.ndarray, path: Path, template: Path | None) -> None:
    """NIfTI / MGZ: with the template's header (kept as is when its affine is ``affine``), else a new NIfTI."""
    if template is not None:
        ref = nib.load(template)
        out = type(ref)(arr, affine, header=ref.header)
        if "cal_min" in out.header:  # display range of the input's intensities
            out.header["cal_min"] = out.header["cal_max"] = 0
    else:
        out = nib.Nifti1Image(arr, affine)  # sform (code "aligned") only, qform_code 0: see the module doc
        out.header.set_xyzt_units("mm")
    out.set_data_dtype(np.float32)
    nib.save(out, path)


def _write_itk(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """NRRD / MetaImage through MONAI's ``ITKWriter`` (RAS affine -> ITK's LPS), compressed data."""
    writer = ITKWriter(output_dtype=np.float32, affine_lps_to_ras=True)
    writer.set_data_array(arr, channel_dim=None)
    writer.set_metadata(
        {"affine": affine, "original_affine": affine, "spatial_shape": arr.shape}, resample=False
    )
    writer.write(str(path), compression=True)


def write_like_input(
    image: MetaTensor | torch.Tensor | np.ndarray,
    output_dir: str | Path,
    output_postfix: str = "",
    meta: Mapping | None = None,
) -> Path:
    """Write ``image`` on the grid of the input it came from, in the input's format where possible.

    Args:
        image: ``(1, X, Y, Z)`` or ``(X, Y, Z)`` on the input's voxel grid, e.g. a network output after
            ``Invertd``. A ``MetaTensor``'s affine must equal the input's (to 1e-3 mm).
        output_dir: folder to write into (created if needed).
        output_postfix: appended to the input's name (``scan.nrrd`` -> ``scan_<postfix>.nrrd``).
        meta: the input's metadata as :func:`mriae.io.load_volume` returns it (``filename_or_obj``,
            ``source_format``, ``original_affine``, ``spatial_shape``); defaults to ``image.meta``.

    Returns:
        the path of the written file (its header, for ``.nhdr`` / ``.mhd``).

    Raises:
        VolumeWriteError: ``image`` is not on the input's grid, has several channels, or would overwrite
            the input.
    """
    meta = dict(image.meta) if meta is None and isinstance(image, MetaTensor) else dict(meta or {})
    missing = [k for k in ("filename_or_obj", "original_affine", "spatial_shape") if k not in meta]
    if missing:
        raise write_error(
            output_dir, f"no {', '.join(missing)} in the metadata: load the input with mriae.io.load_volume"
        )
    source = Path(str(meta["filename_or_obj"]))
    affine = np.asarray(meta["original_affine"], dtype=np.float64).reshape(4, 4)
    shape = tuple(int(v) for v in meta["spatial_shape"])
    arr = _array(image, source, shape)
    if isinstance(image, MetaTensor):
        off = float(np.abs(np.asarray(image.affine, dtype=np.float64) - affine).max())
        if off > _GRID_TOL:
            raise write_error(
                source,
                f"the output's affine differs from the input's by {off:.3g}: invert the preprocessing "
                "(Invertd) before saving",
            )
    path = output_path(meta, output_dir, output_postfix)
    if path.exists() and source.exists() and path.resolve() == source.resolve():
        raise write_error(source, "the output would overwrite the input: give an output_postfix or another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = str(meta.get("source_format", ""))
    kept = _input_suffix(source.name, fmt) is not None
    try:
        if kept and fmt in ("nrrd", "metaimage"):
            _write_itk(arr, affine, path)
        else:
            _write_nibabel(arr, affine, path, template=source if kept else None)
    except OSError as e:
        raise write_error(path, f"cannot write ({type(e).__name__}: {e.strerror or e})") from None
    return path


class SaveLikeInputd(MapTransform):
    """Save each key with :func:`write_like_input`: the input's grid and, where possible, its format.

    A drop-in for MONAI's ``SaveImaged`` in inference configs, after ``Invertd``. The written path is
    stored in the key's ``meta["saved_to"]``.

    Args:
        keys: keys of the outputs to save.
        output_dir: folder to write into.
        output_postfix: one postfix for all keys, or one per key (``["recon", "residual"]``).
        meta_from: key whose ``meta`` describes the input (default: each key's own ``meta``, which
            ``Invertd`` copies from the input).
        print_log: log ``file written: <path>`` at info level (at debug level otherwise).
        allow_missing_keys: as in MONAI's ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        output_postfix: str | Sequence[str] = "",
        meta_from: str | None = None,
        print_log: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if Path(output_dir).exists() and not Path(output_dir).is_dir():  # say so before any compute
            raise InputError(f"{output_dir}: --output_dir exists and is not a folder")
        self.output_dir = output_dir
        self.postfixes = ensure_tuple_rep(output_postfix, len(self.keys))
        self.meta_from, self.print_log = meta_from, print_log

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        meta = getattr(d[self.meta_from], "meta", None) if self.meta_from is not None else None
        for key, postfix in self.key_iterator(d, self.postfixes):
            path = write_like_input(d[key], self.output_dir, postfix, meta=meta)
            if isinstance(d[key], MetaTensor):
                d[key].meta["saved_to"] = str(path)
            (logger.info if self.print_log else logger.debug)("file written: %s", path)
        return d
