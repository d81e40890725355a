"""Weights and what travels with them: the checkpoint's side file ``model.json``.

Training writes the preprocessing plan (``mriae.prepare.plan``), with what the weights are (the
network's class and constructor arguments, the number of context slices, the slicing axes), into the
side file (``model_record``, ``save_model``). Evaluation refuses data prepared with another plan
(``check_datalist``) and inference takes geometry and scaling from the side file only (``read``): no
inference config repeats them, and weights without a plan are refused in one line. ``load_weights``
reads a state dict without running pickled code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mriae.errors import InputError, MissingFileError
from mriae.files import atomic_torch_save, atomic_write_text
from mriae.prepare.plan import plan_config
from mriae.prepare.preprocessing import PreprocessConfig

__all__ = [
    "load_weights",
    "model_record",
    "sidecar_path",
    "read",
    "check_network",
    "check_datalist",
    "load_checked",
    "save_model",
]

# arguments that do not change what the weights compute (informational sizes)
_INFORMATIONAL = ("img_size",)


def load_weights(network: torch.nn.Module, path: str | Path, map_location="cpu") -> torch.nn.Module:
    """Load a state_dict saved by ``BestCheckpoint`` (``weights_only=True``: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: checkpoint not found (train the bundle first)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a readable weights file ({type(e).__name__})") from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if isinstance(state, Mapping):
        bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise InputError(
                f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf (first: {bad[0]}); the training diverged "
                "or the file is damaged: these weights would write a volume of NaN"
            )
    try:
        missing, unexpected = getattr(network, "module", network).load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of other shapes
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise InputError(f"{path}: weights do not fit this network ({first})") from None
    if missing or unexpected:
        raise InputError(
            f"{path}: weights do not fit this network (missing {len(missing)}, unexpected {len(unexpected)} keys)"
        )
    return network


def model_record(network: torch.nn.Module, context: int = 0, axes: Sequence[int] = (0,)) -> dict:
    """What the weights are: the network (class and constructor arguments, when it records them),
    the context slices on each side of the centre slice and the slicing axes it was trained on."""
    net = getattr(network, "module", network)
    net = getattr(net, "_orig_mod", net)  # torch.compile wrapper
    cls = type(net)
    args = getattr(net, "init_args", None)
    return {
        "network": {"_target_": f"{cls.__module__}.{cls.__qualname__}", **(args or {})},
        "records_args": args is not None,
        "context": int(context),
        "axes": [int(a) for a in axes],
    }


def sidecar_path(ckpt_path: str | Path) -> Path:
    return Path(ckpt_path).with_suffix(".json")


def read(ckpt_path: str | Path) -> dict:
    """The side file of ``ckpt_path`` with its ``plan`` (a ``PreprocessConfig`` dict) and ``model``
    record; refuses weights without one (one line)."""
    ckpt, side = Path(ckpt_path), sidecar_path(ckpt_path)
    if not ckpt.is_file():
        raise MissingFileError(f"{ckpt}: checkpoint not found (train the bundle first)")
    if not side.is_file():
        raise InputError(
            f"{ckpt}: no plan beside the weights ({side.name} missing); refusing to guess the preprocessing"
        )
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{side}: unreadable side file ({e})") from None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("plan"), dict)
        or not isinstance(meta.get("model"), dict)
    ):
        raise InputError(
            f"{ckpt}: the side file {side.name} holds no plan (weights trained before plans were recorded?)"
        )
    meta["plan"] = plan_config(meta["plan"]).to_dict()
    return meta


def _args(record: Mapping) -> dict:
    return {k: v for k, v in record.items() if k not in _INFORMATIONAL}


def check_network(meta: Mapping, network: torch.nn.Module, context: int | None = None) -> torch.nn.Module:
    """Refuse (one line) a network that is not the one the weights were trained as."""
    want = meta["model"]
    got = model_record(
        network, want.get("context", 0) if context is None else context, want.get("axes", (0,))
    )
    w, g = want["network"], got["network"]
    if w.get("_target_") != g["_target_"] or (want.get("records_args") and _args(w) != _args(g)):
        diff = {
            k: (w.get(k), g.get(k))
            for k in set(w) | set(g)
            if k not in _INFORMATIONAL and w.get(k) != g.get(k)
        }
        shown = ", ".join(f"{k}: trained {a!r}, configured {b!r}" for k, (a, b) in sorted(diff.items()))
        raise InputError(
            f"the weights were trained as another network ({shown}); run them with the configs they were "
            "trained with (e.g. add the recipe file: --config_file \"['configs/inference.json','configs/s4.json']\")"
        )
    if context is not None and int(context) != int(want.get("context", 0)):
        raise InputError(
            f"the weights take {want.get('context', 0)} context slices each side; this config gives {context}"
        )
    return network


def check_datalist(meta: Mapping, datalist: Mapping | str | Path, what: str = "these weights") -> None:
    """Refuse data prepared with another plan than ``meta``'s (evaluation)."""
    from mriae.prepare.datalist import load_datalist

    dl = datalist if isinstance(datalist, Mapping) else load_datalist(datalist, verify=False)
    have = plan_config(dl["preprocessing"]).to_dict()
    want = plan_config(meta["plan"]).to_dict()
    if have != want:
        diff = [k for k in want if have.get(k) != want.get(k)]
        where = Path(dl.get("_root", "")) / "datalist.json"
        raise InputError(
            f"{where}: prepared with another plan than {what} ("
            + ", ".join(f"{k}={have.get(k)!r} vs {want.get(k)!r}" for k in diff)
            + "); prepare the data with the weights' plan"
        )


def load_checked(
    network: torch.nn.Module,
    ckpt_path: str | Path,
    datalist: Mapping | str | Path | None = None,
    context: int | None = None,
) -> dict:
    """Read the weights' side file, refuse another network, context or (with ``datalist``) data
    prepared with another plan, then load the weights. Returns the side file's content."""
    meta = read(ckpt_path)
    check_network(meta, network, context)
    if datalist is not None:
        check_datalist(meta, datalist)
    load_weights(network, ckpt_path)
    return meta


def save_model(
    network: torch.nn.Module,
    ckpt_path: str | Path,
    plan: Mapping | PreprocessConfig | None = None,
    context: int = 0,
    axes: Sequence[int] = (0,),
    **info,
) -> Path:
    """Write ``network``'s weights to ``ckpt_path`` with the side file inference reads (``plan``,
    the ``model`` record and any ``info``), both atomically: weights made outside a bundle's training
    (converted, hand-built, untrained for a dry run) travel like trained ones."""
    ckpt = Path(ckpt_path)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    net = getattr(network, "module", network)
    atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, ckpt)
    meta = {**info, "plan": plan_config(plan).to_dict(), "model": model_record(network, context, axes)}
    atomic_write_text(sidecar_path(ckpt), json.dumps(meta, indent=2, default=str))
    return ckpt
