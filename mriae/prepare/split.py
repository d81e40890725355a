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

__all__ = ["age_group", "stratum", "stratified_split", "make_split", "split_checksum"]

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


def make_split(
    subjects: Sequence[str],
    demographics: Mapping[str, Mapping] | None = None,
    fractions: Sequence[float] = (0.78, 0.14, 0.08),
    seed: int = 0,
    fixed: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[str]], str]:
    """The prepare step's split and a sentence saying how it was made.

    With demographics for some subjects: ``stratified_split`` (S4: those without go to training).
    With none: a plain seeded split by ``fractions`` (every subject is stratum-less, so S4's rule
    would put them all in training and leave nothing to validate on). Either way at least one
    subject is kept for validation (and one for test when its fraction is above zero and three or
    more subjects are free); fewer than two free subjects cannot be split and raise ``InputError``."""
    from mriae.errors import InputError

    demographics = demographics or {}
    fixed = dict(fixed or {})
    free = [s for s in subjects if s not in fixed]
    if len(free) < 2 and fractions[1] > 0:
        raise InputError(
            f"{len(free)} subject(s) to split: need at least 2 (one to train on, one to validate on), "
            "or --fractions 1 0 0 to put every subject in training"
        )
    with_demo = [s for s in free if stratum(demographics.get(s)) is not None]
    if with_demo:
        split = stratified_split(subjects, demographics, fractions, seed, fixed)
        how = f"stratified by sex, age group (<25, 25-65, >=65) and ethnicity (white / other), seed {seed}"
        if len(with_demo) < len(free):
            how += (
                f"; {len(free) - len(with_demo)} subject(s) without demographics went to training (S4's rule)"
            )
    else:
        rng = np.random.default_rng(seed)
        order = [free[i] for i in rng.permutation(len(free))]
        free_fr = [
            fr if not any(v == p for v in fixed.values()) else 0.0 for p, fr in zip(PARTITIONS, fractions)
        ]
        if sum(free_fr) == 0:
            free_fr = list(fractions)
        counts = _targets(len(order), free_fr)
        split = {p: [] for p in PARTITIONS}
        for sid, part in fixed.items():
            split[part].append(sid)
        start = 0
        for p, n in zip(PARTITIONS, counts):
            split[p].extend(order[start : start + n])
            start += n
        how = f"plain seeded split (no demographics), seed {seed}"
    need_val = fractions[1] > 0 and not split["validation"]
    need_test = fractions[2] > 0 and len(free) >= 3 and not split["test"]
    for part in (("validation",) if need_val else ()) + (("test",) if need_test else ()):
        if not split[part]:  # move one subject over from training (the largest partition)
            split[part].append(sorted(split["training"])[-1])
            split["training"].remove(split[part][-1])
            how += f"; one subject moved from training to {part} so that it is not empty"
    return {p: sorted(v) for p, v in split.items()}, how
