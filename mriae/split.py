"""Subject-level split, stratified by demographics (S4 section 5.3).

Strata: sex x age group (<25, 25-65, >=65) x ethnicity (white / other). Subjects without
demographics go to training, as in S4. Slices never decide the split: every slice of a subject
lands in the subject's partition (S4's own code shuffled train/val by slice; we do not).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["age_group", "stratum", "stratified_split", "split_checksum"]

PARTITIONS = ("training", "validation", "test")


def age_group(age: float | None) -> str | None:
    if age is None or not np.isfinite(age):
        return None
    return "<25" if age < 25 else ("25-65" if age < 65 else ">=65")


def stratum(demo: Mapping | None) -> tuple | None:
    """The stratification key of one subject, or None when demographics are missing."""
    if not demo:
        return None
    sex, age, eth = demo.get("sex"), demo.get("age"), demo.get("ethnicity")
    if sex is None or age_group(age) is None or eth is None:
        return None
    return (str(sex), age_group(age), "white" if str(eth).lower() in ("1", "white") else "other")


def _targets(n: int, fractions: Sequence[float]) -> list[int]:
    f = np.asarray(fractions, dtype=float) / np.sum(fractions)
    raw = f * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def stratified_split(
    subjects: Sequence[str],
    demographics: Mapping[str, Mapping] | None = None,
    fractions: Sequence[float] = (0.78, 0.14, 0.08),
    seed: int = 0,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Split subject ids into ``training`` / ``validation`` / ``test``.

    Subjects in ``fixed`` (id -> partition) go where they are told (the demo's held-out source).
    The others are ordered by stratum (random order inside a stratum, seeded) and dealt out one by
    one to the partition furthest below its share, so each stratum spreads over the partitions
    in proportion. Subjects with no demographics go to training. Deterministic for a seed.
    """
    demographics = demographics or {}
    fixed = dict(fixed or {})
    out: dict[str, list[str]] = {p: [] for p in PARTITIONS}
    for sid, part in fixed.items():
        if part not in out:
            raise ValueError(f"unknown partition {part!r} for subject {sid}")
        out[part].append(sid)
    free = [s for s in subjects if s not in fixed]
    if len(set(subjects)) != len(subjects):
        raise ValueError("duplicate subject ids")
    rng = np.random.default_rng(seed)
    no_demo = [s for s in free if stratum(demographics.get(s)) is None]
    with_demo = [s for s in free if stratum(demographics.get(s)) is not None]
    free_fr = [fr if not any(v == p for v in fixed.values()) else 0.0 for p, fr in zip(PARTITIONS, fractions)]
    if sum(free_fr) == 0:
        free_fr = list(fractions)
    targets = _targets(len(free), free_fr)
    out["training"].extend(sorted(no_demo))
    assigned = [len(no_demo), 0, 0]
    order = sorted(with_demo, key=lambda s: (stratum(demographics[s]), rng.random()))
    share = np.asarray(targets, dtype=float) / max(len(free), 1)
    for i, sid in enumerate(order, start=1):
        deficit = share * (i + len(no_demo)) - np.asarray(assigned)
        room = np.asarray(targets) - np.asarray(assigned) > 0
        k = int(np.argmax(np.where(room, deficit, -np.inf))) if room.any() else 0
        out[PARTITIONS[k]].append(sid)
        assigned[k] += 1
    return {p: sorted(v) for p, v in out.items()}


def split_checksum(split: Mapping[str, Sequence[str]]) -> str:
    """sha256 of the partitions' sorted ids: records the split with the data."""
    payload = json.dumps({p: sorted(split.get(p, [])) for p in PARTITIONS}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
