"""Run a released bundle on DICOM studies and answer in DICOM, NIfTI and an HTML report.

``run_release(release, input, output)`` (``python -m mriae.share run``) audits the release (its
manifest required), picks the MR series of each study (``dicom_out.select_series``), builds the
bundle's own inference workflow ONCE and runs it over every series in one pass, then writes per
study::

    OUT/denoised/IM_0001.dcm ...   the derived series (DERIVED\\SECONDARY, references per slice)
    OUT/residual_pmap.dcm          input - denoised as a Parametric Map (research use)
    OUT/input.nii.gz, OUT/denoised.nii.gz, OUT/residual.nii.gz   the same on the series grid
    OUT/report.html                three planes, the model card, warnings outside the training plan
    OUT/run.json                   what ran (bundle, version, release sha256, series, timings)

With ``batch`` every sub-folder of ``input`` is one study and gets ``OUT/<sub-folder>/``; the
network runs over all of them in one pass, the per-study writing (DICOM, Parametric Map, report,
gzip) in parallel worker processes. Every
study is checked (a series found, readable) before anything is computed; each study's results are
written into a temporary folder beside their place and renamed into it when complete, and an
existing non-empty output folder is refused: nothing is half-written or overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mriae.errors import InputError, MissingFileError

__all__ = ["run_release", "CaseResult", "summary_line"]
logger = logging.getLogger("mriae.share")


@dataclass
class CaseResult:
    study: str
    output: Path
    series: str
    shape: tuple
    warnings: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def _studies(input_dir: Path, batch: bool) -> list[tuple[str, Path]]:
    if input_dir.is_file():
        raise InputError(
            f"{input_dir}: a file; --input takes a DICOM study folder (a NIfTI scan runs with "
            "python -m mriae.tools.run BUNDLE_DIR inference --input_path SCAN --output_dir OUT)"
        )
    if not input_dir.is_dir():
        raise MissingFileError(f"{input_dir}: no such study folder")
    if not batch:
        return [("", input_dir)]
    subs = sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise InputError(f"{input_dir}: --batch needs one sub-folder per study, found none")
    return [(p.name, p) for p in subs]


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not empty; choose a new --output folder")


def _series_geometry(sel) -> tuple[list[float], str]:
    import nibabel as nib

    from mriae.io.dicom import LPS_TO_RAS

    a = LPS_TO_RAS @ sel.affine_lps
    spacing = [float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(0))]
    return spacing, "".join(nib.aff2axcodes(a))


def _card(meta: dict) -> dict:
    m = meta.get("eval_metrics") or {}
    shown = {k: v for k, v in m.items() if not k.startswith("test_") and v is not None}
    return {
        "name": meta.get("name"),
        "version": meta.get("version"),
        "description": meta.get("description"),
        "intended_use": meta.get("intended_use"),
        "metrics": shown,
    }


def _workflow(root: Path, device: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), "device": f"$torch.device('{device}')"})
    return parser


def run_release(
    release: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    identity: str = "clinic",
    series_uid: str | None = None,
    batch: bool = False,
    device: str | None = None,
    trust: bool = False,
    report: bool = True,
    workers: int | None = None,
) -> list[CaseResult]:
    """Run the release on the study ``input_dir`` (or, with ``batch``, each of its sub-folders);
    results under ``output_dir`` (module docstring). ``identity`` is ``clinic`` (identifiers kept)
    or ``research`` (PS3.15 de-identification, one new identity per study). The per-study writing
    runs in ``workers`` processes (default ``_writers``: one per study up to the CPU count and 8, from
    4 studies and 4 CPUs on)."""
    import torch

    from mriae.audit import require_trusted
    from mriae.share import dicom_out as dout
    from mriae.share.verify import open_release

    if identity not in ("clinic", "research"):
        raise InputError(f"identity {identity!r}: choose clinic or research")
    t_start = time.perf_counter()
    release, out = Path(release), Path(output_dir)
    studies = _studies(Path(input_dir), batch)
    targets = [out / name if name else out for name, _ in studies]
    for t in targets:
        _check_output(t)
    release_sha = None
    if release.is_file():
        from mriae.files import sha256_file

        release_sha = sha256_file(release)
    with open_release(release) as root:
        require_trusted(root, trust=trust, require_manifest=True, flag="--trust-bundle")
        meta = json.loads((root / "configs" / "metadata.json").read_text())
        from mriae.networks.checkpoint import read as read_plan

        side = read_plan(root / "models" / "model.pt")
        # every study is read and checked before anything is computed
        t0 = time.perf_counter()
        selected = []
        for label, study in studies:
            sel = dout.select_series(study, series_uid=series_uid)
            vol, _ = dout.series_volume(sel)
            if not np.isfinite(vol).all() or float(vol.max() - vol.min()) <= 0:
                raise InputError(f"{study}: {sel.label} is constant or not finite; nothing was written")
            selected.append((label, study, sel, vol))
        t_read = time.perf_counter() - t0
        dev = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
        try:
            return _run_cases(root, work, selected, targets, meta, side, release_sha, identity, dev, report,
                              t_read, t_start, workers)  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _gzip(src: Path, dst: Path) -> None:
    """``x.nii`` -> ``x.nii.gz`` (the same bytes, gzip level 1 as nibabel writes), source removed."""
    import gzip

    with open(src, "rb") as f, gzip.open(dst, "wb", compresslevel=1) as g:
        shutil.copyfileobj(f, g, 1 << 22)
    src.unlink()


def _write_case(job: dict) -> dict:
    """One study's outputs from the network's (uncompressed) NIfTI files, into ``job["case"]``, then
    renamed onto ``job["target"]``. A top-level function: it runs in a worker process too."""
    import nibabel as nib

    from mriae.files import atomic_write_text
    from mriae.share import dicom_out as dout
    from mriae.share.report import intensity_summary, plan_warnings, write_report

    t0 = time.perf_counter()
    sel, vol, meta, case, target = job["sel"], job["vol"], job["meta"], Path(job["case"]), Path(job["target"])
    name, version = str(meta["name"]), str(meta["version"])
    img = nib.load(job["recon"])
    den = dout.volume_on_series_grid(sel, img.get_fdata(dtype=np.float32), img.affine, name="denoised.nii.gz")
    del img
    res = (vol - den).astype(np.float32)
    case.mkdir()
    # the bundle writes its outputs on the input's grid (the series grid): kept as they are, compressed
    for src, dst in ((job["input"], "input.nii.gz"), (job["recon"], "denoised.nii.gz"), (job["residual"], "residual.nii.gz")):
        _gzip(Path(src), case / dst)
    anon = dout.make_deidentifier() if job["identity"] == "research" else None
    kw = {"bundle_name": name, "bundle_version": version, "identity": job["identity"], "anonymizer": anon}
    files = dout.write_derived_series(sel, den, case, **kw)
    pmap = dout.write_parametric_map(sel, res, case, **kw)
    spacing, axcodes = _series_geometry(sel)
    modality = str(sel.headers[0].get("Modality", "") or "")
    warns = plan_warnings(job["plan"], spacing=spacing, axcodes=axcodes, intensity=intensity_summary(vol),
                          modality=modality)  # fmt: skip
    if job["report"]:
        write_report(case / "report.html", input=vol, output=den, residual=res, spacing=spacing,
                     card=_card(meta), warnings=warns, title=f"{name} {version}: {sel.label}")  # fmt: skip
    record = {
        "bundle": name,
        "version": version,
        "release_sha256": job["release_sha"],
        "identity": job["identity"],
        "series": sel.label,
        "shape": list(sel.shape),
        "device": job["device"],
        "derived_series": [f.relative_to(case).as_posix() for f in files],
        "parametric_map": pmap.relative_to(case).as_posix(),
        "warnings": warns,
    }
    atomic_write_text(case / "run.json", json.dumps(record, indent=2) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.rmdir()  # checked empty before the run
    os.replace(case, target)
    return {"warnings": warns, "write": round(time.perf_counter() - t0, 3)}


def _writers(n_cases: int, workers: int | None) -> int:
    """Processes for the per-study writing: ``workers``, else one per study up to the CPU count and
    8; below 4 studies or 4 CPUs the writing stays in this process (nothing to gain)."""
    if workers is not None:
        return max(1, min(int(workers), n_cases))
    cpus = os.cpu_count() or 1
    return 1 if n_cases < 4 or cpus < 4 else min(n_cases, cpus, 8)


def _run_cases(root, work, selected, targets, meta, side, release_sha, identity, dev, report, t_read,
               t_start, workers=None) -> list[CaseResult]:  # fmt: skip
    import nibabel as nib
    import torch

    from mriae.share import dicom_out as dout

    inputs = work / "inputs"
    inputs.mkdir()
    items = []
    for i, (_, _, sel, vol) in enumerate(selected):  # uncompressed: the bundle then writes .nii too
        p = inputs / f"case{i:04d}.nii"
        nib.save(dout.series_nifti(sel, vol), p)
        items.append({"image": str(p)})
    t0 = time.perf_counter()
    parser = _workflow(root, dev)
    parser.update({"datalist": items, "output_dir": str(work / "net")})
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("evaluator")
    t_build = time.perf_counter() - t0
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    evaluator.run()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    t_net = time.perf_counter() - t0
    jobs = []
    for i, ((label, study, sel, vol), target) in enumerate(zip(selected, targets)):
        written = {k: sorted((work / "net").rglob(f"case{i:04d}_{k}.nii")) for k in ("recon", "residual")}
        if any(len(v) != 1 for v in written.values()):
            raise InputError(f"{study}: the bundle did not write one denoised and one residual volume for {sel.label}")
        jobs.append({"sel": sel, "vol": vol, "meta": meta, "plan": side["plan"], "identity": identity,
                     "report": report, "release_sha": release_sha, "device": dev, "case": str(work / f"case{i:04d}"),
                     "target": str(target), "input": str(inputs / f"case{i:04d}.nii"),
                     "recon": str(written["recon"][0]), "residual": str(written["residual"][0])})  # fmt: skip
    t0 = time.perf_counter()
    n = _writers(len(jobs), workers)
    if n == 1:
        done = [_write_case(j) for j in jobs]
    else:  # the per-study writing is CPU work in Python: worker processes, forked (no re-imports, no
        # re-run of the caller's script); they never touch torch or the GPU. Spawned where fork is missing.
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            done = list(pool.map(_write_case, jobs))
    t_write = time.perf_counter() - t0
    results = []
    for (label, study, sel, _), target, d in zip(selected, targets, done):
        results.append(CaseResult(label or str(study), target, sel.label, sel.shape, d["warnings"], {"write": d["write"]}))
        logger.info("%s: %s %s -> %s", label or study, sel.label, sel.shape, target)
    total = time.perf_counter() - t_start
    for r in results:
        r.seconds.update({"read_all": round(t_read, 3), "build": round(t_build, 3), "network_all": round(t_net, 3),
                          "write_all": round(t_write, 3), "writers": n, "total_all": round(total, 3)})  # fmt: skip
    return results


def summary_line(results: Sequence[CaseResult]) -> str:
    if not results:
        return "no study processed"
    s = results[0].seconds
    n = len(results)
    return (
        f"{n} stud{'ies' if n != 1 else 'y'} in {s['total_all']:.1f} s ({n / s['total_all']:.2f} volumes/s; "
        f"read {s['read_all']:.1f} s, workflow {s['build']:.1f} s, network+saving {s['network_all']:.1f} s, "
        f"DICOM+report {s['write_all']:.1f} s in {s['writers']} process{'es' if s['writers'] != 1 else ''})"
    )
