"""Volume readers: NIfTI / MGZ (MONAI ``NibabelReader``) and validated, identifier-free DICOM series."""

from mriae.io.dicom import (
    DicomSeriesReader,
    VolumeReadError,
    find_dicom_series,
    is_dicom_dir,
    series_key,
    write_dicom_series,
)
from mriae.io.volume import load_volume, volume_format

__all__ = [
    "DicomSeriesReader",
    "VolumeReadError",
    "find_dicom_series",
    "is_dicom_dir",
    "load_volume",
    "series_key",
    "volume_format",
    "write_dicom_series",
]
