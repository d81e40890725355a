"""NRRD, MetaImage, MINC and PAR/REC: reading through ``mriae.io.load_volume`` and writing back like the input.

Inputs are real data: a 40 x 48 x 36 crop of nilearn's ICBM152 T1 template written by ITK itself (oblique,
improper direction matrix, 0.9 x 1.1 x 2.0 mm, non-zero origin), nibabel's real MINC1 / MINC2 test files,
and nibabel's real Philips PAR headers (T1.PAR with a REC written here from the template, and a 3-dynamic
EPI PAR/REC pair).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import ITKReader
from monai.transforms import Compose, LoadImage, Orientationd

from mriae.io import (
    SaveLikeInputd,
    VolumeReadError,
    VolumeWriteError,
    load_volume,
    write_dicom_series,
    write_like_input,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING = (0.9, 1.1, 2.0)
ORIGIN = (12.5, -30.25, 7.75)
SHAPE = (40, 48, 36)
GEOMETRY_KEYS = {"affine", "original_affine", "spatial_shape", "space", "original_channel_dim", "spacing"}
GEOMETRY_KEYS |= {"filename_or_obj", "source_format", "minc_version"}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


NIBABEL_DATA = _package_dir("nibabel") / "tests" / "data"


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


# ITK (LPS) direction: axes permuted with one flip (determinant -1), then rotated 20 degrees obliquely
DIRECTION = _rotation([1, 2, 0.5], 20) @ np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]])
LPS_AFFINE = np.eye(4)
LPS_AFFINE[:3, :3] = DIRECTION @ np.diag(SPACING)
LPS_AFFINE[:3, 3] = ORIGIN


@pytest.fixture(scope="module")
def icbm() -> np.ndarray:
    """The whole ICBM152 2009a T1 template (197 x 233 x 189) as float32."""
    base = _package_dir("nilearn")
    path = base / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" if base else None
    if path is None or not path.is_file():
        pytest.skip("nilearn's ICBM152 template is not installed")
    return nib.load(path).get_fdata(dtype=np.float32)


@pytest.fixture(scope="module")
def template(icbm: np.ndarray) -> np.ndarray:
    """A 40 x 48 x 36 crop through the brain."""
    return np.ascontiguousarray(icbm[78:118, 85:133, 75:111])


def _itk_image(vol: np.ndarray):
    """``vol`` as an ITK image with the oblique test geometry; ITK index (i, j, k) holds vol[i, j, k]."""
    img = itk.image_from_array(np.ascontiguousarray(vol.T))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(itk.matrix_from_array(DIRECTION))
    return img


def _write_par_rec(folder: Path, icbm: np.ndarray, rec_name: str = "T1.rec") -> tuple[Path, np.ndarray]:
    """nibabel's real T1.PAR (80 x 80 x 10, 1.9 x 1.9 x 10 mm, oblique) with a REC of template voxels.

    The REC holds one 80 x 80 int16 image per PAR line, at its 'index in REC file', x fastest. Returns
    the PAR path and the expected displayed values (PV * RS + RI of each line).
    """
    par = folder / "T1.PAR"
    shutil.copy(NIBABEL_DATA / "T1.PAR", par)
    with open(par, encoding="latin-1") as f:
        defs = nib.parrec.PARRECHeader.from_fileobj(f).image_defs
    stored = np.round(icbm[58:138, 70:150, 80:90]).astype(np.int16)
    rec = np.zeros((80, 80, len(defs)), dtype="<i2", order="F")
    expected = np.zeros(stored.shape, dtype=np.float64)
    for line in defs:
        z = int(line["slice number"]) - 1
        rec[:, :, int(line["index in REC file"])] = stored[:, :, z]
        expected[:, :, z] = stored[:, :, z] * line["rescale slope"] + line["rescale intercept"]
    (folder / rec_name).write_bytes(rec.tobytes(order="F"))
    return par, expected.astype(np.float32)


@pytest.fixture(scope="module")
def parrec(tmp_path_factory, icbm: np.ndarray) -> tuple[Path, np.ndarray]:
    """T1.PAR + T1.rec (lower case, as some exports name it) and the expected values."""
    return _write_par_rec(tmp_path_factory.mktemp("parrec"), icbm)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, parrec: tuple[Path, np.ndarray], template: np.ndarray) -> dict[str, Path]:
    """One input per format, each in its own folder (detached data files share the name ``t.raw``)."""
    root = tmp_path_factory.mktemp("inputs")
    img = _itk_image(template)
    paths = {}
    for name, compress in (("nrrd", True), ("nhdr", False), ("mha", False), ("mhd", False), ("mnc", False)):
        (root / name).mkdir()
        paths[name] = root / name / f"t.{name}"
        itk.imwrite(img, str(paths[name]), compression=compress)
    ras = LPS_TO_RAS @ LPS_AFFINE
    for name, suffix, cls in (("nifti", ".nii.gz", nib.Nifti1Image), ("nii", ".nii", nib.Nifti1Image)):
        (root / name).mkdir()
        paths[name] = root / name / f"t{suffix}"
        out = cls(template, ras)
        out.header.set_qform(ras, code="scanner")  # both forms set, different codes: both must survive
        out.header.set_sform(ras, code="aligned")
        nib.save(out, paths[name])
    (root / "mgz").mkdir()
    paths["mgz"] = root / "mgz" / "t.mgz"
    nib.save(nib.MGHImage(template, ras), paths["mgz"])
    (root / "minc1").mkdir()
    paths["minc1"] = root / "minc1" / "minc1_1_scale.mnc"
    shutil.copy(NIBABEL_DATA / "minc1_1_scale.mnc", paths["minc1"])
    paths["parrec"] = parrec[0]
    paths["dicom"] = root / "dicom" / "t1_series"
    write_dicom_series(template[..., :12], ras, paths["dicom"])
    return paths


def _one_line(err: pytest.ExceptionInfo, path: Path, fragment: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert fragment in msg, msg
    return msg


@pytest.mark.parametrize("name", ["nrrd", "nhdr", "mha", "mhd", "mnc"])
def test_itk_written_volumes_load(inputs: dict[str, Path], template: np.ndarray, name: str) -> None:
    """Each ITK-written file loads to the template's voxels and its oblique geometry, as a RAS affine.

    For .mnc the file's world coordinates are what ITK wrote (ITK's LPS numbers, unconverted: the wheel's
    MINC IO does not convert), read per the MINC convention as RAS; MONAI's plain ITKReader would flip
    x and y of that.
    """
    img = load_volume(inputs[name])
    assert tuple(img.shape) == (1, *SHAPE) and img.dtype == torch.float32
    np.testing.assert_array_equal(img[0].numpy(), template)
    expected = LPS_AFFINE if name == "mnc" else LPS_TO_RAS @ LPS_AFFINE
    np.testing.assert_allclose(img.affine.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(img.meta["spacing"], SPACING, rtol=0, atol=1e-9)
    assert img.meta["source_format"] == {
        "nhdr": "nrrd",
        "mha": "metaimage",
        "mhd": "metaimage",
        "mnc": "minc",
    }.get(name, name)
    assert str(img.meta["space"]) == "RAS" and set(map(str, img.meta)) <= GEOMETRY_KEYS
    plain = LoadImage(reader=ITKReader(), image_only=True, ensure_channel_first=True)(str(inputs[name]))
    np.testing.assert_allclose(
        plain.affine.numpy(), LPS_TO_RAS @ expected if name == "mnc" else expected, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "minc1, minc2", [("minc1_1_scale.mnc", "minc2_1_scale.mnc"), ("minc1-no-att.mnc", "minc2-no-att.mnc")]
)
def test_minc2_through_itk_matches_minc1_through_nibabel(tmp_path: Path, minc1: str, minc2: str) -> None:
    """nibabel ships each image as MINC1 and as MINC2: ITK's reading of the MINC2 (axes in ITK order, the
    reverse of MINC's file order) equals nibabel's reading of the MINC1, geometry and voxels."""
    one, two = load_volume(NIBABEL_DATA / minc1), load_volume(NIBABEL_DATA / minc2)
    assert (one.meta["minc_version"], two.meta["minc_version"]) == (1, 2)
    reverse = np.eye(4)[[2, 1, 0, 3]]  # voxel (i, j, k) of the MINC2 reading is (k, j, i) of the MINC1 one
    np.testing.assert_allclose(two.affine.numpy(), one.affine.numpy() @ reverse, rtol=0, atol=1e-6)
    np.testing.assert_allclose(two[0].numpy(), one[0].numpy().transpose(2, 1, 0), rtol=1e-6, atol=1e-7)
    assert float(one.max()) > 0


def test_itk_written_minc_read_by_nibabel(inputs: dict[str, Path]) -> None:
    """Where h5py is installed, nibabel's reading of the ITK-written MINC2 equals ours."""
    pytest.importorskip("h5py")
    ours, ref = load_volume(inputs["mnc"]), nib.load(inputs["mnc"])
    reverse = np.eye(4)[[2, 1, 0, 3]]
    np.testing.assert_allclose(ours.affine.numpy(), ref.affine @ reverse, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours[0].numpy(), ref.get_fdata(dtype=np.float32).transpose(2, 1, 0))


def test_parrec_loads(parrec: tuple[Path, np.ndarray]) -> None:
    """A real Philips T1.PAR with a lower-case .rec beside it: nibabel's scanner affine, displayed values."""
    path, expected = parrec
    with open(path, encoding="latin-1") as f:
        header = nib.parrec.PARRECHeader.from_fileobj(f)
    img = load_volume(path)
    assert tuple(img.shape) == (1, 80, 80, 10) and img.dtype == torch.float32
    np.testing.assert_allclose(img[0].numpy(), expected, rtol=1e-6, atol=0)
    assert float(img.max()) > 100 * float(header.image_defs["rescale slope"].max())  # brain, not an empty REC
    np.testing.assert_allclose(img.affine.numpy(), header.get_affine(origin="scanner"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(img.meta["spacing"], [1.912, 1.912, 10.0], rtol=0, atol=1e-3)
    assert img.meta["source_format"] == "parrec" and set(map(str, img.meta)) <= GEOMETRY_KEYS
    name = header.general_info["patient_name"]  # the PAR header holds a patient name: it stays out
    assert len(name) > 3 and name not in repr(dict(img.meta))


def test_parrec_with_several_volumes_refused(tmp_path: Path) -> None:
    """nibabel's real 3-dynamic EPI PAR/REC pair is refused with the count."""
    for suffix in (".PAR", ".REC"):
        shutil.copy(NIBABEL_DATA / f"phantom_EPI_asc_CLEAR_2_1{suffix}", tmp_path)
    path = tmp_path / "phantom_EPI_asc_CLEAR_2_1.PAR"
    with pytest.raises(VolumeReadError) as err:
        load_volume(path)
    _one_line(err, path, "holds 3 volumes (dynamics, echoes or image types; array shape (64, 64, 9, 3))")


def _cut(src: Path, dst: Path, n: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n])
    return dst


def _broken(case: str, inputs: dict[str, Path], tmp: Path) -> Path:
    """Build the broken file of ``case`` in ``tmp`` from the good inputs."""
    if case == "nrrd_gzip_truncated":
        return _cut(inputs["nrrd"], tmp / "t.nrrd", inputs["nrrd"].stat().st_size // 2)
    if case == "nrrd_raw_truncated":
        itk.imwrite(itk.imread(str(inputs["nrrd"])), str(tmp / "raw.nrrd"), compression=False)
        return _cut(tmp / "raw.nrrd", tmp / "t.nrrd", 5000)
    if case == "nrrd_header_cut":
        return _cut(inputs["nrrd"], tmp / "t.nrrd", 120)
    if case == "nrrd_not_nrrd":
        (tmp / "t.nrrd").write_text("exported by a viewer\n" * 4)
        return tmp / "t.nrrd"
    if case in ("nhdr_missing_data", "mhd_missing_raw"):
        name = "nhdr" if case.startswith("nhdr") else "mhd"
        shutil.copy(inputs[name], tmp / f"t.{name}")  # without its t.raw
        return tmp / f"t.{name}"
    if case == "mhd_short_raw":
        shutil.copy(inputs["mhd"], tmp / "t.mhd")
        _cut(inputs["mhd"].parent / "t.raw", tmp / "t.raw", 3000)
        return tmp / "t.mhd"
    if case == "mha_truncated":
        return _cut(inputs["mha"], tmp / "t.mha", 3000)
    if case == "mnc_truncated":
        return _cut(inputs["mnc"], tmp / "t.mnc", 3000)
    if case == "mnc_not_minc":
        (tmp / "t.mnc").write_bytes(b"\0" * 64)
        return tmp / "t.mnc"
    par = tmp / "T1.PAR"
    if case == "par_header_cut":
        _cut(inputs["parrec"], par, inputs["parrec"].stat().st_size // 2)
        shutil.copy(inputs["parrec"].with_suffix(".rec"), tmp / "T1.REC")
    elif case == "par_without_rec":
        shutil.copy(inputs["parrec"], par)
    elif case == "par_short_rec":
        shutil.copy(inputs["parrec"], par)
        _cut(inputs["parrec"].with_suffix(".rec"), tmp / "T1.REC", 64000)
    elif case == "rec_given":
        return Path(shutil.copy(inputs["parrec"].with_suffix(".rec"), tmp / "T1.REC"))
    elif case == "raw_given":
        return Path(shutil.copy(inputs["mhd"].parent / "t.raw", tmp / "t.raw"))
    return par


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("nrrd_gzip_truncated", "cannot read as nrrd: expected 276480 bytes but received"),
        ("nrrd_raw_truncated", "truncated: 4"),
        ("nrrd_header_cut", "NRRD header has no 'dimension' field (truncated header?)"),
        ("nrrd_not_nrrd", "not a NRRD file"),
        ("nhdr_missing_data", "the data file 't.raw' that the header names is missing"),
        ("mhd_missing_raw", "the data file 't.raw' that the header names is missing"),
        ("mhd_short_raw", "truncated: 3000 bytes in data file 't.raw', the header describes 276480"),
        ("mha_truncated", "bytes after the header, the header describes 276480"),
        ("mnc_truncated", "cannot read as minc"),
        ("mnc_not_minc", "not a MINC file"),
        ("par_header_cut", "cannot read as PAR/REC (PARRECError"),
        ("par_without_rec", "no REC data file beside the PAR header"),
        ("par_short_rec", "cannot read the voxel data (OSError: Expected 128000 bytes, got 64000 bytes"),
        ("rec_given", "this is a data file; pass its .PAR header instead"),
        ("raw_given", "this is a data file; pass its .mhd or .nhdr header instead"),
    ],
)
def test_broken_files_one_line(
    tmp_path: Path, inputs: dict[str, Path], capfd: pytest.CaptureFixture, case: str, fragment: str
) -> None:
    """Each broken header or data file gives a one-line error naming the file; ITK's, HDF5's and
    MetaImage's own diagnostics do not reach the terminal."""
    path = _broken(case, inputs, tmp_path)
    capfd.readouterr()
    with pytest.raises(VolumeReadError) as err:
        load_volume(path)
    msg = _one_line(err, path, fragment)
    if case == "mnc_truncated":
        assert f"(file truncated: 3000 of {inputs['mnc'].stat().st_size} bytes)" in msg
    printed = capfd.readouterr()
    for noise in ("HDF5-DIAG", "MetaImage:", "ITK ERROR", "[nrrd]", "MINC"):
        assert noise not in printed.err + printed.out


def _itk_geometry(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ITK's spacing, origin, direction (LPS) and voxels (in ITK index order) of a file or DICOM folder."""
    if path.is_dir():
        names = itk.GDCMSeriesFileNames.New()
        names.SetDirectory(str(path))
        img = itk.imread(names.GetFileNames(names.GetSeriesUIDs()[0]), itk.F)
    else:
        img = itk.imread(str(path), itk.F)
    return (
        np.asarray(img.GetSpacing()),
        np.asarray(img.GetOrigin()),
        itk.array_from_matrix(img.GetDirection()),
        itk.array_from_image(img).T,
    )


WRITTEN = {  # input -> name of the output with postfix "recon"
    "nrrd": "t_recon.nrrd",
    "nhdr": "t_recon.nhdr",
    "mha": "t_recon.mha",
    "mhd": "t_recon.mhd",
    "mnc": "t_recon.nii.gz",
    "minc1": "minc1_1_scale_recon.nii.gz",
    "parrec": "T1_recon.nii.gz",
    "nifti": "t_recon.nii.gz",
    "nii": "t_recon.nii",
    "mgz": "t_recon.mgz",
    "dicom": "t1_series_recon.nii.gz",
}


@pytest.mark.parametrize("name", list(WRITTEN))
def test_save_like_input_overlays_input(tmp_path: Path, inputs: dict[str, Path], name: str) -> None:
    """Load, reorient (RIA, as inference does) and invert, save with ``SaveLikeInputd``: the output is in
    the input's format where it can be written (NIfTI otherwise) and overlays the input as ITK and nibabel
    read it (spacing, origin, direction / affine to 1e-5), with equal voxel values."""
    img = load_volume(inputs[name])
    ras = np.asarray(img.meta["original_affine"], dtype=np.float64)
    pipeline = Compose([Orientationd(keys="pred", axcodes="RIA", labels=None)])
    moved = pipeline({"pred": img})
    assert not np.allclose(moved["pred"].affine.numpy(), ras, atol=1e-3)  # the round trip does something
    data = pipeline.inverse(moved)
    SaveLikeInputd(keys="pred", output_dir=tmp_path / "out", output_postfix="recon")(data)
    out = Path(data["pred"].meta["saved_to"])
    assert out == tmp_path / "out" / WRITTEN[name] and out.is_file()

    again = load_volume(out)
    np.testing.assert_array_equal(again[0].numpy(), img[0].numpy())
    np.testing.assert_allclose(again.affine.numpy(), ras, rtol=0, atol=1e-5)

    lps = LPS_TO_RAS @ ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if name != "mgz":  # ITK has no MGH reader
        sp, origin, direction, voxels = _itk_geometry(out)
        np.testing.assert_allclose(sp, spacing, rtol=0, atol=1e-5)
        np.testing.assert_allclose(origin, lps[:3, 3], rtol=0, atol=1e-5)
        np.testing.assert_allclose(direction, lps[:3, :3] / spacing, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(voxels, img[0].numpy())
    if name in ("nrrd", "nhdr", "mha", "mhd", "nifti", "nii", "dicom"):  # and as ITK reads the input itself
        for got, want in zip(_itk_geometry(out)[:3], _itk_geometry(inputs[name])[:3]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if out.name.endswith((".nii", ".nii.gz", ".mgz")):
        written = nib.load(out)
        np.testing.assert_allclose(written.affine, ras, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), img[0].numpy())
    if name in ("nifti", "nii"):  # the input's header is the template: both forms and codes kept
        src, dst = nib.load(inputs[name]).header, nib.load(out).header
        for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "srow_x", "srow_z"):
            np.testing.assert_array_equal(dst[key], src[key])


def test_write_like_input_refuses_outputs_off_the_grid(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """Not inverted (other shape, or same shape and another affine), several channels, or writing over
    the input: one-line errors, nothing written."""
    img = load_volume(inputs["nrrd"])
    moved = Orientationd(keys="image", axcodes="RIA", labels=None)({"image": img})["image"]
    with pytest.raises(VolumeWriteError) as err:
        write_like_input(moved, tmp_path, "recon")
    _one_line(err, inputs["nrrd"], "the output's shape (36, 48, 40) is not the input's (40, 48, 36)")
    flipped = img.clone()
    flipped.affine = torch.as_tensor(img.affine.numpy() @ np.diag([-1.0, 1, 1, 1]))
    with pytest.raises(VolumeWriteError) as err:
        write_like_input(flipped, tmp_path, "recon")
    _one_line(err, inputs["nrrd"], "the output's affine differs from the input's by")
    with pytest.raises(VolumeWriteError) as err:
        write_like_input(torch.zeros((2, *SHAPE)), tmp_path, "recon", meta=img.meta)
    _one_line(err, inputs["nrrd"], "the output has 2 channels")
    with pytest.raises(VolumeWriteError) as err:
        write_like_input(img, inputs["nrrd"].parent)
    _one_line(err, inputs["nrrd"], "the output would overwrite the input")
    assert list(tmp_path.iterdir()) == []


def test_prepare_and_inference_list_the_new_formats(tmp_path: Path) -> None:
    """``prepare --source nifti`` (alias ``volumes``) and inference list headers, not data files; one name
    in two formats gives two subjects."""
    from mriae.prepare import sources
    from mriae.io import VOLUME_SUFFIXES
    from mriae.infer.transforms import list_inputs

    assert sources.VOLUME_SUFFIXES == VOLUME_SUFFIXES
    names = [
        "a.nrrd",
        "a.nii.gz",
        "b.nhdr",
        "b.raw.gz",
        "c.mha",
        "d.mhd",
        "d.zraw",
        "e.mnc",
        "F.PAR",
        "F.REC",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    headers = sorted(tmp_path / n for n in names if not n.endswith((".raw.gz", ".zraw", ".REC")))
    for source in ("nifti", "volumes"):
        subjects = sources.list_subjects(source, tmp_path)
        assert sorted(s.path for s in subjects) == headers
        assert sorted(s.id for s in subjects) == [
            "F_PAR",
            "a_nii_gz",
            "a_nrrd",
            "b_nhdr",
            "c_mha",
            "d_mhd",
            "e_mnc",
        ]
    assert [Path(d["image"]) for d in list_inputs(tmp_path, validate=False)] == headers
    # validated (what inference does), the empty files are all named and nothing runs
    from mriae.errors import InputErrors

    with pytest.raises(InputErrors) as err:
        list_inputs(tmp_path)
    assert all(str(h) in str(err.value) for h in headers) and "7 of 7 inputs cannot be used" in str(err.value)


def test_inference_config_with_save_like_input(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """res_unet's inference.json with ``SaveLikeInputd`` in place of its ``SaveImaged`` entries (untrained
    weights): a .nrrd in gives ``t_recon.nrrd`` and ``t_residual.nrrd`` on the input's grid."""
    from monai.bundle import ConfigParser

    config = Path(__file__).resolve().parents[1] / "bundles/res_unet/configs/inference.json"
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["input_path"], parser["output_dir"] = str(inputs["nrrd"]), str(tmp_path)
    parser["device"] = "$torch.device('cpu')"
    # untrained weights with their plan (native grid, as the shipped denoiser) beside them
    from mriae.networks.checkpoint import save_model

    net = parser.get_parsed_content("network_def", instantiate=True)
    plan = {"spacing": [1.0, 1.0, 1.0], "slice_size": 256, "clip": False, "inference_grid": "native"}
    ckpt = save_model(net, tmp_path / "models" / "model.pt", plan, context=parser["context"], axes=[0, 1, 2])
    parser["ckpt_path"] = str(ckpt)
    post = [
        t
        for t in parser["postprocessing"]["transforms"]
        if t["_target_"] not in ("SaveImaged", "mriae.io.SaveLikeInputd")
    ]
    for key, postfix in (("pred", "recon"), ("residual", "residual")):
        post.append(
            {
                "_target_": "mriae.io.SaveLikeInputd",
                "keys": key,
                "output_dir": "@output_dir",
                "output_postfix": postfix,
            }
        )
    parser["postprocessing"]["transforms"] = post
    parser.get_parsed_content("evaluator").run()
    want = _itk_geometry(inputs["nrrd"])
    for name in ("t_recon.nrrd", "t_residual.nrrd"):
        got = _itk_geometry(tmp_path / name)
        for a, b in zip(got[:3], want[:3]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        assert got[3].shape == SHAPE and np.isfinite(got[3]).all() and float(np.abs(got[3]).max()) > 0
