"""Volume readers and writers.

Reading (:func:`load_volume`): NIfTI / MGZ (MONAI ``NibabelReader``), NRRD / MetaImage / MINC2 (MONAI
``ITKReader``), MINC1 / Philips PAR/REC (nibabel) and validated, identifier-free DICOM series. ``docs/formats.md`` has the details and limits.
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

__all__ = [
    "FORMATS",
    "VOLUME_SUFFIXES",
    "DicomSeriesReader",
    "VolumeReadError",
    "find_dicom_series",
    "is_dicom_dir",
    "load_volume",
    "series_key",
    "volume_format",
    "write_dicom_series",
]
