"""Dictionary transforms for inference on a user's own volume (NIfTI, .mgz or a DICOM folder).

Used in ``inference.json`` between MONAI's invertible geometric transforms, so that the output is
mapped back by ``Invertd`` onto exactly the input's grid and affine.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from mriae.errors import InputError, InputErrors, MissingFileError, UserError
from mriae.prepare.preprocessing import robust_scale

__all__ = [
    "LoadVolumed",
    "RobustScaled",
    "UnscaleIntensityd",
    "Residuald",
    "Deltad",
    "ApplyDeltad",
    "list_inputs",
]


def list_inputs(input_path: str | Path, validate: bool = True) -> list[dict]:
    """Inference inputs: a volume file, a folder of volumes, or a DICOM folder (one item per series).

    With ``validate``, a folder's inputs are all read and checked (loadable, finite, not constant)
    BEFORE any is processed, so a bad file never leaves a folder half done: every failing file is
    named, one per line, and nothing is written."""
    items = _list_inputs(input_path)
    if validate and len(items) > 1:
        _validate(items)
    return items


def _validate(items: list[dict]) -> None:
    from mriae.io import load_volume
    from mriae.prepare.preprocessing import robust_scale

    failures = []
    for it in items:
        name = it["image"] if it.get("series") is None else f"{it['image']} (series {it['series']})"
        try:
            robust_scale(load_volume(it["image"], series=it.get("series"))[0])
        except UserError as e:
            msg = " ".join(str(e).split())
            failures.append(msg if str(it["image"]) in msg else f"{name}: {msg}")
    if failures:
        raise InputErrors([*failures, f"{len(failures)} of {len(items)} inputs cannot be used; nothing was written"])


def _list_inputs(input_path: str | Path) -> list[dict]:
    from mriae.io import find_dicom_series, is_dicom_dir
    from mriae.prepare.sources import VOLUME_SUFFIXES

    p = Path(input_path)
    if not str(input_path) or not p.exists():
        raise MissingFileError(f"{p}: input not found (pass --input_path <file or folder>)")
    if p.is_file():
        return [{"image": str(p)}]
    vols = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(VOLUME_SUFFIXES))
    if vols:
        return [{"image": str(q)} for q in vols]
    if is_dicom_dir(p):
        return [{"image": str(p), "series": key} for key in sorted(find_dicom_series(p))]
    raise InputError(f"{p}: no volume ({', '.join(VOLUME_SUFFIXES)}) or DICOM series found")


class LoadVolumed(MapTransform):
    """``mriae.io.load_volume`` as a dictionary transform (uses ``data['series']`` when present)."""

    def __init__(self, keys: KeysCollection = "image") -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from mriae.io import load_volume

        d = dict(data)
        for k in self.key_iterator(d):
            d[k] = load_volume(d[k], series=d.get("series"))
        return d


class RobustScaled(MapTransform):
    """Percentile scaling to [0, 1] as in prepare; records the bounds in the image's meta."""

    def __init__(
        self, keys: KeysCollection = "image", lower: float = 0.5, upper: float = 99.5, clip: bool = True
    ) -> None:
        super().__init__(keys)
        self.lower, self.upper, self.clip = lower, upper, clip

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            img = d[k]
            try:
                scaled, lo, hi = robust_scale(torch.as_tensor(img)[0], self.lower, self.upper, self.clip)
            except InputError as e:
                name = getattr(img, "meta", {}).get("filename_or_obj", "input")
                raise InputError(f"{name}: {e}") from None
            out = scaled[None]
            if isinstance(img, MetaTensor):
                out = MetaTensor(out, meta=dict(img.meta), applied_operations=list(img.applied_operations))
                out.meta["intensity_low"], out.meta["intensity_high"] = lo, hi
            d[k] = out
        return d


class Residuald(MapTransform):
    """``residual = |pred - image|`` (both in the scaled [0, 1] space), stored under ``residual_key``."""

    def __init__(
        self, keys: KeysCollection = "pred", image_key: str = "image", residual_key: str = "residual"
    ) -> None:
        super().__init__(keys)
        self.image_key, self.residual_key = image_key, residual_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            d[self.residual_key] = (d[k] - d[self.image_key]).abs()
        return d


class UnscaleIntensityd(MapTransform):
    """Map [0, 1] back to the input's intensity units with the bounds ``RobustScaled`` recorded."""

    def __init__(self, keys: KeysCollection = "pred", meta_from: str = "image") -> None:
        super().__init__(keys)
        self.meta_from = meta_from

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        meta = getattr(d[self.meta_from], "meta", {})
        lo, hi = meta.get("intensity_low"), meta.get("intensity_high")
        if lo is None or hi is None:
            return d
        for k in self.key_iterator(d):
            d[k] = d[k] * (float(hi) - float(lo)) + float(lo)
        return d


class Deltad(MapTransform):
    """``delta = pred - image``: what the network changed, in the scaled space on the network's grid
    (signed), stored under ``delta_key`` with ``image``'s meta so that ``Invertd`` maps it back."""

    def __init__(
        self, keys: KeysCollection = "pred", image_key: str = "image", delta_key: str = "delta"
    ) -> None:
        super().__init__(keys)
        self.image_key, self.delta_key = image_key, delta_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            img = d[self.image_key]
            delta = torch.as_tensor(d[k]).to(torch.as_tensor(img).device) - torch.as_tensor(img)
            if isinstance(img, MetaTensor):
                delta = MetaTensor(
                    delta, meta=dict(img.meta), applied_operations=list(img.applied_operations)
                )
            d[self.delta_key] = delta
        return d


class ApplyDeltad(MapTransform):
    """The output on the input's own grid and in its units: ``output = input + delta * (high - low)``
    (the change, inverted onto the input's grid, rescaled by the bounds ``RobustScaled`` recorded),
    and ``residual = input - output`` (what the network removed). An unchanged input comes back bit
    for bit. Refuses to write a non-finite output (NaN weights, say)."""

    def __init__(
        self,
        keys: KeysCollection = "delta",
        input_key: str = "input",
        meta_from: str = "image",
        output_key: str = "pred",
        residual_key: str = "residual",
    ) -> None:
        super().__init__(keys)
        self.input_key, self.meta_from = input_key, meta_from
        self.output_key, self.residual_key = output_key, residual_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        meta = getattr(d[self.meta_from], "meta", {})
        lo, hi = float(meta["intensity_low"]), float(meta["intensity_high"])
        src = d[self.input_key]
        for k in self.key_iterator(d):
            delta = torch.as_tensor(d[k]).to(torch.as_tensor(src).device, torch.float32)
            if delta.shape != src.shape:
                raise ValueError(f"change {tuple(delta.shape)} is not on the input's grid {tuple(src.shape)}")
            out = torch.as_tensor(src) + delta * (hi - lo)
            if not torch.isfinite(out).all():
                name = meta.get("filename_or_obj", "input")
                raise InputError(
                    f"{name}: the network's output is not finite (broken weights?); nothing written"
                )
            residual = torch.as_tensor(src) - out
            if isinstance(src, MetaTensor):
                out = MetaTensor(out, meta=dict(src.meta))
                residual = MetaTensor(residual, meta=dict(src.meta))
            d[self.output_key], d[self.residual_key] = out, residual
        return d
