"""NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and MINC2 (``.mnc``) through MONAI's ``ITKReader``.

What MONAI's ``ITKReader`` lacks, and :class:`ItkVolumeReader` adds:

- **MINC world coordinates.** MINC stores its world coordinates in RAS (the MNI convention; nibabel reads
  them so). The MINC IO of the ITK wheels is built with ``ITK_MINC_IO_RAS_TO_LPS`` off, so ITK hands these
  RAS coordinates over as if they were ITK's LPS, and ``ITKReader``'s LPS->RAS conversion then mirrors x and
  y. For ``.mnc`` the affine is therefore taken as is (``affine_lps_to_ras=False``) and the metadata's
  ``space`` is set back to RAS. ``tests/test_formats.py`` pins this against nibabel's reading of the same
  image stored as MINC1.
- **Header checks with one-line errors.** For a ``.mhd`` whose raw file is missing, ITK's MetaImage IO says
  ``File cannot be read: x.mhd ... No such file or directory`` about the header that exists, and NRRD or
  HDF5 (MINC2) failures come as many-line C++ traces. The MetaImage and NRRD headers are read here first
  (data file present, enough bytes for raw data), and ITK's remaining errors are cut to one line.
- **Quiet native output.** ITK's MetaImage, NRRD and HDF5 libraries print diagnostics straight to the
  process's stderr (file descriptor 2). They are captured during the read: on failure the useful line goes
  into the error message, on success they are logged at debug level.
- **No header copy.** ``ITKReader`` copies every header field into the metadata, which then reaches logs
  and MLflow; MINC and NRRD headers may hold patient fields. Only geometry is kept.

MINC1 (netCDF) files are not readable by the wheel's MINC IO (its libminc has no netCDF); they go through
nibabel (:mod:`mriae.io.nibabel_formats`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from monai.data import ITKReader
from monai.utils import MetaKeys, SpaceKeys

from mriae.io.dicom import read_error

__all__ = ["ITK_SUFFIXES", "ItkVolumeReader", "check_header", "native_stderr"]

logger = logging.getLogger(__name__)

ITK_SUFFIXES = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage", ".mnc": "minc"}

_NRRD_SIZES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t"), 4
    ),
    **dict.fromkeys(("longlong", "long long", "long long int", "int64", "int64_t"), 8),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), 8),
    "float": 4,
    "double": 8,
}
_MET_SIZES = {
    **dict.fromkeys(("MET_CHAR", "MET_UCHAR"), 1),
    **dict.fromkeys(("MET_SHORT", "MET_USHORT"), 2),
    **dict.fromkeys(("MET_INT", "MET_UINT", "MET_FLOAT"), 4),
    **dict.fromkeys(("MET_LONG_LONG", "MET_ULONG_LONG", "MET_DOUBLE"), 8),
}
_HEADER_BYTES = 1 << 16  # NRRD / MetaImage headers are text, far shorter than this


def _product(values: Sequence[str]) -> int:
    return int(np.prod([int(v) for v in values], dtype=np.int64))


def _data_size(path: Path, data: Path, expected: int, available: int) -> None:
    """Refuse raw data shorter than the header describes."""
    if available < expected:
        where = "after the header" if data == path else f"in data file {data.name!r}"
        raise read_error(
            path, f"truncated: {available} bytes {where}, the header describes {expected} (incomplete copy?)"
        )


def _data_file(path: Path, name: str) -> Path | None:
    """The detached data file a header names (None for lists and numbered patterns, not checked)."""
    if not name or name.upper().startswith("LIST") or "%" in name:
        return None
    data = Path(name) if Path(name).is_absolute() else path.parent / name
    if data.is_file():
        return data
    if " " in name:  # "<pattern> <min> <max> <step>": a numbered series of files
        return None
    raise read_error(path, f"the data file {name!r} that the header names is missing (looked in {data.parent})")


def _check_metaimage(path: Path, head: bytes) -> None:
    """MetaImage ``.mha`` / ``.mhd``: a ``Key = Value`` header ending with ``ElementDataFile``."""
    fields: dict[str, str] = {}
    end = None
    offset = 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            end = offset
            break
    if end is None:
        raise read_error(
            path, "MetaImage header has no ElementDataFile line (truncated or not a MetaImage header)"
        )
    for key in ("NDims", "DimSize", "ElementType"):
        if key not in fields:
            raise read_error(path, f"MetaImage header has no {key} line")
    name = fields["ElementDataFile"]
    data = path if name.upper() == "LOCAL" else _data_file(path, name)
    size = _MET_SIZES.get(fields["ElementType"])
    compressed = fields.get("CompressedData", "False").lower() == "true"
    skip = int(fields.get("HeaderSize", "0") or 0)
    if data is None or size is None or compressed or skip < 0:
        return
    expected = _product(fields["DimSize"].split()) * int(fields.get("ElementNumberOfChannels", "1")) * size
    available = data.stat().st_size - (end if data == path else 0) - skip
    _data_size(path, data, expected, available)


def _check_nrrd(path: Path, head: bytes) -> None:
    """NRRD ``.nrrd`` (attached data after a blank line) or ``.nhdr`` (detached ``data file``)."""
    if not head.startswith(b"NRRD000"):
        raise read_error(path, "not a NRRD file (it does not start with the NRRD000x magic line)")
    fields: dict[str, str] = {}
    end = None
    offset = 0
    lines = head.splitlines(keepends=True)
    for raw in lines[1:]:
        offset += len(raw)
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            end = offset + len(lines[0])
            break
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    for key in ("type", "dimension", "sizes", "encoding"):
        if key not in fields:
            raise read_error(path, f"NRRD header has no {key!r} field (truncated header?)")
    name = fields.get("data file", fields.get("datafile"))
    if name is None and end is None:
        raise read_error(path, "NRRD header ends without the blank line before the data (truncated header?)")
    data = path if name is None else _data_file(path, name)
    size = _NRRD_SIZES.get(fields["type"].lower())
    if (
        data is None
        or size is None
        or fields["encoding"].lower() != "raw"
        or "byte skip" in fields
        or "line skip" in fields
    ):
        return
    expected = _product(fields["sizes"].split()) * size
    available = data.stat().st_size - (end if data == path else 0)
    _data_size(path, data, expected, available)


def check_header(path: str | Path) -> None:
    """Check a NRRD or MetaImage header and its data file before ITK reads them.

    Raises:
        VolumeReadError: header without its required fields, a detached data file that is missing, or raw
            data shorter than the header describes. Compressed data and multi-file lists are left to ITK.
    """
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(_HEADER_BYTES)
    fmt = ITK_SUFFIXES.get(p.suffix.lower())
    if fmt == "nrrd":
        _check_nrrd(p, head)
    elif fmt == "metaimage":
        _check_metaimage(p, head)


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Capture what C/C++ libraries write to file descriptor 2 while the block runs.

    Yields a list that holds the captured lines once the block has finished (also when it raised).
    """
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a detached process): nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(line.strip() for line in tmp.read().decode(errors="replace").splitlines())


def _itk_reason(exc: BaseException, native: list[str]) -> str:
    """One line out of an ITK exception and what the native libraries printed."""
    text = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
    nrrd = [line for line in text.splitlines() if line.startswith("[nrrd]")]
    if nrrd:
        reason = re.sub(r"^\[nrrd\]\s*\w+:\s*", "", nrrd[-1])
    else:
        found = re.search(r"ITK ERROR: \w+\(0x[0-9a-f]+\):\s*(.*)", text, flags=re.S)
        reason = found.group(1) if found else text
    sizes = next(
        (re.search(r"eof = (\d+).*stored_eof = (\d+)", line) for line in native if "stored_eof" in line), None
    )
    hints = [line for line in native if "truncated" in line.lower() or line.startswith("MetaImage:")]
    if sizes:  # HDF5 (MINC2): "truncated file: eof = 3000, sblock->base_addr = 0, stored_eof = 290227"
        reason = f"{reason} (file truncated: {sizes.group(1)} of {sizes.group(2)} bytes)"
    elif hints:
        reason = f"{reason} ({hints[0]})"
    return " ".join(reason.split())


class ItkVolumeReader(ITKReader):
    """MONAI ``ITKReader`` for one NRRD, MetaImage or MINC2 file, with RAS affines and geometry-only metadata.

    Usage: ``LoadImage(reader=ItkVolumeReader(), image_only=True, ensure_channel_first=True)(path)``. The
    array keeps ITK's index order (axis 0 = ITK's x index), and ``affine`` maps it to RAS world
    coordinates. See the module docstring for what differs from ``ITKReader``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._minc = False

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """True for a single ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd`` or ``.mnc`` file."""
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return len(names) == 1 and Path(names[0]).suffix.lower() in ITK_SUFFIXES

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs):
        """Check the header, then read the image with ``itk.imread`` (native diagnostics captured)."""
        path = Path(data if isinstance(data, (str, Path)) else data[0])
        fmt = ITK_SUFFIXES.get(path.suffix.lower(), "ITK image")
        check_header(path)
        self._minc = fmt == "minc"
        self.affine_lps_to_ras = not self._minc
        with native_stderr() as native:
            try:
                img = super().read(str(path), **kwargs)
                error = None
            except (
                Exception
            ) as e:  # RuntimeError for IO failures; KeyError / TypeError for unwrapped pixel types
                error = e
        if error is not None:
            raise read_error(path, f"cannot read as {fmt}: {_itk_reason(error, native)}") from None
        if native:
            logger.debug("%s: ITK printed %s", path, " | ".join(native))
        return img

    def _get_meta_dict(self, img) -> dict:
        """Only the spacing: header fields (possibly patient fields) are not copied."""
        return {"spacing": np.asarray(img.GetSpacing())}

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """``ITKReader.get_data``; for MINC the untouched affine is RAS, so ``space`` is set to RAS."""
        data, meta = super().get_data(img)
        if self._minc:
            meta[MetaKeys.SPACE] = SpaceKeys.RAS
        return data, meta
