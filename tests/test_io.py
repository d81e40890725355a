"""Tests of ``mriae.io`` on real data: pydicom's MR_small files, the ICBM152 template shipped with nilearn
(written as positioned DICOM series, NIfTI and MGZ) and nibabel's Siemens mosaic test files.

Every series that loads is also read by ITK's own DICOM reader (GDCM, ``_assert_matches_itk``): spacing,
origin and direction agree with ours to 1e-4 mm and the voxel values are equal."""

from __future__ import annotations

import hashlib
import importlib.util
import random
import re
import shutil
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.data import get_testdata_file

from mriae.io import (
    DicomSeriesReader,
    VolumeReadError,
    find_dicom_series,
    is_dicom_dir,
    load_volume,
    write_dicom_series,
)

MR_SMALL = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]
NAME, PID = "Doe^Jane", "PID-998877"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _template_path() -> Path | None:
    """The ICBM152 T1 template inside the installed nilearn package (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = (
        Path(spec.submodule_search_locations[0])
        / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def template() -> nib.Nifti1Image:
    """A 48 x 56 x 40 float32 crop of the ICBM152 T1 template (non-square in-plane to catch transposes)."""
    path = _template_path()
    if path is None:
        pytest.skip(
            "nilearn's ICBM152 template (mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz) is not installed"
        )
    img = nib.load(path).slicer[70:118, 80:136, 70:110]
    return nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _oblique_affine(storage: str, zooms=(0.9, 1.1, 1.3)) -> np.ndarray:
    """RAS affine: array axes stored as ``storage`` (e.g. "LPS", "PSR"), rotated 15 degrees, odd origin."""
    unit = {"L": [-1, 0, 0], "R": [1, 0, 0], "P": [0, -1, 0], "A": [0, 1, 0], "I": [0, 0, -1], "S": [0, 0, 1]}
    axes = np.array([unit[c] for c in storage], dtype=float).T
    affine = np.eye(4)
    affine[:3, :3] = _rotation([1, 2, 0.5], 15) @ axes @ np.diag(zooms)
    affine[:3, 3] = [12.5, -30.25, 7.75]
    return affine


def _affine_from_tags(ds: pydicom.Dataset) -> np.ndarray:
    """RAS affine of a single slice from IOP / IPP / PixelSpacing / SliceThickness."""
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = iop[:3] * dc, iop[3:] * dr
    lps[:3, 2] = np.cross(iop[:3], iop[3:]) * float(ds.SliceThickness)
    lps[:3, 3] = np.array(ds.ImagePositionPatient, dtype=float)
    return LPS_TO_RAS @ lps


def _itk_series(folder: Path, series_uid: str | None = None):
    """ITK's reading of a DICOM series: GDCM's file list for the series (the only one unless given), read
    as float32 by ``ImageSeriesReader`` with ``GDCMImageIO`` (ITK's LPS geometry, rescale applied)."""
    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(False)  # series ids are then the SeriesInstanceUIDs
    names.SetRecursive(True)
    names.SetDirectory(str(folder))
    uids = list(names.GetSeriesUIDs())
    if series_uid is None:
        assert len(uids) == 1, uids
        series_uid = uids[0]
    reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New(
        FileNames=names.GetFileNames(series_uid), ImageIO=itk.GDCMImageIO.New()
    )
    reader.Update()
    return reader.GetOutput()


def _assert_matches_itk(img, folder: Path, series_uid: str | None = None, single_slice: bool = False) -> None:
    """ITK's spacing, origin and direction (LPS) equal ours (RAS affine) to 1e-4; voxel values are equal.

    For a one-slice series the slice spacing is undefined: GDCM reports 1.0 mm where ours is the
    SliceThickness, so only the in-plane spacing is compared there.
    """
    ref = _itk_series(folder, series_uid)
    lps = LPS_TO_RAS @ img.affine.numpy()
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    n = 2 if single_slice else 3
    np.testing.assert_allclose(np.asarray(ref.GetSpacing())[:n], spacing[:n], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ref.GetOrigin()), lps[:3, 3], rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        itk.array_from_matrix(ref.GetDirection()), lps[:3, :3] / spacing, rtol=0, atol=1e-4
    )
    np.testing.assert_array_equal(itk.array_from_image(ref).T, img[0].numpy())


def _assert_clean_error(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    """One-line message naming ``path``, holding ``fragments`` and no patient identifier."""
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in msg
    for secret in (NAME, PID, "Doe", "Jane", "998877"):
        assert secret not in msg
    return msg


def _write(template: nib.Nifti1Image, out: Path, n_slices: int = 20, **kwargs) -> list[Path]:
    """Write the first ``n_slices`` of the template as an axial series with 1 mm slices."""
    affine = _oblique_affine("LPS", zooms=(0.9, 1.1, 1.0))
    vol = template.get_fdata(dtype=np.float32)[..., :n_slices]
    return write_dicom_series(vol, affine, out, patient_name=NAME, patient_id=PID, **kwargs)


@pytest.mark.parametrize("name", MR_SMALL)
def test_mr_small_variants(tmp_path: Path, name: str) -> None:
    """Every (lossless) MR_small transfer syntax loads to the pixels and affine of MR_small.dcm."""
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    shutil.copy(get_testdata_file(name), tmp_path / name)
    with pytest.raises(VolumeReadError, match="a single slice"):
        load_volume(tmp_path)
    img = load_volume(tmp_path, min_slices=1)
    assert tuple(img.shape) == (1, 64, 64, 1)
    np.testing.assert_array_equal(img[0, :, :, 0].numpy(), ref.pixel_array.T.astype(np.float32))
    np.testing.assert_allclose(img.affine.numpy(), _affine_from_tags(ref), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(img.affine.numpy()[:3, :3], axis=0), [0.3125, 0.3125, 0.8])
    assert img.meta["source_format"] == "dicom" and img.meta["filename_or_obj"] == str(tmp_path)
    assert tuple(img.meta["spatial_shape"]) == (64, 64, 1)
    text = repr(dict(img.meta))
    assert str(ref.PatientName) not in text and "CompressedSamples" not in text and ref.PatientID not in text
    _assert_matches_itk(img, tmp_path, single_slice=True)


@pytest.mark.parametrize("storage", ["LPS", "PSR"])
def test_written_series_roundtrip_and_itk(tmp_path: Path, template: nib.Nifti1Image, storage: str) -> None:
    """Oblique series with shuffled file names: data, affine and ITK's reading of the folder all agree.

    With PSR storage, axis 2 (R) points against the slice normal P x S = L, so every reader (ours, ITK)
    returns axis 2 reversed: same world geometry, flipped array and affine.
    """
    vol = template.get_fdata(dtype=np.float32)
    affine = _oblique_affine(storage)
    folder = tmp_path / "dicom"
    files = write_dicom_series(vol, affine, folder, patient_name=NAME, patient_id=PID)
    assert len(files) == vol.shape[2]
    names = [f"IM{i:05d}" for i in random.Random(0).sample(range(99999), len(files))]
    for f, new in zip(files, names, strict=True):
        f.rename(folder / new)
    assert sorted(names) != names
    (folder / "README.txt").write_text("not a DICOM file")

    expected_vol, expected_aff = vol, affine
    if storage == "PSR":
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1, vol.shape[2] - 1
        expected_vol, expected_aff = vol[:, :, ::-1], affine @ flip
    img = load_volume(folder)
    assert tuple(img.shape) == (1, *vol.shape) and img.dtype.is_floating_point
    slope = (vol.max() - vol.min()) / 65534
    np.testing.assert_allclose(img[0].numpy(), expected_vol, rtol=0, atol=slope / 2 + 1e-4)
    np.testing.assert_allclose(img.affine.numpy(), expected_aff, atol=1e-4)
    np.testing.assert_allclose(img.meta["original_affine"], expected_aff, atol=1e-4)
    assert img.meta["filename_or_obj"] == str(folder)
    assert NAME not in repr(dict(img.meta)) and PID not in repr(dict(img.meta))

    _assert_matches_itk(img, folder)

    ours = LoadImage(reader=DicomSeriesReader(), image_only=True, ensure_channel_first=True)(str(folder))
    np.testing.assert_array_equal(ours.numpy(), img.numpy())

    ds = pydicom.dcmread(folder / names[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian and ds.Modality == "MR"
    key = "series-" + hashlib.sha1(ds.SeriesInstanceUID.encode()).hexdigest()[:12]
    assert find_dicom_series(folder) == {key: sorted(folder / n for n in names)}
    assert is_dicom_dir(folder) and not is_dicom_dir(tmp_path / "nothing")


def test_two_series_must_be_chosen(tmp_path: Path, template: nib.Nifti1Image) -> None:
    """A folder with two series lists both keys (description, slices, matrix); ``series=`` picks one."""
    _write(template, tmp_path / "a", n_slices=12, series_description="first")
    _write(template, tmp_path / "b" / "deep", n_slices=15, series_description="second")
    (tmp_path / "notes.txt").write_text("ignored")
    keys = {len(v): k for k, v in find_dicom_series(tmp_path).items()}
    assert sorted(keys) == [12, 15]
    with pytest.raises(VolumeReadError) as err:
        load_volume(tmp_path)
    _assert_clean_error(
        err,
        tmp_path,
        "2 DICOM series",
        f"{keys[12]} (first, 12 slices, 48x56)",
        f"{keys[15]} (second, 15 slices, 48x56)",
    )
    img = load_volume(tmp_path, series=keys[15])
    assert tuple(img.shape) == (1, 48, 56, 15)
    np.testing.assert_allclose(img[0].numpy(), template.get_fdata()[..., :15], atol=2e-3)
    assert img.meta["filename_or_obj"] == str(tmp_path / keys[15])
    assert img.meta["series_description"] == "second"
    uid = pydicom.dcmread(find_dicom_series(tmp_path)[keys[15]][0], stop_before_pixels=True).SeriesInstanceUID
    _assert_matches_itk(img, tmp_path, series_uid=uid)
    with pytest.raises(VolumeReadError) as err:
        load_volume(tmp_path, series="series-000000000000")
    _assert_clean_error(err, tmp_path, "no series 'series-000000000000'", keys[12], keys[15])


def _move_slice(path: Path, mm: float) -> None:
    """Shift one slice by ``mm`` along its normal (header edit)."""
    ds = pydicom.dcmread(path)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    ds.ImagePositionPatient = [
        round(v, 6) for v in np.array(ds.ImagePositionPatient, float) + mm * np.cross(iop[:3], iop[3:])
    ]
    ds.save_as(path)


def _edit(path: Path, **tags) -> None:
    """Set header tags of one file."""
    ds = pydicom.dcmread(path)
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path)


@pytest.mark.parametrize(
    "defect, fragments",
    [
        ("missing", ["missing slice between positions", "(spacing 1.0 mm)"]),
        ("duplicate", ["duplicated slice position"]),
        ("uneven", ["uneven slice spacing", "median spacing 1.0 mm"]),
        ("orientation", ["inconsistent ImageOrientationPatient"]),
        ("matrix", ["inconsistent matrix size"]),
        ("multiframe", ["multi-frame DICOM (NumberOfFrames=2)"]),
    ],
)
def test_invalid_series(tmp_path: Path, template: nib.Nifti1Image, defect: str, fragments: list[str]) -> None:
    """Each defect gives a one-line error naming the folder and no patient name/id."""
    files = _write(template, tmp_path, n_slices=12)
    if defect == "missing":
        files[5].unlink()
    elif defect == "duplicate":
        shutil.copy(files[5], tmp_path / "copy_of_slice.dcm")
    elif defect == "uneven":
        _move_slice(files[5], 0.3)
    elif defect == "orientation":
        _edit(files[3], ImageOrientationPatient=[1, 0, 0, 0, 0, 1])
    elif defect == "matrix":
        uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        small = template.get_fdata(dtype=np.float32)[:40, :40, 12:14]
        write_dicom_series(small, _oblique_affine("LPS", (0.9, 1.1, 1.0)), tmp_path / "extra", series_uid=uid)
    elif defect == "multiframe":
        _edit(files[0], NumberOfFrames=2)
    with pytest.raises(VolumeReadError) as err:
        load_volume(tmp_path)
    msg = _assert_clean_error(err, tmp_path, *fragments)
    if defect == "missing":
        assert msg.count(" mm") == 2
    if defect == "uneven":  # the shifted slice leaves one 1.3 mm and one 0.7 mm gap
        assert re.search(r"uneven slice spacing: (1\.3|0\.7) mm between", msg)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mgz"])
def test_nifti_and_mgz(tmp_path: Path, template: nib.Nifti1Image, suffix: str) -> None:
    """NIfTI and float32 MGZ (through MONAI's NibabelReader) equal the template crop and its affine."""
    data = template.get_fdata(dtype=np.float32)
    affine = _oblique_affine("PSR")
    path = tmp_path / f"t1{suffix}"
    image_cls = nib.MGHImage if suffix == ".mgz" else nib.Nifti1Image
    nib.save(image_cls(data, affine), path)
    img = load_volume(path)
    assert tuple(img.shape) == (1, *data.shape) and img.dtype.is_floating_point
    np.testing.assert_array_equal(img[0].numpy(), data)
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)
    assert img.meta["source_format"] == ("mgz" if suffix == ".mgz" else "nifti")
    assert img.meta["filename_or_obj"] == str(path)
    assert tuple(img.meta["spatial_shape"]) == data.shape


def test_bad_paths(tmp_path: Path) -> None:
    """Unknown suffix, missing path, corrupt file, ``series=`` on a file and an empty folder are refused."""
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(VolumeReadError) as err:
        load_volume(txt)
    _assert_clean_error(err, txt, "unsupported file type '.txt'")
    with pytest.raises(VolumeReadError) as err:
        load_volume(tmp_path / "missing.nii.gz")
    _assert_clean_error(err, tmp_path / "missing.nii.gz", "no such file or directory")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip" * 3)
    with pytest.raises(VolumeReadError) as err:
        load_volume(bad)
    _assert_clean_error(err, bad, "cannot read as nifti")
    with pytest.raises(VolumeReadError) as err:
        load_volume(bad, series="series-0")
    _assert_clean_error(err, bad, "series= only applies to DICOM folders")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(VolumeReadError) as err:
        load_volume(empty)
    _assert_clean_error(err, empty, "no DICOM image files found")
    assert not is_dicom_dir(empty)


def test_nibabel_siemens_mosaic_refused(tmp_path: Path) -> None:
    """nibabel's ``0.dcm`` / ``1.dcm`` are Siemens DWI mosaics (slices tiled in one 256x256 frame).

    Choice: they are refused with a clear error rather than un-tiled, because un-tiling needs Siemens'
    private CSA header (slice count, true slice positions) and these readers only trust standard tags;
    dcm2niix converts such series correctly.
    """
    spec = importlib.util.find_spec("nibabel")
    data = Path(spec.submodule_search_locations[0]) / "tests" / "data"
    if not (data / "0.dcm").is_file():
        pytest.skip("nibabel's test DICOM files are not installed")
    for name in ("0.dcm", "1.dcm"):
        shutil.copy(data / name, tmp_path / name)
    assert len(find_dicom_series(tmp_path)) == 1
    with pytest.raises(VolumeReadError) as err:
        load_volume(tmp_path)
    _assert_clean_error(err, tmp_path, "Siemens mosaic", "dcm2niix")
