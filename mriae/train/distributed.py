"""Training on several GPUs (and nodes) with ``torchrun``: what ``configs/multi_gpu_train.json`` calls.

Every trainable bundle ships a ``configs/multi_gpu_train.json`` merged over its ``train.json``, as the
MONAI Model Zoo bundles do::

    torchrun --nproc_per_node=N -m monai.bundle run training \\
        --config_file "['bundles/<name>/configs/train.json','bundles/<name>/configs/multi_gpu_train.json']"

``torchrun`` starts one process per GPU and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the
config's ``initialize`` calls :func:`init_process_group` (NCCL on GPUs, gloo on CPUs, chosen here),
each process trains on ``cuda:LOCAL_RANK`` (:func:`device`), the network is wrapped in
``DistributedDataParallel`` (:func:`wrap`, batch norm turned into ``SyncBatchNorm`` on GPUs), and
``finalize`` calls :func:`destroy_process_group`.

- Data: each rank draws the same seeded permutation of the epoch and keeps every N-th item from
  its rank on (``torch.utils.data.DistributedSampler`` semantics with ``drop_last``: the last
  ``len % N`` items of the permutation are left out of that epoch, so no slice is seen twice in an
  epoch and every rank has as many batches). :class:`ShardedDeviceBatchLoader` does this in the
  device-resident path; DataLoader bundles get ``torch.utils.data.DistributedSampler``.
  Global batch = N x ``batch_size`` (the per-rank batch): with ``batch_size`` B / N the global
  batches are exactly those of a one-process run with batch B (tests/test_distributed.py checks the
  weights agree).
- Randomness that is not the data order (corruption noise, augmentation, dropout, a GAN's latents)
  differs between ranks and is reseeded at every epoch from ``(seed, rank, epoch)``
  (:class:`PerRankSeed`, :class:`ShardedDeviceBatchLoader`), so a resumed run draws what the
  uninterrupted run would have drawn.
- Writing: rank 0 alone writes checkpoints, history, figures, MLflow runs and the resume state
  (:func:`main_only` filters the handler lists of the other ranks; :func:`is_main` guards calls
  such as ``mriae.train.resume.archive_previous`` and the resume checkpoint's saving).
  Validation runs in full on every rank (identical metrics, so early stopping and the
  learning-rate schedule decide the same everywhere); a time limit is agreed on by all ranks
  (:func:`any_rank`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from mriae.data.slices import DeviceBatchLoader
from mriae.errors import InputError

__all__ = [
    "LAUNCH",
    "world_size",
    "rank",
    "local_rank",
    "is_main",
    "choose_backend",
    "device",
    "init_process_group",
    "destroy_process_group",
    "barrier",
    "wrap",
    "has_batch_norm",
    "main_only",
    "any_rank",
    "rank_seed",
    "PerRankSeed",
    "ShardedDeviceBatchLoader",
    "shard_indices",
    "sweep_worker",
]
logger = logging.getLogger("mriae.train.distributed")

LAUNCH = (
    "torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
    "\"['bundles/<name>/configs/train.json','bundles/<name>/configs/multi_gpu_train.json']\""
)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _ensure() -> None:
    """Join torchrun's process group now if the config has not yet (whatever is resolved first)."""
    if not _initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        init_process_group()


def world_size() -> int:
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on the process that writes (global rank 0), and in a run without torchrun."""
    return rank() == 0


def choose_backend() -> str:
    """NCCL when this process has a GPU (and NCCL is built in), gloo otherwise (CPU processes)."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` on a GPU machine, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    n, lr = torch.cuda.device_count(), local_rank()
    if lr >= n:
        raise InputError(
            f"configs/multi_gpu_train.json: LOCAL_RANK {lr} but this node has {n} GPU(s); "
            f"use torchrun --nproc_per_node={n} or fewer"
        )
    return torch.device(f"cuda:{lr}")


def init_process_group(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` set up (its ``env://`` rendezvous); idempotent. Outside
    torchrun (no ``WORLD_SIZE`` / ``MASTER_ADDR``) the config was started the wrong way: one line."""
    if _initialized():
        return True
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise InputError(
            "configs/multi_gpu_train.json: not started by torchrun (no WORLD_SIZE / MASTER_ADDR); run " + LAUNCH
        )
    backend = backend or choose_backend()
    if backend == "nccl":
        torch.cuda.set_device(device())
    dist.init_process_group(backend=backend)
    logger.info(
        "process group: rank %d of %d (local rank %d), backend %s", rank(), world_size(), local_rank(), backend
    )
    return True


def destroy_process_group() -> None:
    if _initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if _initialized() and world_size() > 1:
        dist.barrier()


def has_batch_norm(network: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules())


def wrap(network: torch.nn.Module, sync_batch_norm: bool | None = None) -> torch.nn.Module:
    """``network`` (already on this rank's device) in ``DistributedDataParallel``.

    Batch norm becomes ``SyncBatchNorm`` (statistics over the global batch) when the network has
    batch norm and runs on a GPU; PyTorch's ``SyncBatchNorm`` has no CPU kernel, so CPU processes
    keep per-rank statistics (a warning says so). ``broadcast_buffers=False``: with synchronised
    statistics every rank's running averages are already the same, and a buffer broadcast at every
    forward would be an extra collective (and an in-place write that a gradient penalty's double
    backward through batch norm cannot take). Without a process group of more than one process the
    network is returned as it is."""
    _ensure()
    if not _initialized() or world_size() < 2:
        return network
    dev = next(network.parameters()).device
    bn = has_batch_norm(network)
    if sync_batch_norm is None:
        sync_batch_norm = bn and dev.type == "cuda"
    if sync_batch_norm and bn:
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    elif bn and is_main():
        logger.warning(
            "the network has batch norm but runs on %s: SyncBatchNorm needs CUDA, so each rank keeps "
            "its own batch statistics", dev.type
        )
    ids = [dev.index] if dev.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        network, device_ids=ids, output_device=dev.index if ids else None, broadcast_buffers=False
    )


def _writer_types() -> tuple[type, ...]:
    """MONAI's and Ignite's handlers that write files, logs or tracking (rank 0 only); this package's
    writers say so themselves (``main_process_only = True``)."""
    try:
        from ignite.handlers import ProgressBar
    except ImportError:  # ignite < 0.5
        from ignite.contrib.handlers import ProgressBar
    import monai.handlers as mh

    names = ("MLFlowHandler", "StatsHandler", "CheckpointSaver", "TensorBoardStatsHandler",
             "TensorBoardImageHandler")
    return (ProgressBar, *(getattr(mh, n) for n in names if hasattr(mh, n)))


def _writes(handler) -> bool:
    return bool(getattr(handler, "main_process_only", False)) or isinstance(handler, _writer_types())


def main_only(handlers: Sequence | None) -> list:
    """``handlers`` on rank 0; on the other ranks the same list without the writers (checkpoints,
    history, figures, statistics logs, progress bars, MLflow). What remains (validation, metrics,
    LR schedule, early stopping, time limits, resume loading) runs on every rank, so all ranks take
    the same decisions."""
    _ensure()
    handlers = [h for h in (handlers or []) if h is not None]
    if is_main():
        return handlers
    return [h for h in handlers if not _writes(h)]


def any_rank(flag: bool, dev: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on any rank (a stop that all ranks must agree on:
    one rank stopping alone would leave the others waiting in the next all-reduce)."""
    if not _initialized() or world_size() < 2:
        return bool(flag)
    if dev is None:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank_seed(seed: int, epoch: int = 0, r: int | None = None) -> int:
    """A seed for ``(seed, rank, epoch)``, distinct for every rank and epoch (fits in 63 bits)."""
    r = rank() if r is None else r
    return (int(seed) * 1_000_003 + int(r) * 10_007 + int(epoch) * 101 + 17) % (2**63 - 1)


class PerRankSeed:
    """At every epoch start, seed Python's, NumPy's and torch's global generators from ``(seed,
    rank, epoch)``: dropout masks and a GAN's latents then differ between ranks (the same latents on
    every rank would waste N - 1 of the fakes), and a resumed run draws what an uninterrupted one
    would (the resume state holds rank 0's generators only). A no-op outside a process group."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        _ensure()
        if _initialized() and world_size() > 1:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        import random

        import numpy as np

        s = rank_seed(self.seed, engine.state.epoch)
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)


def shard_indices(order: torch.Tensor, num_replicas: int, rank: int) -> torch.Tensor:
    """This rank's share of one epoch's order: the first ``len - len % N`` items, every N-th from
    ``rank`` on (``DistributedSampler(drop_last=True)``'s rule). Batch b of every rank together is
    batch b of a one-process run with N times the batch."""
    n = (len(order) // num_replicas) * num_replicas
    return order[rank:n:num_replicas]


class ShardedDeviceBatchLoader(DeviceBatchLoader):
    """:class:`mriae.data.slices.DeviceBatchLoader` for one rank of ``num_replicas``: every rank draws the
    same seeded permutation (one generator, same seed, same state after a resume) and keeps its share
    (:func:`shard_indices`); ``len`` is this rank's number of batches. The corruption / augmentation
    generator is reseeded at every epoch from ``(corruption_seed, rank, epoch)``: ranks corrupt their
    slices independently, and a resumed run draws the same noise as an uninterrupted one.
    ``num_replicas`` / ``rank`` default to the process group's."""

    def __init__(self, *args, num_replicas: int | None = None, rank: int | None = None, **kwargs) -> None:
        _ensure()
        super().__init__(*args, **kwargs)
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        self.rank = globals()["rank"]() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} outside 0..{self.num_replicas - 1}")
        if len(self.dataset) < self.num_replicas:
            raise InputError(
                f"{len(self.dataset)} training item(s) for {self.num_replicas} ranks: every rank needs at least one"
            )
        self.corruption_seed = kwargs.get("corruption_seed")
        self.epoch = 0

    def _local_len(self) -> int:
        return len(self.dataset) // self.num_replicas

    def __len__(self) -> int:
        n = self._local_len()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        return shard_indices(super().order(), self.num_replicas, self.rank)

    def __iter__(self):
        if self.corruption_generator is not None and self.corruption_seed is not None:
            self.corruption_generator.manual_seed(rank_seed(int(self.corruption_seed), self.epoch, self.rank))
        self.epoch += 1
        return super().__iter__()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.epoch = int(state.get("epoch", 0))


# ------------------------------------------------------------------ sweep workers (mriae.tools.sweep)
def sweep_worker() -> int:
    """Under ``torchrun -m mriae.tools.sweep``: this worker's number (the global rank) and, before CUDA
    starts, its GPU: ``CUDA_VISIBLE_DEVICES`` becomes the ``LOCAL_RANK``-th of the visible devices
    (of ``0, 1, ...`` when unset), so each worker trains its trials on one GPU as ``cuda:0``. On a
    machine without GPUs each worker is one CPU process. Outside torchrun: 0 (one worker)."""
    if int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return 0
    lr = local_rank()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d for d in visible.split(",") if d.strip()]
        if lr >= len(devices):
            raise InputError(
                f"mriae.tools.sweep: worker {lr} on this node but CUDA_VISIBLE_DEVICES={visible} names {len(devices)} "
                f"device(s); start at most {len(devices)} per node (--nproc_per_node)"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[lr]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(lr)
    return rank()
