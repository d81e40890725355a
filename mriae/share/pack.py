"""Release a trained bundle as one zip in the MONAI Model Zoo layout.

``pack(bundle_dir, out_dir)`` writes ``<out_dir>/<name>_<version>.zip`` holding one folder
``<name>/``::

    configs/            the bundle's configs; metadata.json with eval_metrics filled in
    models/model.pt     the weights, and model.json (their plan, local paths made relative)
    models/model.ts     TorchScript (monai.bundle ckpt_export), debug records left out
    models/model.pt2    torch.export program (batch and sizes in multiples of 8 dynamic)
    docs/README.md      the model card, with how to install and run this release appended
    docs/data_license.txt, docs/meta_schema.json (for verify_metadata offline), LICENSE
    requirements.txt    the pinned packages; wheels/mriae-<v>-py3-none-any.whl: the package
    manifest.sha256     every file's sha256 (mriae.audit checks it)

``eval_metrics`` come only from an evaluation of these very weights: ``eval/evaluated.json``
(written by ``mriae.evaluate.metrics.ReconstructionMetrics``) must name the sha256 of
``models/model.pt``. The release is checked before it is written: the audit passes with the
manifest required, and no file (nor any member of a zip inside it) holds a local absolute path.
The zip appears only complete (written beside, then renamed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mriae.errors import InputError, MissingFileError
from mriae.files import atomic_write, sha256_file

__all__ = ["PackResult", "pack", "bundle_network", "release_name", "local_path_needles", "EXPORTS"]
logger = logging.getLogger("mriae.share")

EXPORTS = ("ts", "pt2")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same files give the same zip
_TEST_ONLY = ("pytest",)


@dataclass
class PackResult:
    path: Path
    sha256: str
    name: str
    version: str
    eval_metrics: dict
    exports: dict = field(default_factory=dict)  # "ts" / "pt2": "ok" or why it was left out
    meta: dict = field(default_factory=dict)  # the weights' side file as shipped

    def plan_tags(self) -> dict[str, str]:
        """The data plan and data identity as flat strings (MLflow tags of the release)."""
        plan, data = self.meta.get("plan", {}), self.meta.get("data", {})
        tags = {f"plan.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in plan.items()}
        for k in ("source", "fingerprint", "split_checksum"):
            if k in data:
                tags[f"data.{k}"] = str(data[k])
        return tags


def release_name(name: str, version: str) -> str:
    return f"{name}_{version}.zip"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError(f"{path}: not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not readable JSON ({' '.join(str(e).split())})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a JSON object")
    return obj


def bundle_network(root: str | Path, device: str = "cpu"):
    """The network of ``root``'s ``configs/inference.json`` with ``models/model.pt`` loaded (the
    weights' plan checked), in eval mode on ``device``."""
    import torch
    from monai.bundle import ConfigParser

    from mriae.networks.checkpoint import load_checked

    root = Path(root)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    parser["device"] = f"$torch.device('{device}')"
    net = parser.get_parsed_content("network_def")
    context = parser.get_parsed_content("context") if "context" in parser.config else None
    load_checked(net, root / "models" / "model.pt", context=context)
    return net.to(torch.device(device)).eval()


# ------------------------------------------------------------------------------------ eval metrics


def _eval_metrics(root: Path, weights_sha: str, declared: Mapping) -> dict:
    """``eval_metrics`` of metadata.json from ``eval/summary.json``, refusing an evaluation of
    other weights. Declared keys ``<metric>_clean_input`` / ``<metric>_corrupted_input`` get the
    clean and the noise condition's means; every condition's psnr and ssim is added as
    ``test_<condition>_<metric>`` (and ``..._input_<metric>`` for doing nothing)."""
    ev = root / "eval"
    rec_path, summ_path = ev / "evaluated.json", ev / "summary.json"
    how = f"run: python -m mriae.tools.run {root} evaluating"
    if not rec_path.is_file() or not summ_path.is_file():
        raise InputError(f"{ev}: no evaluation of these weights (evaluated.json / summary.json missing); {how}")
    rec, summ = _read_json(rec_path), _read_json(summ_path)
    if rec.get("sha256") != weights_sha:
        raise InputError(
            f"{rec_path}: the evaluation is of other weights (sha256 {str(rec.get('sha256'))[:12]}, "
            f"models/model.pt is {weights_sha[:12]}); {how}"
        )
    out: dict = {}
    corrupted = "noise" if "noise" in summ else next((c for c in summ if c != "clean"), None)
    for key in declared:
        metric, _, which = key.partition("_")
        cond = {"clean_input": "clean", "corrupted_input": corrupted}.get(which)
        if cond in summ and metric in summ[cond]:
            out[key] = round(float(summ[cond][metric]["mean"]), 4)
    for cond, cols in summ.items():
        for col in ("psnr", "ssim", "input_psnr", "input_ssim"):
            if col in cols:
                out[f"test_{cond}_{col}"] = round(float(cols[col]["mean"]), 4)
    missing = [k for k in declared if k not in out]
    if missing:
        raise InputError(f"{summ_path}: no value for eval_metrics {missing} of metadata.json")
    return out


# ---------------------------------------------------------------------------------- local paths


def local_path_needles(*extra: str | Path) -> list[bytes]:
    """Prefixes of this machine's absolute paths that a release must not contain."""
    from mriae import repo_root

    cands = {str(repo_root()), sys.prefix, sys.base_prefix, str(Path.home()), *map(str, extra)}
    cands |= {os.path.realpath(c) for c in cands}
    return sorted({c.rstrip("/").encode() for c in cands if len(c.rstrip("/")) > 1}, key=len, reverse=True)


def _relative(obj, bases: Sequence[Path]):
    """``obj`` with every absolute path string made relative to the first of ``bases`` it lies
    under (else its file name)."""
    if isinstance(obj, dict):
        return {k: _relative(v, bases) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, bases) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and len(obj) > 1:
        p = Path(obj)
        for b in bases:
            try:
                return p.resolve().relative_to(b.resolve()).as_posix()
            except ValueError:
                continue
        return p.name
    return obj


def _find_local_paths(root: Path, needles: Sequence[bytes]) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        blobs = [(rel, data)]
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as z:
                blobs += [(f"{rel}:{i.filename}", z.read(i)) for i in z.infolist()]
        for where, blob in blobs:
            n = next((n for n in needles if n in blob), None)
            if n is not None:
                hits.append(f"{where} holds {n.decode(errors='replace')}")
    return hits


# -------------------------------------------------------------------------------------- exports


def _strip_debug(ts_path: Path) -> None:
    """TorchScript's ``*.debug_pkl`` members name the source files of this machine; the archive
    loads without them."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(ts_path) as src, zipfile.ZipFile(tmp, "w") as out:
            for info in src.infolist():
                if not info.filename.endswith(".debug_pkl"):
                    out.writestr(info, src.read(info))

    atomic_write(ts_path, write)


def example_input(meta: Mapping):
    import torch

    spec = meta["network_data_format"]["inputs"]["image"]
    return torch.rand(2, int(spec["num_channels"]), *[int(s) for s in spec["spatial_shape"]])


def _export_ts(stage: Path) -> None:
    from monai.bundle import ckpt_export

    ckpt_export(
        net_id="network_def",
        filepath=str(stage / "models" / "model.ts"),
        ckpt_file=str(stage / "models" / "model.pt"),
        meta_file=str(stage / "configs" / "metadata.json"),
        config_file=str(stage / "configs" / "inference.json"),
        key_in_ckpt="",
        bundle_root=str(stage),
        device="$torch.device('cpu')",
    )
    _strip_debug(stage / "models" / "model.ts")


def _export_pt2(stage: Path, meta: Mapping) -> None:
    import torch
    from torch.export import Dim, export

    net = bundle_network(stage)
    x = example_input(meta)
    dyn = {0: Dim("batch", min=1, max=4096)}
    for i, s in enumerate(x.shape[2:]):
        dyn[2 + i] = 8 * Dim(f"size{i}_8", min=1, max=max(64, s))
    try:
        ep = export(net, (x,), dynamic_shapes={next(iter(_forward_args(net))): dyn})
    except Exception as e:  # a network with a fixed size (a dense latent): export it at that size
        logger.info("torch.export with dynamic sizes failed (%s); exporting at %s", type(e).__name__, tuple(x.shape))
        ep = export(net, (x,))
    for mod in ep.graph_module.modules():  # stack traces name this machine's source files
        if isinstance(mod, torch.fx.GraphModule):
            for node in mod.graph.nodes:
                node.meta.pop("stack_trace", None)
    torch.export.save(ep, str(stage / "models" / "model.pt2"))


def _forward_args(net) -> list[str]:
    import inspect

    return [p for p in inspect.signature(net.forward).parameters if p != "self"]


# ---------------------------------------------------------------------------------------- stage


def _build_wheel(dest: Path) -> Path:
    """The package as a wheel, built from this checkout's sources in a temporary copy (so the
    checkout gets no build/ folder)."""
    from mriae import repo_root

    src = repo_root()
    if not (src / "pyproject.toml").is_file():
        raise MissingFileError(f"{src}/pyproject.toml: not found; pack runs from a checkout of mriae")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for f in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(src / f, t / f)
        shutil.copytree(src / "mriae", t / "mriae", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(t)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise InputError(f"building the mriae wheel failed: {' '.join(r.stderr.split())[-300:]}")
    wheels = sorted(dest.glob("mriae-*.whl"))
    if len(wheels) != 1:
        raise InputError(f"{dest}: expected one mriae wheel, found {len(wheels)}")
    return wheels[0]


def _requirements() -> str:
    from mriae import repo_root

    lines = ["# the packages this release was built and measured with (pip install -r requirements.txt)"]
    for line in (repo_root() / "requirements.txt").read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#") and s.split("==")[0].lower() not in _TEST_ONLY:
            lines.append(s)
    return "\n".join(lines) + "\n"


def _release_readme(card: str, name: str, version: str, wheel: str, metrics: Mapping, weights_sha: str) -> str:
    shown = "\n".join(f"| {k} | {v} |" for k, v in metrics.items())
    return (
        card.rstrip()
        + f"""

## This release: {name} {version}

Weights: `models/model.pt`, sha256 `{weights_sha}`. Every file of the bundle is listed with its
sha256 in `manifest.sha256`; `python -m mriae.audit {name} --require-manifest` checks them and
reads the configs without running them. Research use only; not for clinical diagnosis.

Install (Python 3.10+, in a fresh virtual environment; a GPU build of torch works the same):

    python -m venv venv && . venv/bin/activate
    pip install -r {name}/requirements.txt {name}/wheels/{wheel}

Run on a DICOM study (the MR series is picked, the output is a derived DICOM series, a residual
Parametric Map, NIfTI files and an HTML report):

    python -m mriae.share run {name}_{version}.zip --input STUDY_DIR --output OUT

Check the release (metadata schema, network input/output, TorchScript equals PyTorch, inference):

    python -m mriae.share verify {name}_{version}.zip

Or with MONAI alone, on a NIfTI file, from inside the unpacked `{name}/` folder:

    python -m monai.bundle run --config_file configs/inference.json --input_path scan.nii.gz --output_dir out

Evaluation of these weights (demo test split, `eval_metrics` of `configs/metadata.json`):

| metric | value |
|---|---|
{shown}
"""
    )


def _stage(root: Path, stage: Path, meta: dict, metrics: dict, side: dict, exports: Sequence[str]) -> dict:
    from mriae import repo_root
    from mriae.files import atomic_write_text

    name, version = meta["name"], meta["version"]
    (stage / "models").mkdir(parents=True)
    shutil.copytree(root / "configs", stage / "configs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    meta = {**meta, "eval_metrics": metrics}
    atomic_write_text(stage / "configs" / "metadata.json", json.dumps(meta, indent=4) + "\n")
    shutil.copy2(root / "models" / "model.pt", stage / "models" / "model.pt")
    side = _relative(side, [repo_root(), root])
    atomic_write_text(stage / "models" / "model.json", json.dumps(side, indent=2) + "\n")
    if (root / "LICENSE").is_file():
        shutil.copy2(root / "LICENSE", stage / "LICENSE")
    (stage / "docs").mkdir()
    notice = Path(__file__).resolve().parents[1] / "NOTICE_TEMPLATES.txt"
    shutil.copy2(notice, stage / "docs" / "data_license.txt")
    schema = root.parent / "meta_schema.json"
    if not schema.is_file():
        schema = repo_root() / "bundles" / "meta_schema.json"
    shutil.copy2(schema, stage / "docs" / "meta_schema.json")
    atomic_write_text(stage / "requirements.txt", _requirements())
    wheel = _build_wheel(stage / "wheels")
    card = (root / "docs" / "README.md").read_text(encoding="utf-8") if (root / "docs" / "README.md").is_file() else f"# {name}\n"
    readme = _release_readme(card, name, version, wheel.name, metrics, sha256_file(root / "models" / "model.pt"))
    atomic_write_text(stage / "docs" / "README.md", readme)
    done = {}
    for kind in exports:
        try:
            _export_ts(stage) if kind == "ts" else _export_pt2(stage, meta)
            done[kind] = "ok"
        except Exception as e:  # an export that does not work for this network is left out, said
            done[kind] = f"left out: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            for p in (stage / "models").glob(f"model.{kind}*"):
                p.unlink()
            logger.warning("%s: model.%s %s", name, kind, done[kind])
    return done


def _write_zip(stage: Path, top: str, dest: Path) -> None:

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(q for q in stage.rglob("*") if q.is_file()):
                info = zipfile.ZipInfo(f"{top}/{p.relative_to(stage).as_posix()}", _ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with open(p, "rb") as f:
                    z.writestr(info, f.read())

    atomic_write(dest, write)


def pack(
    bundle_dir: str | Path,
    out_dir: str | Path = "dist",
    *,
    exports: Sequence[str] = EXPORTS,
    trust: bool = False,
) -> PackResult:
    """Release ``bundle_dir`` as ``<out_dir>/<name>_<version>.zip`` (module docstring)."""
    from mriae.audit import audit, require_trusted, write_manifest
    from mriae.networks.checkpoint import read as read_plan

    root = Path(bundle_dir).resolve()
    require_trusted(root, trust=trust, flag="--trust-bundle")  # the export parses (runs) the configs
    meta = _read_json(root / "configs" / "metadata.json")
    name, version = meta.get("name"), meta.get("version")
    if not name or not version:
        raise InputError(f"{root}/configs/metadata.json: no name or version")
    if str(version) not in (meta.get("changelog") or {}):
        raise InputError(f"{root}/configs/metadata.json: no changelog entry for version {version}; add one")
    bad = [k for k in exports if k not in EXPORTS]
    if bad:
        raise InputError(f"unknown export {bad[0]!r}; choose from {', '.join(EXPORTS)}")
    ckpt = root / "models" / "model.pt"
    side = read_plan(ckpt)  # refuses weights without their plan
    weights_sha = sha256_file(ckpt)
    metrics = _eval_metrics(root, weights_sha, meta.get("eval_metrics") or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / release_name(name, str(version))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}-") as tmp:
        stage = Path(tmp) / name
        done = _stage(root, stage, meta, metrics, side, exports)
        write_manifest(stage)
        report = audit(stage, require_manifest=True)
        if not report.ok:
            raise InputError(f"{dest}: not written, the release fails its audit: {report.failures[0].line()}")
        hits = _find_local_paths(stage, local_path_needles(root, out_dir.resolve(), tmp))
        if hits:
            raise InputError(f"{dest}: not written, a local path in the release: {hits[0]}")
        shipped = json.loads((stage / "models" / "model.json").read_text())
        _write_zip(stage, name, dest)
    res = PackResult(dest, sha256_file(dest), name, str(version), metrics, done, shipped)
    logger.info("%s: %s %s, sha256 %s", dest, name, version, res.sha256)
    return res
