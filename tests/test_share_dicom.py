"""DICOM in, DICOM out (mriae.share.dicom_out) on a real positioned T1 series built from the ICBM152
template: series selection, volume/affine round trips, the derived series, the residual parametric map,
research-mode de-identification, and a store/retrieve round trip through a real Orthanc server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import SENTINEL_BYTES, SENTINELS, check_derived, patch_tags as _patch
from conftest import dicom_crop as _crop, flipped_rows as _flipped, match_source as _match_source
from mriae.errors import InputError, MissingFileError
from mriae.io.dicom import LPS_TO_RAS, write_dicom_series
from mriae.share import dicom_out as dout

BUNDLE, VERSION = "res_unet", "1.4.2"


# ----------------------------------------------------------------------------------------------- data


def _same_world(vol: np.ndarray, affine: np.ndarray, target: np.ndarray, shape) -> np.ndarray:
    """``vol`` (RAS ``affine``) read at the voxels of the grid ``target``/``shape``, which must be the
    same world grid up to axis permutation and flips (checked)."""
    m = np.linalg.inv(affine) @ target
    assert np.allclose(m, np.round(m), atol=1e-6)
    idx = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    ijk = np.round(idx @ m[:3, :3].T + m[:3, 3]).astype(int)
    assert ijk.min() >= 0 and np.all(ijk.max(0) < vol.shape)
    return vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]].reshape(shape)


def _messages_clean(msg: str) -> None:
    for v in SENTINELS.values():
        assert v not in msg
    assert "SENTINEL" not in msg


@pytest.fixture(scope="module")
def crop():
    return _crop()


@pytest.fixture(scope="module")
def study(tmp_path_factory, crop):
    """A study folder: the T1 acquisition (ORIGINAL\\PRIMARY, sentinel identifiers), a DERIVED MR series
    and an 'OT' series of the same study."""
    vol, aff = _flipped(*crop)
    root = tmp_path_factory.mktemp("study")
    study_uid = pydicom.uid.generate_uid()
    t1 = write_dicom_series(vol, aff, root / "t1", series_description="T1 MPRAGE", study_uid=study_uid,
                            image_type=("ORIGINAL", "PRIMARY", "M", "ND"))
    _patch(t1, SeriesNumber=3, Manufacturer="ACME", **SENTINELS)
    der = write_dicom_series(vol, aff, root / "derived", series_description="T1 MPR", study_uid=study_uid)
    _patch(der, SeriesNumber=4, **SENTINELS)
    ot = write_dicom_series(vol, aff, root / "ot", series_description="screen capture", study_uid=study_uid,
                            image_type=("ORIGINAL", "PRIMARY"), modality="OT")
    _patch(ot, SeriesNumber=5, **SENTINELS)
    (root / "notes.txt").write_text("not DICOM\n")
    return root


@pytest.fixture(scope="module")
def sel(study):
    return dout.select_series(study)


@pytest.fixture(scope="module")
def volume(sel):
    return dout.series_volume(sel)


def _denoise(v: np.ndarray) -> np.ndarray:
    """A real smoothing (3-tap mean along rows and columns): what the network would return."""
    out = v.astype(np.float64)
    for ax in (1, 2):
        out = (np.roll(out, 1, ax) + out + np.roll(out, -1, ax)) / 3
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------- selection


def test_select_picks_the_acquisition(study, sel):
    t1 = sorted((study / "t1").glob("*.dcm"))
    assert sel.uid == pydicom.dcmread(t1[0]).SeriesInstanceUID
    assert sel.description == "T1 MPRAGE"
    assert sel.shape == (24, 56, 48) and len(sel.headers) == 24
    assert set(sel.files) == set(t1)
    assert all(not hasattr(h, "PixelData") for h in sel.headers)
    # sorted along the normal: written top-down, so the files come back in reverse
    assert sel.files == t1[::-1]
    normal = np.cross(*np.reshape([float(v) for v in sel.headers[0].ImageOrientationPatient], (2, 3)))
    pos = [np.dot([float(v) for v in h.ImagePositionPatient], normal) for h in sel.headers]
    assert np.all(np.diff(pos) > 0.99)


def test_select_ambiguous_lists_both_and_names_option(study, tmp_path, crop):
    shutil.copytree(study, tmp_path / "s", ignore=shutil.ignore_patterns("notes.txt"))
    vol, aff = crop
    rep = write_dicom_series(vol, aff, tmp_path / "s" / "t1b", series_description="T1 repeat",
                             image_type=("ORIGINAL", "PRIMARY"))
    _patch(rep, SeriesNumber=7, **SENTINELS)
    uids = {pydicom.dcmread(f).SeriesInstanceUID for f in (rep[0], next((study / "t1").glob("*.dcm")))}
    with pytest.raises(InputError) as e:
        dout.select_series(tmp_path / "s")
    msg = str(e.value)
    assert "\n" not in msg and "--series" in msg and str(tmp_path / "s") in msg
    assert all(u in msg for u in uids)
    assert "T1 repeat" in msg and "T1 MPRAGE" in msg and "24 slices" in msg and "SeriesNumber 7" in msg
    assert "MPR'" not in msg and "screen capture" not in msg  # rejected ones are not offered
    _messages_clean(msg)
    # choosing by uid works for both
    for u in uids:
        s = dout.select_series(tmp_path / "s", series_uid=u)
        assert s.uid == u and len(s.files) == 24


def test_select_by_uid_and_refusals(study, sel):
    assert dout.select_series(study, series_uid=sel.uid).files == sel.files
    der_uid = pydicom.dcmread(next((study / "derived").glob("*.dcm"))).SeriesInstanceUID
    with pytest.raises(InputError) as e:
        dout.select_series(study, series_uid=der_uid)
    assert "DERIVED" in str(e.value) and "not usable" in str(e.value)
    _messages_clean(str(e.value))
    with pytest.raises(InputError) as e:
        dout.select_series(study, series_uid="1.2.3.4")
    assert "no series with SeriesInstanceUID 1.2.3.4" in str(e.value) and sel.uid in str(e.value)
    _messages_clean(str(e.value))
    with pytest.raises(MissingFileError):
        dout.select_series(study / "absent")
    with pytest.raises(InputError, match="no DICOM image files"):
        dout.select_series(_empty(study))


def _empty(study: Path) -> Path:
    p = study.parent / (study.name + "-empty")
    p.mkdir(exist_ok=True)
    (p / "readme.txt").write_text("x")
    return p


def test_select_no_candidate_gives_each_reason(study, tmp_path, crop):
    root = tmp_path / "s"
    shutil.copytree(study / "derived", root / "derived")
    shutil.copytree(study / "ot", root / "ot")
    vol, aff = crop
    short = write_dicom_series(vol[:, :, :4], aff, root / "loc", series_description="localizer",
                               image_type=("ORIGINAL", "PRIMARY"))
    _patch(short, SeriesNumber=1, **SENTINELS)
    gap = write_dicom_series(vol, aff, root / "gap", series_description="T1 gap", image_type=("ORIGINAL", "PRIMARY"))
    _patch(gap, SeriesNumber=9, **SENTINELS)
    gap[10].unlink()
    with pytest.raises(InputError) as e:
        dout.select_series(root)
    msg = str(e.value)
    assert "\n" not in msg and "4 series rejected" in msg
    assert "series 4 'T1 MPR': ImageType DERIVED/SECONDARY" in msg
    assert "series 5 'screen capture': modality OT, not MR" in msg
    assert "series 1 'localizer': only 4 slice(s), fewer than 8" in msg
    assert "series 9 'T1 gap': missing slice" in msg
    _messages_clean(msg)
    # the localizer becomes acceptable with a lower threshold (and is then the only candidate)
    assert dout.select_series(root, min_slices=4).description == "localizer"


# ------------------------------------------------------------------------------------------ volumes


def test_series_volume_values_and_affine(crop, sel, volume):
    vol_xyz, aff_ras = crop
    v, a_lps = volume
    assert v.dtype == np.float32 and v.shape == sel.shape
    # independent oracle: series index -> world -> index of the crop that was written
    expected = _same_world(vol_xyz, aff_ras, LPS_TO_RAS @ a_lps, v.shape)
    step = (float(vol_xyz.max()) - float(vol_xyz.min())) / 65534
    assert np.abs(v - expected).max() <= step / 2 + 1e-4
    assert np.ptp(v) > 100  # real anatomy, not a constant
    # affine consistent with the tags of every slice
    for s, h in enumerate(sel.headers):
        assert np.allclose((a_lps @ [s, 0, 0, 1])[:3], [float(x) for x in h.ImagePositionPatient], atol=1e-4)
    iop = np.array([float(x) for x in sel.headers[0].ImageOrientationPatient])
    dr, dc = (float(x) for x in sel.headers[0].PixelSpacing)
    assert np.allclose(a_lps[:3, 2], iop[:3] * dc) and np.allclose(a_lps[:3, 1], iop[3:] * dr)


def test_nifti_overlays_series_and_comes_back(tmp_path, crop, sel, volume):
    import nibabel as nib

    v, _ = volume
    nib.save(dout.series_nifti(sel, v), tmp_path / "in.nii.gz")
    img = nib.load(tmp_path / "in.nii.gz")
    assert img.shape == (48, 56, 24)
    # the written crop and the NIfTI agree voxel by voxel in world space (same grid as the source)
    vol_xyz, aff_ras = crop
    assert np.allclose(img.affine, dout.ras_affine_xyz(sel)) and int(img.header["sform_code"]) == 1
    assert not np.allclose(img.affine, aff_ras)  # the series runs right-to-left and top-down
    step = (float(vol_xyz.max()) - float(vol_xyz.min())) / 65534
    assert np.abs(img.get_fdata() - _same_world(vol_xyz, aff_ras, img.affine, img.shape)).max() <= step / 2 + 1e-4
    back = dout.volume_on_series_grid(sel, img.get_fdata(dtype=np.float32), img.affine)
    assert np.array_equal(back, v)


def _reoriented(v, t_ras, perm, flips):
    """``v`` with axes permuted and flipped, and the RAS affine of the result."""
    b = v.transpose(perm)
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for i, ax in enumerate(perm):  # data axis i = series axis ax
        m[ax, i] = -1.0 if i in flips else 1.0
        if i in flips:
            m[ax, 3] = v.shape[ax] - 1
    return np.flip(b, axis=flips).copy(), t_ras @ m


def test_volume_on_series_grid_reorders_exactly(sel, volume):
    v, a_lps = volume
    t = LPS_TO_RAS @ a_lps
    for perm, flips in [((2, 0, 1), (0, 2)), ((1, 2, 0), (1,)), ((0, 1, 2), ()), ((2, 1, 0), (0, 1, 2))]:
        b, a = _reoriented(v, t, perm, flips)
        if perm != (0, 1, 2) or flips:  # really a different layout
            assert b.shape != v.shape or not np.array_equal(b, v)
        assert np.array_equal(dout.volume_on_series_grid(sel, b, a), v)
    # channel-first network output (1, X, Y, Z)
    b, a = _reoriented(v, t, (2, 1, 0), ())
    assert np.array_equal(dout.volume_on_series_grid(sel, b[None], a), v)


def test_volume_on_series_grid_refuses_other_grids(sel, volume):
    v, a_lps = volume
    b, a = _reoriented(v, LPS_TO_RAS @ a_lps, (2, 1, 0), (0,))
    shifted = a.copy()
    shifted[:3, 3] += (0.0, 0.004, 0.0)
    with pytest.raises(InputError, match=r"^out\.nii\.gz: its grid differs .* by up to 0\.004 mm"):
        dout.volume_on_series_grid(sel, b, shifted, name="out.nii.gz")
    assert np.array_equal(dout.volume_on_series_grid(sel, b, a + np.pad(np.full((3, 1), 2e-4), ((0, 1), (3, 0)))), v)
    voxel = a @ np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    with pytest.raises(InputError, match="shifted by whole voxels"):
        dout.volume_on_series_grid(sel, b, voxel)
    with pytest.raises(InputError, match="not aligned"):
        dout.volume_on_series_grid(sel, b, a @ np.diag([2.0, 1, 1, 1]))
    with pytest.raises(InputError, match="does not cover"):
        dout.volume_on_series_grid(sel, b[:-1], a)
    with pytest.raises(InputError, match="3-D"):
        dout.volume_on_series_grid(sel, v[0], a)


# ----------------------------------------------------------------------------------------- writers


@pytest.fixture(scope="module")
def clinic_out(tmp_path_factory, sel, volume):
    v, _ = volume
    den = _denoise(v)
    out = tmp_path_factory.mktemp("clinic")
    files = dout.write_derived_series(sel, den, out, bundle_name=BUNDLE, bundle_version=VERSION)
    pmap = dout.write_parametric_map(sel, v - den, out, bundle_name=BUNDLE, bundle_version=VERSION)
    return {"den": den, "res": (v - den).astype(np.float32), "files": files, "pmap": pmap, "out": out}


def _check_derived(sel, datasets, den, *, same_identity: bool):
    check_derived(sel, datasets, den, same_identity=same_identity, bundle=BUNDLE, version=VERSION)


def test_derived_series_clinic(sel, clinic_out):
    files = clinic_out["files"]
    assert [f.relative_to(clinic_out["out"]).as_posix() for f in files[:2]] == ["denoised/IM_0001.dcm", "denoised/IM_0002.dcm"]
    datasets = [pydicom.dcmread(f) for f in files]
    _check_derived(sel, datasets, clinic_out["den"], same_identity=True)
    ds = datasets[0]
    assert ds.pixel_array.dtype == np.int16 and ds.PixelRepresentation == 1
    assert ds.SeriesDescription == "T1 MPRAGE [denoised]" and ds.SeriesNumber == 1003
    assert ds.ContributingEquipmentSequence[0].Manufacturer == "ACME"
    assert ds.DerivationCodeSequence[0].CodeValue == "110001"
    # the source's scaling fits the smoothed range, so stored values keep their meaning
    assert float(ds.RescaleSlope) == float(sel.headers[0].RescaleSlope)
    assert ds.InstanceNumber == 1 and datasets[-1].InstanceNumber == len(files)
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)


def test_derived_series_unsigned_source_gets_new_scaling(tmp_path, sel, volume):
    """uint16 sources stay uint16; output below 0 forces one new slope/intercept for the series."""
    import copy

    v, _ = volume
    src = copy.copy(sel)
    src.headers = [copy.deepcopy(h) for h in sel.headers]
    for h in src.headers:
        h.PixelRepresentation, h.RescaleSlope, h.RescaleIntercept = 0, 1, 0
    den = _denoise(v) - 100.0  # negative values: do not fit uint16 with slope 1
    files = dout.write_derived_series(src, den, tmp_path, bundle_name=BUNDLE, bundle_version=VERSION,
                                      description="T1 custom")
    ds = [pydicom.dcmread(f) for f in files]
    assert ds[0].PixelRepresentation == 0 and ds[0].pixel_array.dtype == np.uint16
    assert ds[0].SeriesDescription == "T1 custom [denoised]"
    slope, icpt = float(ds[0].RescaleSlope), float(ds[0].RescaleIntercept)
    assert slope < 0.01 and icpt < 0
    vals = np.stack([d.pixel_array.astype(np.float64) for d in ds]) * slope + icpt
    assert np.abs(vals - den).max() <= slope / 2 + 1e-5
    # integer-valued output that fits: slope 1 is kept
    files = dout.write_derived_series(src, np.round(_denoise(v)), tmp_path, bundle_name=BUNDLE, bundle_version=VERSION)
    assert len(list((tmp_path / "denoised").iterdir())) == len(files)
    d0 = pydicom.dcmread(files[0])
    assert (float(d0.RescaleSlope), float(d0.RescaleIntercept)) == (1.0, 0.0)
    with pytest.raises(InputError, match="shape"):
        dout.write_derived_series(src, den[:-1], tmp_path, bundle_name=BUNDLE, bundle_version=VERSION)
    bad = den.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="1 non-finite"):
        dout.write_derived_series(src, bad, tmp_path, bundle_name=BUNDLE, bundle_version=VERSION)
    with pytest.raises(ValueError, match="make_deidentifier"):
        dout.write_derived_series(src, den, tmp_path, bundle_name=BUNDLE, bundle_version=VERSION, identity="research")


def _check_pmap(sel, ds, residual, *, same_identity: bool):
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert int(ds.NumberOfFrames) == len(sel.headers)
    px = ds.pixel_array
    assert px.dtype == np.float32 and px.shape == sel.shape
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = _match_source(sel, fg.PlanePositionSequence[0])
        np.testing.assert_array_equal(px[i], residual[k])
    iop = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(x) for x in iop], [float(x) for x in sel.headers[0].ImageOrientationPatient])
    rwvm = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert float(rwvm.RealWorldValueSlope) == 1.0 and float(rwvm.RealWorldValueIntercept) == 0.0
    refs = {r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert len(refs) == len(sel.headers)
    assert ds.ContentLabel == "RESIDUAL" and ds.ContentQualification == "RESEARCH"
    assert "not for clinical use" in ds.ContentDescription and "not for clinical use" in ds.SeriesDescription
    if same_identity:
        assert refs == {h.SOPInstanceUID for h in sel.headers}
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == sel.uid
        assert ds.FrameOfReferenceUID == sel.headers[0].FrameOfReferenceUID
        assert ds.StudyInstanceUID == sel.headers[0].StudyInstanceUID
    return refs


def test_parametric_map_clinic(sel, clinic_out):
    import highdicom as hd

    p = clinic_out["pmap"]
    assert p.name == "residual_pmap.dcm" and p.parent == clinic_out["out"]
    ds = pydicom.dcmread(p)
    _check_pmap(sel, ds, clinic_out["res"], same_identity=True)
    assert np.abs(clinic_out["res"]).max() > 1  # the smoothing really changed the image
    pm = hd.pm.ParametricMap.from_dataset(ds)
    assert pm.SeriesInstanceUID != sel.uid
    ours = [e for e in pm.ContributingEquipmentSequence if e.Manufacturer == "mriae"]
    assert [(e.ManufacturerModelName, e.SoftwareVersions) for e in ours] == [(BUNDLE, VERSION)]


def test_research_mode_removes_identifiers(tmp_path, sel, volume):
    v, _ = volume
    den = _denoise(v)
    anon = dout.make_deidentifier()
    files = dout.write_derived_series(sel, den, tmp_path, bundle_name=BUNDLE, bundle_version=VERSION,
                                      identity="research", anonymizer=anon)
    pmap = dout.write_parametric_map(sel, v - den, tmp_path, bundle_name=BUNDLE, bundle_version=VERSION,
                                     identity="research", anonymizer=anon)
    src = sel.headers[0]
    forbidden = [*SENTINEL_BYTES, *(str(src[k].value).encode() for k in ("StudyInstanceUID", "FrameOfReferenceUID"))]
    forbidden += [sel.uid.encode(), *(h.SOPInstanceUID.encode() for h in sel.headers)]
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == len(files) + 1
    for p in written:
        raw = p.read_bytes()
        hits = [f for f in forbidden if f in raw]
        assert not hits, f"{p.name} holds {hits[:2]}"
        assert b"SENTINEL" not in p.name.encode()
    datasets = [pydicom.dcmread(f) for f in files]
    pm = pydicom.dcmread(pmap)
    _check_derived(sel, datasets, den, same_identity=False)
    refs = _check_pmap(sel, pm, (v - den).astype(np.float32), same_identity=False)
    d0 = datasets[0]
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName", "PatientBirthDate"):
        assert len({str(d.get(key)) for d in datasets} | {str(pm.get(key))}) == 1, key
    assert d0.StudyInstanceUID != src.StudyInstanceUID and d0.PatientIdentityRemoved == "YES"
    assert pm.PatientIdentityRemoved == "YES" and d0.PatientBirthDate  # shifted, not just blanked
    # both outputs reference the same (remapped) source instances
    assert refs == {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in datasets}


# ------------------------------------------------------------------------------------------ Orthanc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _orthanc_paths() -> tuple[str | None, str | None]:
    exe = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None)
    plugins = [p for d in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc") for p in sorted(Path(d).glob("libOrthancDicomWeb.so*"))]
    return exe, (str(plugins[0]) if plugins else None)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc with the DICOMweb plugin on free localhost ports; yields its base URL."""
    import requests

    exe, plugin = _orthanc_paths()
    if exe is None or plugin is None:
        why = "Orthanc binary or its DICOMweb plugin not installed (apt-get install -y orthanc orthanc-dicomweb)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("orthanc")
    http, dicom = _free_port(), _free_port()
    cfg = {
        "Name": "mriae-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http,
        "DicomPort": dicom,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False,
    }
    (root / "config.json").write_text(json.dumps(cfg))
    log = open(root / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(root / "config.json")], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {proc.returncode}: {(root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/system", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("Orthanc did not answer /system within 30 s")
            time.sleep(0.2)
        plugins = requests.get(f"{url}/plugins", timeout=5).json()
        assert "dicom-web" in plugins, plugins
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_orthanc_stow_and_retrieve(orthanc, sel, clinic_out):
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(f"{orthanc}/dicom-web")
    derived = [pydicom.dcmread(f) for f in clinic_out["files"]]
    pm_local = pydicom.dcmread(clinic_out["pmap"])
    resp = client.store_instances(derived + [pm_local])
    assert len(resp.ReferencedSOPSequence) == len(derived) + 1 and not resp.get("FailedSOPSequence")
    study_uid = sel.headers[0].StudyInstanceUID
    series = {s["0020000E"]["Value"][0] for s in client.search_for_series(study_uid)}
    assert series == {derived[0].SeriesInstanceUID, pm_local.SeriesInstanceUID}
    # WADO-RS back: the derived series, as Orthanc serves it
    back = [client.retrieve_instance(study_uid, d.SeriesInstanceUID, d.SOPInstanceUID) for d in derived]
    _check_derived(sel, back, clinic_out["den"], same_identity=True)
    for local, remote in zip(derived, back):
        np.testing.assert_array_equal(remote.pixel_array, local.pixel_array)
    # the parametric map, through Orthanc's own REST API
    found = requests.post(f"{orthanc}/tools/lookup", data=pm_local.SOPInstanceUID, timeout=10).json()
    assert len(found) == 1 and found[0]["Type"] == "Instance"
    raw = requests.get(f"{orthanc}/instances/{found[0]['ID']}/file", timeout=30).content
    from io import BytesIO

    pm = pydicom.dcmread(BytesIO(raw))
    _check_pmap(sel, pm, clinic_out["res"], same_identity=True)
    stats = requests.get(f"{orthanc}/statistics", timeout=5).json()
    assert stats["CountInstances"] == len(derived) + 1 and stats["CountStudies"] == 1
