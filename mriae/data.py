"""Datalist loading and checking, the slice dataset, and the automatic demo cohort.

``ensure_datalist(dataset_dir)`` is what bundle configs call: it returns ``dataset_dir``'s
``datalist.json`` (or ``dataset_dir/prepared/datalist.json``), and when ``dataset_dir`` is a folder
named ``demo`` that holds nothing yet, it builds the demo cohort and prepares it first (seeded,
cached: the second call costs nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .prepare import prepare, sha256_file
from .preprocessing import PreprocessConfig

__all__ = ["ensure_datalist", "prepare_demo", "load_datalist", "SliceDataset", "DatalistError"]


class DatalistError(InputError):
    """A datalist or its cache does not match what a step expects (one-line message)."""


def prepare_demo(
    root: str | Path,
    n_subjects: int = 20,
    n_test_subjects: int = 4,
    cfg: PreprocessConfig | None = None,
    seed: int = 0,
    workers: int = 2,
) -> Path:
    """Build (or reuse) the demo cohort in ``root/cohort`` and prepare it into ``root/prepared``."""
    from .cohort import build_demo_cohort
    from .sources import list_subjects

    root = Path(root)
    manifest = build_demo_cohort(
        root / "cohort", n_subjects=n_subjects, n_test_subjects=n_test_subjects, seed=seed, workers=workers
    )
    desc = json.loads(Path(manifest).read_text()).get("description", "demo cohort")
    subjects = list_subjects("demo", root / "cohort")
    source = {
        "type": "demo",
        "description": desc,
        "n_subjects": n_subjects,
        "n_test_subjects": n_test_subjects,
        "seed": seed,
    }
    return prepare(
        subjects, root / "prepared", cfg or PreprocessConfig(), seed=seed, workers=workers, source=source
    )


def ensure_datalist(dataset_dir: str | Path, **demo_kwargs) -> str:
    """Path of the datalist for ``dataset_dir``; builds the demo on first use (see module doc)."""
    d = Path(dataset_dir).resolve()
    for cand in (d / "datalist.json", d / "prepared" / "datalist.json"):
        if cand.is_file():
            return str(cand)
    if d.name == "demo":
        return str(prepare_demo(d, **demo_kwargs))
    raise DatalistError(
        f"{d}: no datalist.json; run `python -m mriae.prepare --source ... --output {d}` first"
    )


def load_datalist(path: str | Path, verify: bool = True, expect: Mapping | None = None) -> dict:
    """Read a datalist; with ``verify`` check every cached file's sha256, and that the recorded
    preprocessing matches ``expect`` (e.g. ``{"slice_size": 128}``)."""
    path = Path(path)
    if not path.is_file():
        raise DatalistError(f"{path}: datalist not found")
    try:
        dl = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatalistError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for key in ("preprocessing", "training", "validation", "test", "split"):
        if key not in dl:
            raise DatalistError(f"{path}: missing '{key}' (not written by mriae.prepare?)")
    for k, v in (expect or {}).items():
        got = dl["preprocessing"].get(k)
        if got != v and not (isinstance(v, (list, tuple)) and list(v) == got):
            raise DatalistError(f"{path}: data prepared with {k}={got}, this bundle expects {k}={v}")
    if verify:
        for part in ("training", "validation", "test"):
            for rec in dl[part]:
                f = path.parent / rec["image"]
                if not f.is_file():
                    raise DatalistError(f"{f}: cached volume missing (re-run prepare)")
                if sha256_file(f) != rec["sha256"]:
                    raise DatalistError(
                        f"{f}: checksum differs from the datalist (file changed; re-run prepare)"
                    )
    dl["_root"] = str(path.parent)
    return dl


class SliceDataset(torch.utils.data.Dataset):
    """All relevant 2D slices of one partition, held in memory as one (N, 1, S, S) float32 tensor.

    Items are dicts ``{"image": (1, S, S), "subject": str, "slice": int}``. ``max_slices_per_subject``
    keeps that many slices per subject, evenly spaced (the quick CPU default uses it); ``size``
    resizes the slices once at load (e.g. 64 for S1's networks).
    """

    def __init__(
        self,
        datalist: str | Path | Mapping,
        partition: str = "training",
        max_subjects: int | None = None,
        max_slices_per_subject: int | None = None,
        expect: Mapping | None = None,
        size: int | None = None,
    ) -> None:
        dl = datalist if isinstance(datalist, Mapping) else load_datalist(datalist, expect=expect)
        if partition not in ("training", "validation", "test"):
            raise ValueError(f"partition {partition!r} must be training, validation or test")
        root = Path(dl["_root"])
        records = dl[partition][:max_subjects] if max_subjects else dl[partition]
        if not records:
            raise DatalistError(f"{root / 'datalist.json'}: partition '{partition}' is empty")
        images, index = [], []
        for rec in records:
            vol = np.load(root / rec["image"], mmap_mode="r")
            sl = np.asarray(rec["slices"], dtype=int)
            if max_slices_per_subject and len(sl) > max_slices_per_subject:
                sl = sl[np.linspace(0, len(sl) - 1, max_slices_per_subject).round().astype(int)]
            images.append(np.asarray(vol[sl], dtype=np.float32))
            index.extend((rec["subject"], int(z)) for z in sl)
        self.images = torch.from_numpy(np.concatenate(images))[:, None]
        if size is not None and tuple(self.images.shape[-2:]) != (size, size):
            # antialiased bilinear resize of the whole stack at load (S1 works at 64x64)
            self.images = torch.nn.functional.interpolate(
                self.images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0, 1)
        self.index = index
        self.records = records
        self.preprocessing = dl["preprocessing"]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        sid, z = self.index[i]
        return {"image": self.images[i], "subject": sid, "slice": z}

    def middle_slices(self) -> dict[str, int]:
        """For each subject, the middle one of its slices (used for per-case figures)."""
        out: dict[str, list[int]] = {}
        for sid, z in self.index:
            out.setdefault(sid, []).append(z)
        return {s: sorted(v)[len(v) // 2] for s, v in out.items()}


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def describe(datalist: str | Path) -> dict:
    """What a run was trained / evaluated on: for tracking and the checkpoint sidecar."""
    dl = load_datalist(datalist, verify=False)
    return {
        "datalist": str(Path(datalist).resolve()),
        "source": dl.get("source", {}).get("type", "?"),
        "fingerprint": dl["fingerprint"].get("hash"),
        "split_checksum": dl["split"]["checksum"],
        "subjects": dl["split"]["n_subjects"],
        "slices": dl["split"]["n_slices"],
        "spacing": dl["preprocessing"]["spacing"],
        "slice_size": dl["preprocessing"]["slice_size"],
    }
