"""The plan travels with the model (nnU-Net's plans.json is the anchor).

``prepare`` records its plan (``mriae.prepare.preprocessing.PreprocessConfig``: orientation, spacing or
``native``, slice size, scaling, clipping, mask rule, inference grid, code version) in
``datalist.json``. Training writes it beside the weights (``mriae.networks.checkpoint``), where evaluation and
inference read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from mriae.errors import InputError
from mriae.prepare.preprocessing import PreprocessConfig

__all__ = [
    "plan_config",
    "plan_key",
]

def plan_config(plan: Mapping | PreprocessConfig | None = None) -> PreprocessConfig:
    """A plan as ``PreprocessConfig`` (a dict may name only the fields that differ from S4's)."""
    if plan is None:
        return PreprocessConfig()
    if isinstance(plan, PreprocessConfig):
        return plan
    try:
        return PreprocessConfig.from_dict(dict(plan))
    except TypeError as e:
        raise InputError(f"plan {dict(plan)}: {e}") from None


def plan_key(plan: Mapping | PreprocessConfig | None) -> str:
    """A short stable name of a plan (the demo cohort is prepared once per plan)."""
    d = plan_config(plan).to_dict()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
