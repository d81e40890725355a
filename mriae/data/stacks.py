"""Stacks of neighbouring slices from the prepared volumes: the data of the 2.5D denoisers.

A denoiser that sees only one slice cannot tell noise from anatomy as well as one that sees the
slices next to it (BM4D works in 3D for this reason). ``SliceStackDataset`` gives, for every
relevant slice, the ``2k + 1`` slices centred on it (``k = context``) as channels, along one axis
(axis 0, the prepared sagittal slices: the evaluation protocol) or along all three (training: three
times the slices and every orientation, which the three-plane inference then uses).

The volumes live in one tensor, each volume once per axis with that axis first, padded along it by
``k * max_stride`` replicated edge slices (inference replicates the edge slices too) and zero-padded
in the plane to one square size. One batch is ONE gather (``gather``) on the device, optionally with
a random crop of the plane per item and a random neighbour spacing per item (``context_stride``:
slices 1..n voxels apart, so that a model also meets the wider spacing of thick-slice scans). The
crop offsets and strides are drawn from the generator the loader passes (its corruption generator),
so a seeded loader gives the same batches every run, and the gather can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mriae.data.slices import IndexedSlices
from mriae.prepare.datalist import partition_records

__all__ = ["SliceStackDataset"]


def _relevant(vol: np.ndarray, axis: int, min_fraction: float) -> np.ndarray:
    """Slices along ``axis`` whose foreground (above a tenth of the volume's 99th percentile) covers
    ``min_fraction`` of the slice: the other axes' counterpart of the datalist's relevant slices."""
    v = np.moveaxis(np.asarray(vol, dtype=np.float32), axis, 0)
    thr = 0.1 * float(np.percentile(v[:, ::4, ::4], 99))
    area = (v > thr).reshape(v.shape[0], -1).mean(axis=1)
    return np.flatnonzero(area >= min_fraction)


class SliceStackDataset(IndexedSlices):
    """Relevant slices of one partition with ``context`` neighbours on each side.

    Args:
        datalist: path of ``datalist.json`` (or the loaded dict).
        partition: ``training``, ``validation`` or ``test``.
        context: neighbours on each side (``2 * context + 1`` channels; 0 gives single slices).
        axes: slicing axes of the prepared volume; ``(0,)`` keeps the datalist's relevant sagittal
            slices (what evaluation and the compare score), ``(0, 1, 2)`` adds coronal and axial ones.
        crop: side of a random square crop of the plane per training item (None: whole slices).
        context_stride: largest neighbour spacing in voxels; each item draws one in 1..n.
        max_slices_per_subject: keep that many slices per subject and axis, evenly spaced.
        max_subjects / expect: as ``SliceDataset``.

    Items are ``{"image": (2k + 1, S, S), "subject", "slice"}`` (whole slices, spacing 1);
    ``gather(idx, generator)`` gives the batch ``(B, 2k + 1, P, P)`` with the random crops and strides.
    """

    def __init__(
        self,
        datalist: str | Path | Mapping,
        partition: str = "training",
        context: int = 2,
        axes: Sequence[int] = (0,),
        crop: int | None = None,
        context_stride: int = 1,
        max_slices_per_subject: int | None = None,
        max_subjects: int | None = None,
        expect: Mapping | None = None,
    ) -> None:
        dl, root, records = partition_records(datalist, partition, expect, max_subjects)
        self.context, self.axes = int(context), tuple(int(a) for a in axes)
        self.context_stride = max(1, int(context_stride))
        self.crop = None if crop is None else int(crop)
        self.preprocessing, self.records, self.root = dl["preprocessing"], records, root
        min_fraction = float(dl["preprocessing"].get("min_mask_fraction", 0.0))
        vols = [np.load(root / rec["image"], mmap_mode="r") for rec in records]
        side = max(max(v.shape[1:]) for v in vols) if self.axes == (0,) else max(max(v.shape) for v in vols)
        if self.crop is not None and self.crop > side:
            raise ValueError(f"crop {self.crop} is larger than the slices ({side})")
        pad = self.context * self.context_stride
        length = max(max(v.shape[a] for a in self.axes) for v in vols) + 2 * pad
        rows, index, items = [], [], []
        for rec, vol in zip(records, vols):
            for a in self.axes:
                if a == 0:
                    sl = np.asarray(rec["slices"], dtype=int)
                else:
                    sl = _relevant(vol, a, min_fraction)
                if max_slices_per_subject and len(sl) > max_slices_per_subject:
                    sl = sl[np.linspace(0, len(sl) - 1, max_slices_per_subject).round().astype(int)]
                if not len(sl):
                    continue
                t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(vol), a, 0)))
                n, h, w = t.shape
                # edge slices replicated along the slice axis, zeros around the plane and at the end
                t = F.pad(t[None, None].float(), (0, 0, 0, 0, pad, pad), mode="replicate")[0, 0]
                t = F.pad(
                    t,
                    (
                        (side - w) // 2,
                        side - w - (side - w) // 2,
                        (side - h) // 2,
                        side - h - (side - h) // 2,
                    ),
                )
                t = F.pad(t, (0, 0, 0, 0, 0, length - t.shape[0]))
                items.extend((len(rows), int(z) + pad) for z in sl)
                index.extend((rec["subject"], int(z)) for z in sl)
                rows.append(t.to(torch.float16))
        self.stacks = torch.stack(rows)  # (rows, length, side, side) float16
        self.items = torch.tensor(items, dtype=torch.long)  # (N, 2): row, padded slice position
        self.index = index
        self.side = side

    @property
    def channels(self) -> int:
        return 2 * self.context + 1

    def __getitem__(self, i: int) -> dict:
        sid, z = self.index[i]
        row, pos = (int(v) for v in self.items[i])
        k = self.context
        return {"image": self.stacks[row, pos - k : pos + k + 1].float(), "subject": sid, "slice": z}

    def to_device(self, device: torch.device | str) -> _DeviceStacks:
        """The stacks on ``device`` with a ``gather`` for the loader."""
        return _DeviceStacks(self, torch.device(device))


class _DeviceStacks:
    def __init__(self, ds: SliceStackDataset, device: torch.device) -> None:
        self.stacks = ds.stacks.to(device)
        self.items = ds.items.to(device)
        self.k, self.max_stride, self.side = ds.context, ds.context_stride, ds.side
        self.crop = ds.crop
        self.offsets = torch.arange(-self.k, self.k + 1, device=device)

    def __call__(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, 2k + 1, P, P)`` float32 for the items ``idx``: one advanced-indexing gather."""
        dev, b = idx.device, idx.shape[0]
        row, pos = self.items[idx, 0], self.items[idx, 1]
        if self.max_stride > 1:
            stride = torch.randint(1, self.max_stride + 1, (b,), generator=generator, device=dev)
        else:
            stride = torch.ones(b, dtype=torch.long, device=dev)
        z = pos[:, None] + self.offsets[None] * stride[:, None]  # (B, C)
        if self.crop is None:
            return self.stacks[row[:, None], z].float()
        p = self.crop
        y0 = torch.randint(0, self.side - p + 1, (b,), generator=generator, device=dev)
        x0 = torch.randint(0, self.side - p + 1, (b,), generator=generator, device=dev)
        ar = torch.arange(p, device=dev)
        ys = (y0[:, None] + ar)[:, None, :, None]
        xs = (x0[:, None] + ar)[:, None, None, :]
        return self.stacks[row[:, None, None, None], z[:, :, None, None], ys, xs].float()
