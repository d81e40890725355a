"""Slices of prepared volumes: the slice dataset and the device-resident batch loader (the one data
path every 2D bundle trains on)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mriae.prepare.datalist import partition_records

__all__ = ["SliceDataset", "IndexedSlices", "DeviceBatchLoader"]


class IndexedSlices(torch.utils.data.Dataset):
    """Slices held as one ``images`` tensor ``(N, 1, ...)`` with ``index[i] = (subject, slice)``:
    items ``{"image", "subject", "slice"}``, and each subject's middle slice for figures."""

    images: torch.Tensor
    index: list[tuple[str, int]]

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


class SliceDataset(IndexedSlices):
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
        dl, root, records = partition_records(datalist, partition, expect, max_subjects)
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
        self.records, self.root = records, root
        self.preprocessing = dl["preprocessing"]


class DeviceBatchLoader:
    """Batches of a ``SliceDataset`` (or ``VolumeDataset``) sampled by index where the data lives: the
    whole stack sits on ``device`` (float16, as cached: 46k IXI slices take 1.5 GB), each epoch draws
    one seeded permutation there, and a batch is one gather. No worker processes, no per-sample
    Python, no host-to-device copy in the loop: what keeps a GPU busy when a step takes a millisecond.

    Yields ``{"image": (B, 1, *spatial) float32, "subject": list, "slice": tensor}`` like a DataLoader
    over the dataset with the same order would (the values are identical: tests check it). ``subject``
    / ``slice`` are only attached when ``with_ids`` (evaluation needs them; training does not).

    A dataset with ``to_device`` (``mriae.data.stacks.SliceStackDataset``) gathers its own batches
    (stacks of ``2k + 1`` neighbouring slices, random crops); the target is then the centre slice.
    ``augmentation`` (a :class:`mriae.data.corruption.Augmentation`) changes the clean batch before the
    corruption, from the same generator.

    With ``corruption`` (a :class:`mriae.data.corruption.Corruption`) a batch is ``{"image": corrupted,
    "label": clean}``, corrupted on the device with its own generator seeded by ``corruption_seed``
    (None: the global RNG); ``channels_last`` lays the corrupted 2D batch out for a channels_last
    network. ``prefetch`` > 0 produces that many batches ahead in a background thread: the gather and
    the corruption kernels are then queued while the training thread waits in ``backward`` (which
    releases the GIL), instead of adding their Python and launch time to every step. An error in the
    thread is raised in the consumer. ``cuda_graph`` (CUDA only, with ``corruption``) captures a full
    batch's gather, corruption and layout in one CUDA graph (:class:`_GraphedBatch`); an epoch's last,
    smaller batch runs eagerly.
    """

    def __init__(
        self,
        dataset: SliceDataset,
        batch_size: int = 32,
        shuffle: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        with_ids: bool = False,
        corruption=None,
        corruption_seed: int | None = None,
        channels_last: bool = False,
        prefetch: int = 0,
        cuda_graph: bool = False,
        augmentation=None,
    ) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), shuffle
        self.device = torch.device(device)
        self.drop_last, self.with_ids = drop_last, with_ids
        if hasattr(dataset, "to_device"):  # slice stacks: gathered (with crops) by the dataset's own gather
            self._gather = dataset.to_device(self.device)
            self.context = int(dataset.context)
        else:
            self._gather = _DeviceImages(dataset.images.to(self.device, dtype=torch.float16))
            self.context = 0
        self.augmentation = augmentation
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._slices = torch.tensor([z for _, z in dataset.index], device=self.device)
        self.corruption, self.channels_last, self.prefetch = (
            corruption,
            bool(channels_last),
            int(prefetch or 0),
        )
        self.corruption_generator = (
            None
            if corruption_seed is None
            else torch.Generator(device=self.device).manual_seed(int(corruption_seed))
        )
        self.cuda_graph = bool(cuda_graph) and corruption is not None
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device, got {self.device}")
        self._graphed = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        """The order and corruption generators' states (crash-resume, ``mriae.train.resume``)."""
        state = {"generator": self.generator.get_state()}
        if self.corruption_generator is not None:
            state["corruption_generator"] = self.corruption_generator.get_state()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"])
        if self.corruption_generator is not None and "corruption_generator" in state:
            self.corruption_generator.set_state(state["corruption_generator"])

    def order(self) -> torch.Tensor:
        n = len(self.dataset)
        if self.shuffle:
            return torch.randperm(n, generator=self.generator, device=self.device)
        return torch.arange(n, device=self.device)

    def __iter__(self):
        if self.cuda_graph and self._graphed is None:  # captured here, before any prefetch thread starts
            self._graphed = _GraphedBatch(self)
        if self.prefetch > 0:
            return _prefetched(self._batches(), self.prefetch)
        return self._batches()

    def _batches(self):
        order = self.order()
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self._graphed is not None and len(idx) == self.batch_size:
                x, clean = self._graphed(idx)
                batch = {"image": x, "label": clean}
            elif self.corruption is not None:
                x, clean = self._corrupted(idx, self.corruption_generator)
                batch = {"image": x, "label": clean}
            else:
                batch = {"image": self._gather(idx, self.corruption_generator)}
            if self.with_ids:
                ids = idx.tolist()
                batch["subject"] = [self.dataset.index[i][0] for i in ids]
                batch["slice"] = self._slices.index_select(0, idx)
            yield batch

    def _corrupted(self, idx: torch.Tensor, g: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(corrupted, clean target)`` for the items ``idx``: gather, cast, augmentation, corruption,
        layout (eager or captured). With context slices the target is the clean centre slice."""
        clean = self._gather(idx, g)
        if self.augmentation is not None:
            clean = self.augmentation(clean, generator=g)
        x = self.corruption(clean, generator=g)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.context:
            clean = clean[:, self.context : self.context + 1].contiguous()
        return x, clean


class _DeviceImages:
    """A slice stack ``(N, 1, ...)`` on the device, gathered by index (the loader's plain path)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.images.index_select(0, idx).float()


class _GraphedBatch:
    """The gather, cast, corruption and layout of one full batch captured once in a CUDA graph: a
    batch then costs one index copy, one graph replay and two output copies instead of ~60 kernel
    launches from Python (what holds the loader back when the training step is short or compiled;
    docs/performance.md). The corruption's generator is registered with the graph, so replays draw
    from it as the eager kernels would, and it is re-seeded after the capture: the batches are those
    of the eager path (tests/test_fast_path.py checks it on a GPU)."""

    def __init__(self, loader: DeviceBatchLoader) -> None:
        if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            raise RuntimeError(
                f"cuda_graph needs torch >= 2.5 (graph-safe generators); this is {torch.__version__}"
            )
        dev, g = loader.device, loader.corruption_generator
        self.idx = torch.zeros(loader.batch_size, dtype=torch.long, device=dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up: cuDNN / cuBLAS set-up happens outside the capture
            for _ in range(3):
                loader._corrupted(self.idx, g)
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.cuda.synchronize(dev)
        self.graph = torch.cuda.CUDAGraph()
        if g is not None:
            self.graph.register_generator_state(g)
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.out = loader._corrupted(self.idx, g)
        if g is not None:  # the warm-up and the capture drew from it: back to the loader's seed
            g.manual_seed(g.initial_seed())

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.idx.copy_(idx)
        self.graph.replay()
        return self.out[0].clone(), self.out[1].clone()  # the graph's buffers are rewritten next batch


def _prefetched(source, depth: int):
    """Iterate ``source`` in a daemon thread, ``depth`` items ahead; re-raise its error here; stop the
    thread when the consumer stops early (an Ignite ``terminate``) or is garbage-collected.
    (MONAI's ``ThreadBuffer`` does the same but ends the iteration silently when the producer raises.)"""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in source:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    thread = threading.Thread(target=work, name="DeviceBatchLoader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
