"""Volume readers and writers.

Reading (:func:`load_volume`): NIfTI / MGZ (MONAI ``NibabelReader``), NRRD / MetaImage / MINC2 (MONAI
``ITKReader``), MINC1 / Philips PAR/REC (nibabel) and validated, identifier-free DICOM series. Writing
(:func:`write_like_input`, :class:`SaveLikeInputd`): an output on the input's exact grid, in the input's
format where it can be written, NIfTI beside it otherwise. ``docs/formats.md`` has the details and limits.
"""

from mriae.io.dicom import (
    DicomSeriesReader,
    VolumeReadError,
    find_dicom_series,
    is_dicom_dir,
    series_key,
    write_dicom_series,
)
from mriae.io.volume import FORMATS, VOLUME_SUFFIXES, load_volume, volume_format
from mriae.io.writers import SaveLikeInputd, VolumeWriteError, output_path, write_like_input

__all__ = [
    "FORMATS",
    "VOLUME_SUFFIXES",
    "DicomSeriesReader",
    "SaveLikeInputd",
    "VolumeReadError",
    "VolumeWriteError",
    "find_dicom_series",
    "is_dicom_dir",
    "load_volume",
    "output_path",
    "series_key",
    "volume_format",
    "write_dicom_series",
    "write_like_input",
]
