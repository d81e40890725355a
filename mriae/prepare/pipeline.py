"""The prepare step: any source -> cached preprocessed volumes + ``datalist.json``.

    python -m mriae.prepare --source ixi --input IXI-T1/ --demographics IXI.xls --output data/ixi
    python -m mriae.prepare --source nifti --input my_volumes/ --output data/mine
    python -m mriae.prepare --source dicom --input my_dicom_studies/ --output data/mine_dcm
    python -m mriae.prepare --source demo --output data/demo        # builds the demo cohort first

Output (nnU-Net style: an artifact on disk that later steps read and check):
- ``cache/<subject>.npy``: the preprocessed volume (X, S, S), float16, written atomically;
- ``datalist.json``: ``training`` / ``validation`` / ``test`` lists (subject, image, sha256,
  relevant ``slices``), the ``split`` (seed, fractions, checksum), the ``preprocessing`` parameters
  and a ``fingerprint`` (shapes, spacings, intensity statistics) that training, evaluation and
  inference check against.
Everything is written to a temporary folder first and moved into place at the end, so an error or
an interrupt leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mriae.files import atomic_write, sha256_file
from mriae.prepare.datalist import DatalistError
from mriae.errors import InputError, UserError
from mriae.prepare.preprocessing import PreprocessConfig, preprocess_volume
from mriae.prepare.sources import Subject, list_subjects
from mriae.prepare.split import make_split, split_checksum

__all__ = ["prepare", "prepare_demo", "ensure_datalist", "DEMO_FOLDERS", "main", "DATALIST_VERSION"]

DATALIST_VERSION = 1


def _process(args: tuple[Subject, dict, str]) -> dict:
    subject, cfg_dict, cache_dir = args
    import torch

    from mriae.io import load_volume

    torch.set_num_threads(1)
    cfg = PreprocessConfig.from_dict(cfg_dict)
    image = load_volume(subject.path, series=subject.series)
    name = subject.path if subject.series is None else f"{subject.path} (series of {subject.id})"
    try:
        out = preprocess_volume(image, cfg)
    except UserError as e:
        raise InputError(f"{name}: {e}") from None
    if len(out["slices"]) == 0:
        raise InputError(
            f"{name}: no slice has foreground over {cfg.min_mask_fraction:.2%} of its area "
            "(empty volume, or lower --min-mask-fraction)"
        )
    vol = out["volume"].astype(np.float16)
    dst = Path(cache_dir) / f"{subject.id}.npy"
    atomic_write(dst, lambda tmp: np.save(tmp, vol))
    orig_affine = np.asarray(image.affine, dtype=float)
    fg = out["volume"][out["mask"]]
    import nibabel as nib

    return {
        "subject": subject.id,
        "image": f"cache/{subject.id}.npy",
        "sha256": sha256_file(dst),
        "slices": out["slices"].tolist(),
        "shape": list(vol.shape),
        "original_shape": [int(s) for s in image.shape[1:]],
        "original_spacing": [round(float(s), 4) for s in np.sqrt((orig_affine[:3, :3] ** 2).sum(0))],
        "original_orientation": "".join(nib.aff2axcodes(orig_affine)),
        "intensity_low": out["intensity_low"],
        "intensity_high": out["intensity_high"],
        "foreground_mean": float(fg.mean()) if fg.size else 0.0,
        "foreground_std": float(fg.std()) if fg.size else 0.0,
        "demographics": subject.demographics,
    }


def _fingerprint(records: list[dict], cfg: PreprocessConfig) -> dict:
    sp = np.array([r["original_spacing"] for r in records])
    shapes = np.array([r["original_shape"] for r in records])
    n = np.array([len(r["slices"]) for r in records])
    fp = {
        "n_subjects": len(records),
        "n_slices": int(n.sum()),
        "slices_per_subject": [int(n.min()), int(np.median(n)), int(n.max())],
        "original_spacing_median": np.median(sp, axis=0).round(4).tolist(),
        "original_shape_min": shapes.min(0).tolist(),
        "original_shape_max": shapes.max(0).tolist(),
        "preprocessed_shape": records[0]["shape"][1:],
        "foreground_mean": float(np.mean([r["foreground_mean"] for r in records])),
        "foreground_std": float(np.mean([r["foreground_std"] for r in records])),
        "preprocessing": cfg.to_dict(),
    }
    payload = json.dumps({"p": cfg.to_dict(), "files": sorted(r["sha256"] for r in records)}, sort_keys=True)
    fp["hash"] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return fp


_OWNED = ("datalist.json", "cache")  # what a prepare output folder holds; nothing else is ever replaced
_TMP_MARK = ".mriae-prepare-tmp"  # marker (holding the writer's pid) inside prepare's temporary folders


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _read_own_datalist(output: Path) -> dict | None:
    """The datalist of an earlier prepare output in ``output``, or None when it is not one."""
    f = output / "datalist.json"
    if not f.is_file():
        return None
    try:
        dl = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(dl, dict) or not all(
        k in dl for k in ("version", "split", "training", "validation", "test")
    ):
        return None
    return dl


def _same_plan(recorded: dict | None, cfg: PreprocessConfig) -> bool:
    """Whether a recorded plan is ``cfg`` (plans written before a field existed get its default)."""
    if not isinstance(recorded, dict) or recorded.get("code_version") != cfg.to_dict()["code_version"]:
        return False
    try:
        return PreprocessConfig.from_dict(recorded).to_dict() == cfg.to_dict()
    except (TypeError, UserError):
        return False


def _check_replaceable(output: Path, dl: dict) -> None:
    """Refuse to replace ``output`` when it holds anything an earlier prepare did not write there."""
    listed = {Path(r["image"]).name for p in ("training", "validation", "test") for r in dl.get(p, [])}
    foreign = [e.name for e in output.iterdir() if e.name not in _OWNED]
    cache = output / "cache"
    if cache.is_dir():
        foreign += [
            f"cache/{e.name}" for e in cache.iterdir() if e.name not in listed and not e.name.endswith(".tmp")
        ]
    elif cache.exists():
        foreign.append("cache")
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (" ..." if len(foreign) > 3 else "")
        raise InputError(
            f"{output}: holds files an earlier prepare did not write ({shown}); refusing to replace it "
            "(move them away or choose another --output)"
        )


def _clean_stale_tmp(parent: Path, name: str) -> None:
    """Remove temporary folders that a killed prepare of ``name`` left in ``parent`` (ours only:
    they carry the marker, and the process that made them is gone)."""
    for d in parent.glob(f".{name}.old-*"):  # an earlier output moved aside by a swap that was killed
        _remove_if_dead(d, d.name.rsplit("-", 1)[-1])
    for d in parent.glob(f".{name}.tmp-*"):
        mark = d / _TMP_MARK
        if mark.is_file():
            _remove_if_dead(d, mark.read_text().strip())


def _remove_if_dead(folder: Path, pid: str) -> None:
    try:
        os.kill(int(pid), 0)
        return  # its process still runs
    except (ValueError, ProcessLookupError):
        shutil.rmtree(folder, ignore_errors=True)
    except PermissionError:
        return


def prepare(
    subjects: list[Subject],
    output: str | Path,
    cfg: PreprocessConfig | None = None,
    fractions: tuple[float, float, float] = (0.78, 0.14, 0.08),
    seed: int = 0,
    workers: int = 2,
    source: dict | None = None,
    overwrite: bool | str = False,
) -> Path:
    """Preprocess ``subjects`` into ``output`` and write the datalist; returns its path.

    ``output`` must be new, empty, or an earlier prepare output (recognised by its datalist). An
    earlier output made with the same settings is reused; one made otherwise is refused unless
    ``overwrite`` (``"if-changed"``: reuse when the same, rebuild when not; the demo uses it), and
    even then only when it holds nothing but what prepare wrote. prepare never removes anything
    it did not create, and an input inside ``output`` is refused."""
    cfg = cfg or PreprocessConfig()
    output = Path(output)
    datalist_path = output / "datalist.json"
    for s in subjects:
        if _inside(Path(s.path), output):
            raise InputError(
                f"{output}: --output holds the input {s.path}; choose an output folder outside the input"
            )
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: --output exists and is not a folder")
    old = _read_own_datalist(output) if output.is_dir() else None
    if output.is_dir() and old is None and any(output.iterdir()):
        raise InputError(
            f"{output}: not empty and not an earlier prepare output (no datalist.json written by prepare); "
            "refusing to write into it, even with --overwrite (choose a new or empty folder)"
        )
    if old is not None:
        same = _same_plan(old.get("preprocessing"), cfg) and old.get("source") == (source or {})
        same = (
            same
            and old.get("split", {}).get("seed") == seed
            and old.get("split", {}).get("fractions") == list(fractions)
        )
        if same and overwrite in (False, "if-changed"):
            return datalist_path
        if not overwrite:
            raise InputError(f"{datalist_path}: exists with other settings; pass --overwrite to replace it")
        _check_replaceable(output, old)
    output.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(output.parent, output.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        (tmp / _TMP_MARK).write_text(str(os.getpid()))
        (tmp / "cache").mkdir()
        jobs = [(s, cfg.to_dict(), str(tmp / "cache")) for s in subjects]
        records = _run(jobs, workers)
        groups = {s.id: s.extra.get("group", s.id) for s in subjects}
        demo = {groups[s.id]: s.demographics for s in subjects if s.demographics}
        fixed = {groups[s.id]: "test" for s in subjects if s.role == "heldout"}
        split, how = make_split(sorted(set(groups.values())), demo, fractions, seed, fixed)
        part_of = {g: p for p, ids in split.items() for g in ids}
        by_part: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
        for r in records:
            by_part[part_of[groups[r["subject"]]]].append(r)
        subject_split = {p: [r["subject"] for r in rs] for p, rs in by_part.items()}
        datalist = {
            "version": DATALIST_VERSION,
            "description": (source or {}).get("description", "prepared by mriae.prepare"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "source": source or {},
            "preprocessing": cfg.to_dict(),
            "fingerprint": _fingerprint(records, cfg),
            "split": {
                "seed": seed,
                "fractions": list(fractions),
                "method": how,
                "checksum": split_checksum(subject_split),
                "n_subjects": {p: len(v) for p, v in subject_split.items()},
                "n_slices": {p: int(sum(len(r["slices"]) for r in rs)) for p, rs in by_part.items()},
            },
            **by_part,
        }
        (tmp / "datalist.json").write_text(json.dumps(datalist, indent=2))
        (tmp / _TMP_MARK).unlink()
        _swap_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return datalist_path


def _swap_into_place(tmp: Path, output: Path) -> None:
    """Move the finished ``tmp`` to ``output``. An empty ``output`` is replaced by the rename itself;
    an earlier prepare output (checked by the caller) is moved aside first and removed only after
    the new one is in place, so an interrupt leaves either the old or the new output."""
    if not output.exists() or not any(output.iterdir()):
        os.replace(tmp, output)
        return
    aside = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, aside)
    try:
        os.replace(tmp, output)
    except BaseException:
        os.replace(aside, output)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _run(jobs: list, workers: int) -> list[dict]:
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc="prepare", unit="vol", file=sys.stderr, disable=None)
    if workers <= 1 or len(jobs) <= 1:
        return [_process(j) for j in tqdm(jobs, **bar)]
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as ex:
        return list(tqdm(ex.map(_process, jobs), **bar))


# folder names that build a demo cohort on first use, and the cohort recipe each builds
DEMO_FOLDERS = {"demo": "brain", "demo-heads": "heads"}


def prepare_demo(
    root: str | Path,
    n_subjects: int = 20,
    n_test_subjects: int = 4,
    cfg: PreprocessConfig | None = None,
    seed: int = 0,
    workers: int = 2,
    prepared: str = "prepared",
    recipe: str | None = None,
) -> Path:
    """Build (or reuse) the demo cohort in ``root/cohort`` and prepare it into ``root/<prepared>``.
    ``recipe`` (``mriae.prepare.cohort.RECIPES``) defaults to the one the folder's name asks for
    (``DEMO_FOLDERS``)."""
    from mriae.prepare.cohort import build_demo_cohort
    from mriae.prepare.sources import list_subjects

    root = Path(root)
    recipe = recipe or DEMO_FOLDERS.get(root.name, "brain")
    manifest = build_demo_cohort(
        root / "cohort",
        n_subjects=n_subjects,
        n_test_subjects=n_test_subjects,
        seed=seed,
        workers=workers,
        recipe=recipe,
    )
    desc = json.loads(Path(manifest).read_text()).get("description", "demo cohort")
    subjects = list_subjects("demo", root / "cohort")
    source = {
        "type": "demo",
        "description": desc,
        "n_subjects": n_subjects,
        "n_test_subjects": n_test_subjects,
        "seed": seed,
        **({"recipe": recipe} if recipe != "brain" else {}),
    }
    return prepare(
        subjects, root / prepared, cfg or PreprocessConfig(), seed=seed, workers=workers, source=source
    )


def ensure_datalist(
    dataset_dir: str | Path, plan: Mapping | PreprocessConfig | None = None, **demo_kwargs
) -> str:
    """Path of the datalist for ``dataset_dir``; builds the demo on first use (see module doc).

    A folder named ``demo`` gets S4's demo cohort, one named ``demo-heads`` the denoisers' (full heads
    and brains, T1 and T2, no added noise: ``mriae.prepare.cohort.RECIPES``).
    ``plan`` is the plan the demo is prepared with (S4's when None: ``demo/prepared``; any other one
    in ``demo/prepared-<key>``). A folder the user prepared brings its own plan, which is what a
    model trained on it records."""
    from mriae.prepare.plan import plan_config, plan_key

    d = Path(dataset_dir).resolve()
    cfg = plan_config(plan)
    sub = "prepared" if cfg == PreprocessConfig() else f"prepared-{plan_key(cfg)}"
    if (d / "datalist.json").is_file():
        return str(d / "datalist.json")
    if d.name in DEMO_FOLDERS:
        cand = d / sub / "datalist.json"
        return str(cand) if cand.is_file() else str(prepare_demo(d, cfg=cfg, prepared=sub, **demo_kwargs))
    if (d / "prepared" / "datalist.json").is_file():
        return str(d / "prepared" / "datalist.json")
    raise DatalistError(
        f"{d}: no datalist.json; run `python -m mriae.prepare --source ... --output {d}` first"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mriae.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=["demo", "ixi", "volumes", "nifti", "dicom"], required=True)
    p.add_argument("--input", help="input folder (not needed for demo)")
    p.add_argument("--demographics", help="IXI.xls or a CSV (subject, sex, age, ethnicity)")
    p.add_argument("--output", required=True, help="output folder (datalist.json + cache/)")
    p.add_argument(
        "--spacing",
        nargs="+",
        default=[str(v) for v in PreprocessConfig.spacing],
        help="three millimetre values, or 'native' to keep each volume's own grid (default: S4's)",
    )
    p.add_argument("--slice-size", type=int, default=PreprocessConfig.slice_size)
    p.add_argument("--axcodes", default=PreprocessConfig.axcodes)
    p.add_argument("--percentiles", type=float, nargs=2, default=(0.5, 99.5))
    p.add_argument("--min-mask-fraction", type=float, default=PreprocessConfig.min_mask_fraction)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.78, 0.14, 0.08))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--demo-subjects", type=int, default=20, help="demo: number of training/validation subjects"
    )
    p.add_argument(
        "--no-clip", action="store_true", help="keep intensities above the upper percentile (denoising)"
    )
    p.add_argument(
        "--inference-grid",
        choices=["plan", "native"],
        default="plan",
        help="where models trained on this data run: resampled like prepare (plan) or on the input's grid",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier prepare output made otherwise"
    )
    return p


def _spacing(values: list[str]) -> tuple[float, float, float] | None:
    if len(values) == 1 and values[0].lower() == "native":
        return None
    try:
        out = tuple(float(v) for v in values)
    except ValueError:
        out = ()
    if len(out) != 3:
        raise InputError(f"--spacing {' '.join(values)}: need three millimetre values or 'native'")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = PreprocessConfig(
            axcodes=args.axcodes,
            spacing=_spacing(args.spacing),
            slice_size=args.slice_size,
            lower_percentile=args.percentiles[0],
            upper_percentile=args.percentiles[1],
            min_mask_fraction=args.min_mask_fraction,
            clip=not args.no_clip,
            inference_grid=args.inference_grid,
        )
        if len(args.fractions) != 3 or min(args.fractions) < 0 or abs(sum(args.fractions) - 1) > 1e-6:
            raise InputError(f"--fractions {args.fractions}: need three non-negative values summing to 1")
        if args.source == "demo":
            path = prepare_demo(
                args.output, n_subjects=args.demo_subjects, cfg=cfg, seed=args.seed, workers=args.workers
            )
        else:
            subjects = list_subjects(args.source, args.input, args.demographics)
            source = {"type": args.source, "input": os.path.abspath(args.input)}
            path = prepare(
                subjects,
                args.output,
                cfg,
                tuple(args.fractions),
                args.seed,
                args.workers,
                source,
                args.overwrite,
            )
    except (UserError, ValueError, OSError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    dl = json.loads(Path(path).read_text())
    print(f"split: {dl['split'].get('method', 'stratified')}")
    print(f"wrote {path}: subjects {dl['split']['n_subjects']}, slices {dl['split']['n_slices']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
