"""Unpack a released bundle safely and check it the way the MONAI Model Zoo's CI checks a bundle.

``unpack(zip, dest)`` extracts a release (one top folder, no absolute or ``..`` member, no link,
no member over 2 GiB, nothing written when any member is refused) and returns the bundle folder.
``verify(zip_or_folder)`` runs, in order, and returns one ``Check`` per step:

- ``audit``: ``mriae.audit`` with the manifest required (every file's sha256, configs read
  without running them, the pickles in the weights);
- ``verify_metadata``: ``monai.bundle.verify_metadata`` against the schema shipped in
  ``docs/meta_schema.json`` (no download);
- ``verify_net_in_out``: ``monai.bundle.verify_net_in_out`` with the shapes of metadata.json;
- ``torchscript`` / ``export``: ``models/model.ts`` (``torch.jit.load``) and ``models/model.pt2``
  (``torch.export.load``) give the PyTorch network's output on an input of another size than the
  one they were made with;
- ``inference``: ``python -m monai.bundle run --config_file configs/inference.json`` from inside
  the bundle folder, in a new process, on ``input_path`` (default: a small synthetic volume);
  the output must be finite, of the input's shape and affine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mriae.errors import InputError, MissingFileError

__all__ = ["Check", "unpack", "verify", "open_release"]
_MAX_MEMBER = 2 << 30


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def unpack(zip_path: str | Path, dest: str | Path) -> Path:
    """Extract the release ``zip_path`` into ``dest`` and return ``dest/<name>``, the bundle."""
    zp = Path(zip_path)
    if not zp.is_file():
        raise MissingFileError(f"{zp}: no such release file")
    try:
        z = zipfile.ZipFile(zp)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{zp}: not a zip file ({type(e).__name__})") from None
    with z:
        infos = z.infolist()
        tops = set()
        for info in infos:
            p = PurePosixPath(info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if p.is_absolute() or ".." in p.parts or "\\" in info.filename or not p.parts:
                raise InputError(f"{zp}: member {info.filename!r} points outside the bundle; nothing extracted")
            if mode == 0o120000:
                raise InputError(f"{zp}: member {info.filename!r} is a symbolic link; nothing extracted")
            if info.file_size > _MAX_MEMBER:
                raise InputError(f"{zp}: member {info.filename!r} is larger than 2 GiB; nothing extracted")
            tops.add(p.parts[0])
        if len(tops) != 1:
            raise InputError(f"{zp}: a release holds one bundle folder, this one {len(tops)} top-level entries")
        top = tops.pop()
        if f"{top}/configs/metadata.json" not in {i.filename for i in infos}:
            raise InputError(f"{zp}: no {top}/configs/metadata.json; not a bundle release")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if (dest / top).exists():
            raise InputError(f"{dest / top}: exists already; unpack into an empty folder")
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{top}-"))
        try:
            for info in infos:
                if not info.is_dir():
                    target = tmp / info.filename
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
            os.replace(tmp / top, dest / top)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / top


class open_release:
    """``with open_release(path) as root:`` the bundle folder of a release zip (unpacked into a
    temporary folder, removed afterwards) or of an unpacked bundle folder (used as it is)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Path:
        if self.path.is_dir():
            if not (self.path / "configs" / "metadata.json").is_file():
                raise InputError(f"{self.path}: not a bundle (no configs/metadata.json)")
            return self.path.resolve()
        self._tmp = tempfile.TemporaryDirectory(prefix="mriae-release-")
        return unpack(self.path, self._tmp.name).resolve()

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _run(name: str, fn: Callable[[], str]) -> Check:
    from mriae.errors import UserError

    try:
        return Check(name, True, fn())
    except (UserError, AssertionError, ValueError, RuntimeError, OSError) as e:
        return Check(name, False, " ".join(f"{type(e).__name__}: {e}".split())[:400])


def _synthetic_volume(path: Path) -> Path:
    """A 64 x 72 x 40 volume at 1 mm of bright blobs on a dark background (monai's test image)."""
    import nibabel as nib
    import numpy as np
    from monai.data import create_test_image_3d

    img, _ = create_test_image_3d(64, 72, 40, num_objs=8, rad_max=14, noise_max=0.05, random_state=np.random.RandomState(0))
    nib.save(nib.Nifti1Image((img * 800).astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def _check_inference(root: Path, input_path: str | Path | None) -> str:
    import nibabel as nib
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="mriae-verify-") as tmp:
        src = Path(input_path).resolve() if input_path else _synthetic_volume(Path(tmp) / "synthetic.nii.gz")
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--input_path", str(src), "--output_dir", str(out), "--device", "$torch.device('cpu')"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        if r.returncode:
            tail = " ".join((r.stderr or r.stdout).split())[-300:]
            raise RuntimeError(f"monai.bundle run exited {r.returncode}: {tail}")
        recon = sorted(out.rglob("*_recon.nii*"))
        if len(recon) != 1:
            raise AssertionError(f"expected one *_recon output, found {len(recon)}")
        a, b = nib.load(src), nib.load(recon[0])
        y = np.asarray(b.dataobj, dtype=np.float32)
        assert y.shape == a.shape, f"output shape {y.shape} != input {a.shape}"
        assert np.allclose(b.affine, a.affine, atol=1e-4), "output affine differs from the input's"
        assert np.isfinite(y).all(), "non-finite output"
        x = np.asarray(a.dataobj, dtype=np.float32)
        change = float(np.abs(y - x).mean() / max(float(np.abs(x).mean()), 1e-12))
        return f"{src.name} {a.shape} -> {recon[0].name}, mean change {change:.3%} of the mean input"


def _check_exports(root: Path, kind: str, net, meta: dict) -> str:
    import torch

    from mriae.share.pack import example_input

    path = root / "models" / ("model.ts" if kind == "ts" else "model.pt2")
    if not path.is_file():
        raise MissingFileError(f"{path}: not in the release")
    x = example_input(meta)
    shape = [x.shape[0] + 1, x.shape[1], *[s + 8 for s in x.shape[2:]]]  # another batch and size
    x2 = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    loaded = torch.jit.load(str(path), map_location="cpu") if kind == "ts" else torch.export.load(str(path)).module()
    done = []
    for inp in (x, x2):
        try:
            with torch.no_grad():
                got = loaded(inp)
        except Exception as e:
            if inp is x:
                raise
            done.append(f"{tuple(inp.shape)} not accepted ({type(e).__name__}: fixed size)")
            continue
        with torch.no_grad():
            want = net(inp)
        err = float((got - want).abs().max())
        if err > 1e-4:
            raise AssertionError(f"{path.name} differs from the PyTorch network by {err:.3g} on {tuple(inp.shape)}")
        done.append(f"{tuple(inp.shape)} max |diff| {err:.2g}")
    return f"{path.name} = PyTorch network: " + "; ".join(done)


def verify(path: str | Path, input_path: str | Path | None = None) -> list[Check]:
    """Check a release zip or an unpacked bundle folder (module docstring)."""
    from monai.bundle import verify_metadata, verify_net_in_out

    from mriae.audit import audit

    checks: list[Check] = []
    with open_release(path) as root:

        def do_audit() -> str:
            rep = audit(root, require_manifest=True)
            if not rep.ok:
                raise AssertionError(rep.failures[0].line())
            return rep.summary()

        checks.append(_run("audit", do_audit))
        if not checks[-1].ok:  # an unaudited bundle is not parsed (its configs would run)
            return checks
        meta_file, config = str(root / "configs" / "metadata.json"), str(root / "configs" / "inference.json")

        def do_metadata() -> str:
            schema = root / "docs" / "meta_schema.json"
            if not schema.is_file():
                raise MissingFileError(f"{schema}: not in the release (verify_metadata would download it)")
            verify_metadata(meta_file=meta_file, filepath=str(schema))
            return "metadata.json matches docs/meta_schema.json"

        def do_net() -> str:
            verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config, device="cpu",
                              bundle_root=str(root))  # fmt: skip
            return "network input/output shapes and dtypes match metadata.json"

        checks.append(_run("verify_metadata", do_metadata))
        checks.append(_run("verify_net_in_out", do_net))
        from mriae.share.pack import bundle_network

        meta = json.loads((root / "configs" / "metadata.json").read_text())
        net: list = []  # the PyTorch network, built once for both exports

        def do_export(kind: str) -> str:
            if not net:
                net.append(bundle_network(root))
            return _check_exports(root, kind, net[0], meta)

        checks.append(_run("torchscript", lambda: do_export("ts")))
        if (root / "models" / "model.pt2").is_file():
            checks.append(_run("export", lambda: do_export("pt2")))
        checks.append(_run("inference", lambda: _check_inference(root, input_path)))
    return checks
