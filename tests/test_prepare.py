"""The prepare step: preprocessing, relevant slices, subject-level stratified split, datalist."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mriae.data.slices import SliceDataset
from mriae.prepare.datalist import DatalistError, load_datalist
from mriae.io import load_volume
from mriae.prepare.preprocessing import PreprocessConfig, preprocess_volume, relevant_slices
from mriae.prepare.split import split_checksum, stratified_split


def test_preprocessed_volume_is_upright_sagittal_and_scaled(small_cohort):
    vol = load_volume(small_cohort / "subjects" / "heldout-000.nii.gz")
    out = preprocess_volume(vol, PreprocessConfig())
    v = out["volume"]
    assert v.shape[1:] == (128, 128) and v.dtype == np.float32
    assert v.min() >= 0 and v.max() <= 1 and (v >= 0.999).mean() < 0.01  # clipped only at the top 0.5 %
    # 2009a template is 197 mm wide -> about 164 sagittal slices at 1.2 mm
    assert abs(v.shape[0] - 197 / 1.2) < 3
    # upright sagittal slices: rows run superior -> inferior, columns posterior -> anterior
    import nibabel as nib

    assert nib.aff2axcodes(np.asarray(out["data"]["image"].affine)) == ("R", "I", "A")
    # relevant slices: S4's rule (>= 3000 px of 256x256), contiguous around the middle
    sl = out["slices"]
    assert 0.5 * v.shape[0] < len(sl) < 0.9 * v.shape[0]
    assert np.all(np.diff(sl) == 1) and sl[0] < v.shape[0] // 2 < sl[-1]


def test_relevant_slice_threshold_is_configurable():
    mask = np.zeros((4, 10, 10), bool)
    mask[1, :2] = True  # 20 %
    mask[2, :5] = True  # 50 %
    assert relevant_slices(mask, 0.2).tolist() == [1, 2]
    assert relevant_slices(mask, 0.3).tolist() == [2]


def _demo(n):
    rng = np.random.default_rng(0)
    return {
        f"s{i:03d}": {
            "sex": str(rng.integers(1, 3)),
            "age": float(rng.uniform(18, 85)),
            "ethnicity": str(rng.integers(1, 4)),
        }
        for i in range(n)
    }


def test_split_is_by_subject_stratified_and_deterministic():
    demo = _demo(200)
    ids = sorted(demo) + ["nodemo1", "nodemo2"]
    split = stratified_split(ids, demo, (0.7, 0.15, 0.15), seed=3)
    parts = [set(v) for v in split.values()]
    assert sum(len(p) for p in parts) == len(ids) and len(set.union(*parts)) == len(ids)  # disjoint, complete
    assert {"nodemo1", "nodemo2"} <= set(split["training"])
    assert [len(split[p]) for p in ("training", "validation", "test")] == [
        142,
        30,
        30,
    ]  # 202 x (0.7, 0.15, 0.15), largest remainder
    # each sex keeps its share in every partition (within 1.5 subjects)
    for part, fr in (("training", 0.7), ("validation", 0.15), ("test", 0.15)):
        for sex in ("1", "2"):
            n_all = sum(d["sex"] == sex for d in demo.values())
            n_part = sum(demo[s]["sex"] == sex for s in split[part] if s in demo)
            assert abs(n_part - fr * n_all) <= 1.5 + 0.02 * n_all
    assert stratified_split(ids, demo, (0.7, 0.15, 0.15), seed=3) == split
    assert split_checksum(split) != split_checksum(stratified_split(ids, demo, (0.7, 0.15, 0.15), seed=4))


def test_fixed_test_subjects_stay_in_test():
    demo = _demo(10)
    split = stratified_split(sorted(demo), demo, (0.78, 0.14, 0.08), fixed={"s000": "test", "s001": "test"})
    assert split["test"] == ["s000", "s001"]
    assert len(split["validation"]) >= 1 and len(split["training"]) >= 6


def test_datalist_no_subject_in_two_partitions_and_checksums(small_prepared):
    dl = load_datalist(small_prepared)
    parts = {p: {r["subject"] for r in dl[p]} for p in ("training", "validation", "test")}
    assert not (parts["training"] & parts["validation"]) and not (parts["training"] & parts["test"])
    assert not (parts["validation"] & parts["test"])
    assert parts["test"] == {"heldout-000", "heldout-001"}  # the held-out source volume, never trained on
    assert dl["split"]["checksum"] == split_checksum({p: sorted(v) for p, v in parts.items()})
    fp = dl["fingerprint"]
    assert fp["n_subjects"] == 8 and fp["preprocessed_shape"] == [128, 128]
    assert fp["n_slices"] == sum(len(r["slices"]) for p in parts for r in dl[p])
    ds = SliceDataset(dl, "training")
    assert len(ds) == sum(len(r["slices"]) for r in dl["training"]) and ds[0]["image"].shape == (1, 128, 128)
    assert {s for s, _ in ds.index} == parts["training"]


def test_tampered_cache_and_wrong_size_are_refused(small_prepared, tmp_path):
    copy = tmp_path / "p"
    shutil.copytree(small_prepared.parent, copy)
    with pytest.raises(DatalistError, match="slice_size=128, this bundle expects slice_size=64"):
        load_datalist(copy / "datalist.json", expect={"slice_size": 64})
    f = sorted((copy / "cache").glob("*.npy"))[0]
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DatalistError, match=f"{f.name}: checksum differs"):
        load_datalist(copy / "datalist.json")


def test_prepare_ixi_folder_with_xls_demographics(small_cohort, tmp_path):
    xlwt = pytest.importorskip("xlwt")
    ixi = tmp_path / "IXI-T1"
    ixi.mkdir()
    vols = sorted((small_cohort / "subjects").glob("demo-*.nii.gz"))[:4]
    names = ["IXI002-Guys-0828-T1", "IXI012-HH-1211-T1", "IXI013-HH-1212-T1", "IXI014-HH-1236-T1"]
    for v, n in zip(vols, names):
        shutil.copy(v, ixi / f"{n}.nii.gz")
    shutil.copy(vols[0], ixi / "IXI002-Guys-0828b-T1.nii.gz")  # duplicated volume of one subject
    wb = xlwt.Workbook()
    sh = wb.add_sheet("Table")
    for c, h in enumerate(["IXI_ID", "SEX_ID (1=m, 2=f)", "ETHNIC_ID", "AGE"]):
        sh.write(0, c, h)
    rows = [(2, 1, 1, 35.8), (2, 1, 1, 35.8), (12, 2, 1, 70.1), (13, 1, 2, 22.4)]  # IXI014 has none
    for r, row in enumerate(rows, start=1):
        for c, v in enumerate(row):
            sh.write(r, c, v)
    wb.save(str(tmp_path / "IXI.xls"))
    out = tmp_path / "prepared"
    cmd = [
        sys.executable,
        "-m",
        "mriae.prepare",
        "--source",
        "ixi",
        "--input",
        str(ixi),
        "--demographics",
        str(tmp_path / "IXI.xls"),
        "--output",
        str(out),
        "--fractions",
        "0.5",
        "0.25",
        "0.25",
        "--workers",
        "1",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    dl = json.loads((out / "datalist.json").read_text())
    recs = {r["subject"]: r for p in ("training", "validation", "test") for r in dl[p]}
    assert sorted(recs) == ["IXI002", "IXI012", "IXI013", "IXI014"]
    assert recs["IXI012"]["demographics"] == {"sex": "2", "age": 70.1, "ethnicity": "1"}
    assert recs["IXI014"]["demographics"] is None and "IXI014" in {r["subject"] for r in dl["training"]}


def test_prepare_bad_input_one_line_error_and_nothing_written(tmp_path):
    src = tmp_path / "vols"
    src.mkdir()
    (src / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mriae.prepare",
            "--source",
            "nifti",
            "--input",
            str(src),
            "--output",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    err = [ln for ln in res.stderr.strip().splitlines() if "nvImageCodec" not in ln]
    assert len(err) == 1 and "broken.nii.gz" in err[0] and "Traceback" not in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
