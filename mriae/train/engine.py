"""Ignite / MONAI engine pieces the bundles glue together in their configs.

- ``SupervisedTrainer``: MONAI's ``SupervisedTrainer`` without its per-iteration walk over every
  module to re-enter training mode (only after validation left the network in eval mode), and
  with an un-decollated output that MONAI's ``from_engine(..., first=True)`` reads.
- ``CorruptedBatch``: a ``prepare_batch`` for MONAI's ``SupervisedTrainer`` that moves the clean
  batch to the device and corrupts the INPUT there (target stays clean).
- ``ReconstructionEvaluator``: MONAI's ``SupervisedEvaluator`` that also runs each configured
  corruption of the input (seeded, identical every epoch) and keeps all predictions in the output.
- ``BestCheckpoint``: keeps the best weights by a validation metric, written atomically
  (temporary file, then ``os.replace``) with a JSON sidecar; MONAI's ``CheckpointSaver`` writes
  in place (``atomic=False``), which an interrupted run can leave truncated.
- ``History``: per-epoch training loss and validation metrics, a curves figure at the end.
- ``metric_of`` / ``negative_metric_of``: score functions for plateau LR and early stopping.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.engines import SupervisedTrainer as _MonaiSupervisedTrainer
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys

from mriae.files import atomic_torch_save, atomic_write_text
from mriae.data.corruption import CORRUPTION_SEED, Corruption, corrupt_items

__all__ = [
    "AutocastInferer",
    "SupervisedTrainer",
    "param_groups",
    "CorruptedBatch",
    "ReconstructionEvaluator",
    "BestCheckpoint",
    "History",
    "metric_of",
    "negative_metric_of",
    "seed_everything",
    "TimeLimit",
]


def seed_everything(seed: int) -> int:
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    return seed


class SupervisedTrainer(_MonaiSupervisedTrainer):
    """MONAI's ``SupervisedTrainer`` (same arguments, events and outputs) that puts the network in
    training mode only when it is not in it already.

    MONAI calls ``network.train()`` at every iteration: a recursive walk that sets ``training`` on
    every submodule. For a small network on a GPU the step is bound by the Python time that issues
    its kernels, and that walk is a few percent of it (docs/performance.md). The mode only changes
    when validation puts the network (or the module inside DistributedDataParallel) in eval mode,
    so the walk is done then and skipped otherwise (``network.train`` is shadowed by a no-op for
    the one iteration; ``eval()`` still works). A submodule that a handler put
    in eval mode on purpose (frozen batch norm) therefore stays so, where MONAI would undo it.

    With ``decollate=False`` (the bundles: splitting the batch into items and reading the loss to
    the host at every iteration is a device synchronisation and Python per item) the output is the
    batch's dictionary in a one-item list, shaped as a decollated batch is, so MONAI's
    ``from_engine(['loss'], first=True)`` (the default of ``monai.bundle run --tracking mlflow``)
    reads the loss as it would after decollation."""

    def __init__(self, *args, decollate: bool = True, **kwargs) -> None:
        super().__init__(*args, decollate=decollate, **kwargs)
        self.decollated = bool(decollate)
        self._keep_training = functools.partial(_keep_training, self.network)  # the network as wrapped

    def _iteration(self, engine, batchdata):
        net = engine.network
        inner = getattr(net, "module", net)  # DistributedDataParallel keeps its own flag
        if not (net.training and inner.training):
            net.train()
        net.__dict__["train"] = engine._keep_training  # shadows Module.train
        try:
            out = super()._iteration(engine, batchdata)
        finally:
            net.__dict__.pop("train", None)
        return out if engine.decollated else [out]


def _keep_training(net: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """``net.train`` during a training iteration: nothing to do in training mode; ``eval()`` works."""
    return net if mode else type(net).train(net, False)


class CorruptedBatch:
    """``prepare_batch(batchdata, device, non_blocking) -> (corrupted input, clean target)``."""

    def __init__(
        self,
        corruption: Corruption | None,
        key: str = "image",
        seed: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.corruption, self.key, self.seed, self.channels_last = corruption, key, seed, channels_last
        self._gen: torch.Generator | None = None

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        if isinstance(batchdata, Mapping) and "label" in batchdata:  # corrupted by the loader already
            if self.corruption is not None:
                raise ValueError(
                    "CorruptedBatch: the batch is already corrupted (it has a 'label'); pass corruption=None"
                )
            return tuple(
                torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking)
                for k in (self.key, "label")
            )
        clean = batchdata[self.key] if isinstance(batchdata, Mapping) else batchdata
        clean = torch.as_tensor(clean).to(device=device, non_blocking=non_blocking)
        x = (
            clean
            if self.corruption is None
            else self.corruption(clean, generator=self._generator(clean.device))
        )
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, clean


class ReconstructionEvaluator(SupervisedEvaluator):
    """Evaluate reconstruction of clean AND corrupted inputs in one pass over the data.

    ``conditions`` maps a name to a ``Corruption`` (e.g. ``{"corrupted": Corruption()}``); the clean
    input is always evaluated as ``"clean"``. With ``context`` k the batch holds stacks of ``2k + 1``
    neighbouring slices: all of them are corrupted, the target is the clean centre slice. Output keys per iteration: ``label`` (clean target),
    ``pred`` (reconstruction of the clean input), ``input_<name>`` and ``pred_<name>`` for each
    condition, plus ``subject`` and ``slice`` from the batch. Each item is corrupted by
    ``mriae.data.corruption.corrupt_items`` (its own CPU generator, seeded by ``corruption_seed``, the
    condition's settings and the item's subject and slice), so every epoch validates on exactly the
    same corrupted images, and they are the ones evaluate.json and the compare score for the same
    slices and condition. The corrupted items are kept on the device after the first run while they
    take less than ``cache_bytes``.
    """

    def __init__(
        self,
        *args,
        conditions: Mapping[str, Corruption] | None = None,
        corruption_seed: int = CORRUPTION_SEED,
        context: int = 0,
        cache_bytes: int = 4 * 2**30,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.conditions = dict(conditions or {})
        self.corruption_seed = int(corruption_seed)
        self.context = int(context)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cached_bytes = 0

    def _corrupted(self, name: str, corruption: Corruption, clean: torch.Tensor, batchdata: Mapping) -> torch.Tensor:
        subjects, slices = batchdata.get("subject"), batchdata.get("slice")
        if subjects is None or slices is None:
            raise ValueError(
                "ReconstructionEvaluator: batches need 'subject' and 'slice' to seed their corruption "
                "(DeviceBatchLoader: with_ids=True)"
            )
        slices = slices.tolist() if isinstance(slices, torch.Tensor) else list(slices)
        keys = [(str(s), int(z)) for s, z in zip(subjects, slices)]
        hit = [self._cache.get((name, *k)) for k in keys]
        if all(h is not None and h.shape == clean.shape[1:] for h in hit):
            return torch.stack(hit)
        x = corrupt_items(corruption, clean, keys, self.corruption_seed)
        if self._cached_bytes + x.numel() * x.element_size() <= self.cache_bytes:
            self._cache.update({(name, *k): x[i] for i, k in enumerate(keys)})
            self._cached_bytes += x.numel() * x.element_size()
        return x

    def _iteration(self, engine: Engine, batchdata: dict) -> dict:
        clean = batchdata[CommonKeys.IMAGE].to(engine.state.device, non_blocking=engine.non_blocking)
        inputs = {"clean": clean}
        for name, corruption in self.conditions.items():  # every context slice is corrupted
            inputs[name] = self._corrupted(name, corruption, clean.float(), batchdata).to(clean.dtype)
        k = self.context
        centre = (lambda t: t[:, k : k + 1]) if k else (lambda t: t)
        target = centre(clean)
        out = {CommonKeys.IMAGE: target, CommonKeys.LABEL: target}
        engine.network.eval()
        amp = {"enabled": bool(engine.amp), **(engine.amp_kwargs or {})}
        with torch.no_grad(), torch.autocast(device_type=clean.device.type, **amp):
            for name, x in inputs.items():
                pred = engine.inferer(x, engine.network).float()
                if name == "clean":
                    out[CommonKeys.PRED] = pred
                else:
                    out[f"input_{name}"] = centre(x)
                    out[f"pred_{name}"] = pred
        out["subject"] = batchdata.get("subject")
        out["slice"] = batchdata.get("slice")
        return out


class AutocastInferer(SimpleInferer):
    """``SimpleInferer`` under ``torch.autocast`` (bf16 by default), returning float32 predictions.

    MONAI's trainer ``amp=True`` always adds a ``GradScaler``, whose ``step`` reads ``found_inf`` with
    ``.item()``: a device synchronisation every iteration, which stalls a fast loop. bf16 has fp32's
    exponent range and needs no loss scaling, so the bundles keep the trainer's ``amp`` off and put
    autocast here instead (``--amp True``)."""

    def __init__(self, enabled: bool = False, dtype: str | torch.dtype = "bfloat16") -> None:
        super().__init__()
        self.enabled = bool(enabled)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if not self.enabled:
            return network(inputs, *args, **kwargs)
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype):
            return network(inputs, *args, **kwargs).float()


class TimeLimit:
    """Stop training ``seconds`` after it started (checked after every iteration, every 20th under
    torchrun, where the ranks agree on it in one all-reduce; the epoch's
    validation is then skipped and the best checkpoint so far is kept; ``--resume True`` continues
    from the last completed epoch). The clock starts with the
    trainer's run, so building the data and the network does not count (Ignite's own
    ``TimeLimit`` counts from its creation)."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds
        self._t0 = 0.0

    def attach(self, engine: Engine) -> None:
        if self.seconds is None:
            return
        import time

        def start(_):
            self._t0 = time.perf_counter()

        from mriae.train.distributed import any_rank, world_size

        # under torchrun all ranks agree (one all-reduce) every `every` iterations, not at every step
        every = 20 if world_size() > 1 else 1

        def check(e: Engine):
            if e.state.iteration % every:
                return
            if any_rank(time.perf_counter() - self._t0 > float(self.seconds)):
                e.logger.info("time limit of %s s reached: stopping", self.seconds)
                e.state.time_limit_reached = True  # a resume checkpoint is kept: --resume True goes on
                e.terminate()

        engine.add_event_handler(Events.STARTED, start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, check)


def metric_of(name: str):
    """``engine -> engine.state.metrics[name]`` (for ``LrScheduleHandler``'s step_transform)."""

    def get(engine: Engine) -> float:
        return float(engine.state.metrics[name])

    return get


def negative_metric_of(name: str):
    """Score for ``EarlyStopHandler`` (higher is better) from a loss-like metric."""

    def get(engine: Engine) -> float:
        return -float(engine.state.metrics[name])

    return get


class BestCheckpoint:
    """Save ``network``'s state_dict to ``path`` whenever ``metric`` improves (lower is better when
    ``mode='min'``), atomically, with a JSON sidecar (epoch, metrics, ``info``)."""

    main_process_only = True  # writes files: under torchrun only rank 0 runs it (train.distributed.main_only)

    def __init__(
        self,
        network: torch.nn.Module,
        path: str,
        metric: str = "val_loss",
        mode: str = "min",
        info: Mapping | None = None,
    ) -> None:
        self.network, self.path, self.metric, self.mode = network, Path(path), metric, mode
        self.info = dict(info or {})
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping) -> None:
        self.best = state.get("best")

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric])
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if not better:
            return
        self.best = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        net = getattr(self.network, "module", self.network)
        atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, self.path)
        epoch = engine.state.epoch  # MONAI's Evaluator.run(global_epoch) sets it to the trainer's epoch
        meta = {
            "epoch": epoch,
            "metric": self.metric,
            "value": value,
            "metrics": {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))},
            **self.info,
        }
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(meta, indent=2, default=str))


class History:
    """Record the mean training loss per epoch (also put in ``trainer.state.metrics['train_loss']``
    so MLflow logs it per epoch) and the validation metrics; at the end write ``history.json`` and
    ``curves.png`` (loss and metric curves) into ``output_dir``."""

    main_process_only = True  # writes files: under torchrun only rank 0 runs it (train.distributed.main_only)

    def __init__(
        self, output_dir: str, evaluator: Engine | None = None, metrics: tuple[str, ...] = ("val_loss",)
    ) -> None:
        self.output_dir, self.evaluator, self.metrics = Path(output_dir), evaluator, tuple(metrics)
        self.train_loss: list[float] = []
        self.val: list[dict] = []
        self._sum, self._n = 0.0, 0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._reset)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        trainer.add_event_handler(Events.COMPLETED, self.write)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._val)

    def _reset(self, _):
        self._sum, self._n = 0.0, 0

    def _accumulate(self, engine: Engine):
        out = engine.state.output
        loss = out[0]["loss"] if isinstance(out, list) else out["loss"]
        # a tensor stays on the device (no synchronisation per iteration); MONAI's decollation has
        # already turned it into a Python float when the trainer decollates
        self._sum = self._sum + (loss.detach() if isinstance(loss, torch.Tensor) else float(loss))
        self._n += 1

    def state_dict(self) -> dict:
        return {"train_loss": list(self.train_loss), "validation": list(self.val)}

    def load_state_dict(self, state: Mapping) -> None:
        self.train_loss, self.val = list(state["train_loss"]), list(state["validation"])

    def _epoch(self, engine: Engine):
        if self._n:
            self.train_loss.append(float(self._sum) / self._n)
            engine.state.metrics["train_loss"] = self.train_loss[-1]
        self._write_json()  # every epoch: a killed run leaves its own history beside its own model

    def _val(self, engine: Engine):
        self.val.append({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        self._write_json()

    def _write_json(self) -> dict:
        from mriae.files import atomic_write_text

        hist = {"train_loss": self.train_loss, "validation": self.val}
        atomic_write_text(self.output_dir / "history.json", json.dumps(hist, indent=2))
        return hist

    def write(self, _=None) -> None:
        from mriae.figures.plots import plot_curves

        plot_curves(self._write_json(), self.output_dir / "curves.png", self.metrics)


def param_groups(network: torch.nn.Module, l2: float = 0.0) -> list[dict]:
    """Optimizer parameter groups with S4's optional L2 on convolution KERNELS only.

    Keras' ``kernel_regularizer=l2(l2)`` adds ``l2 * sum(w**2)`` to the loss, i.e. ``2 * l2 * w`` to the
    gradient; PyTorch's ``weight_decay`` adds ``weight_decay * w``, so kernels get ``2 * l2``. Biases and
    batch-norm parameters are not regularised, as in S4."""
    kernels, rest = [], []
    for m in network.modules():
        for name, p in m.named_parameters(recurse=False):
            is_kernel = name == "weight" and isinstance(m, torch.nn.modules.conv._ConvNd)
            (kernels if is_kernel else rest).append(p)
    if l2 <= 0:
        return [{"params": kernels + rest}]
    return [{"params": kernels, "weight_decay": 2 * l2}, {"params": rest, "weight_decay": 0.0}]
