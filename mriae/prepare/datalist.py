"""The datalist a prepared dataset folder holds (the read side of ``prepare``): reading and checking
it (``load_datalist``: partitions, split checksum, every cached file's sha256, the expected plan) and
what a run was trained on (``describe``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mriae.errors import InputError
from mriae.files import sha256_file

__all__ = ["load_datalist", "partition_records", "DatalistError", "describe"]


class DatalistError(InputError):
    """A datalist or its cache does not match what a step expects (one-line message)."""


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
        from mriae.prepare.split import split_checksum

        parts = {p: [r["subject"] for r in dl[p]] for p in ("training", "validation", "test")}
        if split_checksum(parts) != dl["split"].get("checksum"):
            raise DatalistError(
                f"{path}: the partitions do not match the recorded split checksum (datalist edited; re-run prepare)"
            )
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


def partition_records(
    datalist: str | Path | Mapping, partition: str, expect: Mapping | None = None, max_subjects: int | None = None
) -> tuple[dict, Path, list[dict]]:
    """``(datalist, its folder, the first max_subjects records of partition)`` for a dataset: the
    datalist loaded (and checked, ``expect`` as ``load_datalist``) unless it is already a dict; an
    unknown or empty partition is refused."""
    dl = datalist if isinstance(datalist, Mapping) else load_datalist(datalist, expect=expect)
    if partition not in ("training", "validation", "test"):
        raise ValueError(f"partition {partition!r} must be training, validation or test")
    root = Path(dl["_root"])
    records = dl[partition][:max_subjects] if max_subjects else dl[partition]
    if not records:
        raise DatalistError(f"{root / 'datalist.json'}: partition '{partition}' is empty")
    return dl, root, records


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
