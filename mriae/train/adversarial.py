"""GAN training for the DCGAN / WGAN-GP bundles: MONAI's ``GanTrainer`` with what it lacks.

MONAI's ``GanTrainer`` (1.6) repeats ``d_train_steps`` critic updates on ONE real batch and one set
of fakes, passes the loss functions the generator's output still attached to its graph, sizes the
latent batch by ``data_loader.batch_size`` (wrong for a short last batch), has no gradient penalty
and returns only ``g_loss`` / ``d_loss``, so MONAI's MLflow / Stats handlers (which read ``loss``)
fail on it. ``AdversarialTrainer`` keeps its constructor, latents, inferers and handlers and
replaces the iteration:

- one Ignite iteration = one critic update on a FRESH real batch and fresh fakes (Gulrajani et al.
  2017, algorithm 1); every ``n_critic``-th iteration the generator is updated too (DCGAN:
  ``n_critic=1``, one critic and one generator step per batch, S1's algorithm 2);
- the gradient penalty ``gp_weight * E[(||grad_x D(x_hat)||_2 - 1)^2]`` on ``x_hat`` uniformly
  between real and fake (``gradient_penalty``);
- the output, shaped like a decollated batch (a one-item list of a dict, so MONAI's
  ``from_engine(['loss'], first=True)`` works), carries scalars: ``loss`` (= ``g_loss``), ``g_loss``,
  ``d_loss`` (critic loss without the penalty), ``d_real`` / ``d_fake`` (mean scores), ``g_step``;
  with the Wasserstein loss also ``wasserstein`` (``E[D(real)] - E[D(fake)]``, the critic's estimate
  of the distance), and with a penalty ``gp`` and ``grad_norm`` (mean gradient norm at ``x_hat``).
  On iterations without a generator update, ``g_loss`` is the generator loss on that
  iteration's fakes under the critic before its update (no extra forward pass).

``GanLosses`` averages these per epoch into ``engine.state.metrics`` (``train_<name>``), so MLflow's
epoch log records them; ``GanCheckpoint`` saves generator and critic weights atomically each epoch
and, with ``state_path``, the whole training state (both networks and optimisers, the update
counters, the epoch and the random generators) every ``state_interval`` epochs and when the run
ends. ``GanResume`` loads that state when the next command starts, so a GAN run longer than one
command continues where the last one stopped (``StopAfter`` ends a command at an epoch boundary
once its time is up). A gradient-penalty critic with batch norm is refused: the penalty is taken
per sample, and batch norm makes each sample's score depend on the rest of the batch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines import GanTrainer
from monai.utils import GanKeys

from mriae.files import atomic_torch_save, atomic_write_text
__all__ = [
    "AdversarialLoss",
    "gradient_penalty",
    "AdversarialTrainer",
    "RealImages",
    "GanLosses",
    "GanCheckpoint",
    "GanResume",
    "StopAfter",
    "OUTPUT_KEYS",
]
logger = logging.getLogger("mriae.train.adversarial")

OUTPUT_KEYS = ("g_loss", "d_loss", "gp", "grad_norm", "d_real", "d_fake", "wasserstein")


class AdversarialLoss:
    """``kind="bce"``: S1's DCGAN (discriminator outputs probabilities; D loss
    ``bce(D(x), 1) + bce(D(G(z)), 0)``, G loss ``bce(D(G(z)), 1)``). ``kind="wasserstein"``: WGAN
    (critic loss ``E[D(G(z))] - E[D(x)]``, G loss ``-E[D(G(z))]``); the penalty is added by the trainer."""

    def __init__(self, kind: str = "bce") -> None:
        if kind not in ("bce", "wasserstein"):
            raise ValueError(f"adversarial loss {kind!r} must be 'bce' or 'wasserstein'")
        self.kind = kind

    def critic(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        if self.kind == "wasserstein":
            return fake_scores.mean() - real_scores.mean()
        return F.binary_cross_entropy(real_scores, torch.ones_like(real_scores)) + F.binary_cross_entropy(
            fake_scores, torch.zeros_like(fake_scores)
        )

    def generator(self, fake_scores: torch.Tensor) -> torch.Tensor:
        if self.kind == "wasserstein":
            return -fake_scores.mean()
        return F.binary_cross_entropy(fake_scores, torch.ones_like(fake_scores))


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[(||grad D(x_hat)||_2 - 1)^2], mean ||grad D(x_hat)||_2)`` with ``x_hat = eps * real + (1 -
    eps) * fake``, ``eps ~ U[0, 1]`` per sample (or given, shape ``(B, 1, ...)``). The penalty keeps its
    graph (``create_graph=True``) so that its gradient reaches the critic's weights."""
    if eps is None:
        eps = torch.rand(real.shape[0], *[1] * (real.ndim - 1), device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - 1) ** 2).mean(), norm.mean().detach()


class RealImages:
    """``d_prepare_batch``: the ``key`` images of a batch (a dict as ``SliceDataset`` gives) on the device."""

    def __init__(self, key: str = "image") -> None:
        self.key = key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs) -> torch.Tensor:
        x = batchdata[self.key] if isinstance(batchdata, Mapping) else batchdata
        return torch.as_tensor(x).to(device=device, non_blocking=non_blocking).float()


class AdversarialTrainer(GanTrainer):
    """MONAI ``GanTrainer`` with WGAN-GP's critic schedule and penalty and a loggable output (module doc).

    Args (beyond ``GanTrainer``'s ``device``, ``max_epochs``, ``train_data_loader``, ``g_network``,
    ``g_optimizer``, ``d_network``, ``d_optimizer``, ``latent_shape``, ``epoch_length``,
    ``train_handlers``, ``g_inferer``, ``d_inferer``, ``g_prepare_batch``):
        loss: ``"bce"`` (DCGAN) or ``"wasserstein"`` (WGAN), see ``AdversarialLoss``.
        n_critic: critic updates (each on a new real batch) per generator update (WGAN-GP: 5).
        gp_weight: lambda of the gradient penalty (WGAN-GP: 10; 0 turns it off).
        d_prepare_batch: defaults to ``RealImages("image")``.
    """

    def __init__(
        self,
        *args,
        loss: str = "bce",
        n_critic: int = 1,
        gp_weight: float = 0.0,
        d_prepare_batch: Callable | None = None,
        **kwargs,
    ) -> None:
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        critic = kwargs.get("d_network")
        if gp_weight > 0 and critic is not None:
            bn = [
                n for n, m in critic.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            ]
            if bn:
                raise ValueError(f"a gradient-penalty critic must not use batch norm (found {bn[0]!r})")
        self.adversarial_loss = AdversarialLoss(loss)
        kwargs.setdefault("g_loss_function", self.adversarial_loss.generator)
        kwargs.setdefault("d_loss_function", self.adversarial_loss.critic)
        kwargs["decollate"] = False
        super().__init__(*args, d_prepare_batch=d_prepare_batch or RealImages(), **kwargs)
        self.n_critic, self.gp_weight = int(n_critic), float(gp_weight)
        self.g_updates = 0
        self.d_updates = 0

    def _latents(self, engine: AdversarialTrainer, n: int) -> torch.Tensor:
        return engine.g_prepare_batch(
            num_latents=n,
            latent_size=engine.latent_shape,
            device=engine.state.device,
            non_blocking=engine.non_blocking,
            **engine.to_kwargs,
        )

    def _iteration(self, engine: AdversarialTrainer, batchdata) -> list[dict]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        loss = engine.adversarial_loss
        reals = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        n = reals.shape[0]
        g_net, d_net = engine.g_network, engine.d_network
        g_net.train()
        d_net.train()

        # critic update on this real batch and fresh fakes
        with torch.no_grad():
            fakes = engine.g_inferer(engine._latents(engine, n), g_net)
        d_net.requires_grad_(True)
        engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        s_real = engine.d_inferer(reals, d_net)
        s_fake = engine.d_inferer(fakes, d_net)
        d_loss = loss.critic(s_real, s_fake)
        total = d_loss
        gp = grad_norm = torch.zeros((), device=reals.device)
        if engine.gp_weight > 0:
            gp, grad_norm = gradient_penalty(lambda x: engine.d_inferer(x, d_net), reals, fakes)
            total = d_loss + engine.gp_weight * gp
        total.backward()
        engine.d_optimizer.step()
        engine.d_updates += 1
        g_loss = loss.generator(s_fake.detach())

        # generator update every n_critic-th iteration, critic frozen
        g_step = engine.state.iteration % engine.n_critic == 0
        if g_step:
            d_net.requires_grad_(False)
            engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            # the critic's own module: under DistributedDataParallel a wrapped critic would wait for
            # gradients of its frozen weights (docs/distributed.md)
            g_loss = loss.generator(
                engine.d_inferer(engine.g_inferer(engine._latents(engine, n), g_net), _unwrap(d_net))
            )
            g_loss.backward()
            engine.g_optimizer.step()
            d_net.requires_grad_(True)
            engine.g_updates += 1

        d_real, d_fake = float(s_real.detach().mean()), float(s_fake.detach().mean())
        out = {
            "loss": float(g_loss.detach()),
            GanKeys.GLOSS: float(g_loss.detach()),
            GanKeys.DLOSS: float(d_loss.detach()),
            "d_real": d_real,
            "d_fake": d_fake,
            "g_step": bool(g_step),
        }
        if loss.kind == "wasserstein":
            out["wasserstein"] = d_real - d_fake
        if engine.gp_weight > 0:
            out.update(gp=float(gp.detach()), grad_norm=float(grad_norm))
        return [out]


class GanLosses:
    """Per-epoch means of the trainer's scalar outputs into ``engine.state.metrics['train_<key>']``
    (MLflow's epoch log and ``GanQuality``'s curves read them); ``g_loss`` is averaged over the
    generator-update iterations only."""

    def __init__(self, keys: tuple[str, ...] = OUTPUT_KEYS) -> None:
        self.keys = tuple(keys)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _reset(self, _=None) -> None:
        self._sums, self._counts = {}, {}

    def _accumulate(self, engine: Engine) -> None:
        out = engine.state.output
        out = out[0] if isinstance(out, list) else out
        for k in self.keys:
            if k == "g_loss" and not out.get("g_step", True):
                continue
            if k in out:
                self._sums[k] = self._sums.get(k, 0.0) + float(out[k])
                self._counts[k] = self._counts.get(k, 0) + 1

    def _epoch(self, engine: Engine) -> None:
        for k, s in self._sums.items():
            engine.state.metrics[f"train_{k}"] = s / self._counts[k]
        engine.state.metrics["generator_updates"] = float(getattr(engine, "g_updates", 0))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "module", net)


class GanCheckpoint:
    """After every epoch write the generator's state_dict to ``path`` (what inference loads) and the
    critic's to ``critic_path``, atomically, with a JSON sidecar (epoch, updates, epoch metrics, ``info``).
    GANs have no validation loss to pick a best epoch by; the curves say which epoch to trust.

    With ``state_path``, also the full training state (``GanResume`` reads it) every
    ``state_interval`` epochs and when the run completes or is stopped (``StopAfter``)."""

    main_process_only = True  # writes files: under torchrun only rank 0 runs it (train.distributed.main_only)

    def __init__(
        self,
        generator: torch.nn.Module,
        critic: torch.nn.Module,
        path: str,
        critic_path: str | None = None,
        info: Mapping | None = None,
        state_path: str | None = None,
        state_interval: int = 1,
    ) -> None:
        self.generator, self.critic = generator, critic
        self.path = Path(path)
        self.critic_path = Path(critic_path) if critic_path else self.path.with_name("critic.pt")
        self.info = dict(info or {})
        self.state_path = Path(state_path) if state_path else None
        self.state_interval = max(1, int(state_interval))
        self._saved_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        if self.state_path is not None:
            engine.add_event_handler(Events.COMPLETED, self.save_state)

    def save_state(self, engine: Engine) -> None:
        """The whole training state, atomically (skipped when this epoch's state is already saved)."""
        if self.state_path is None or self._saved_epoch == engine.state.epoch:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "epoch_length": engine.state.epoch_length,
            "g_updates": getattr(engine, "g_updates", 0),
            "d_updates": getattr(engine, "d_updates", 0),
            "generator": _unwrap(self.generator).state_dict(),
            "critic": _unwrap(self.critic).state_dict(),
            "g_optimizer": engine.g_optimizer.state_dict(),
            "d_optimizer": engine.d_optimizer.state_dict(),
            "rng": _rng_state(),
        }
        atomic_torch_save(state, self.state_path)
        self._saved_epoch = engine.state.epoch

    def __call__(self, engine: Engine) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for net, path in ((self.generator, self.path), (self.critic, self.critic_path)):
            net = getattr(net, "module", net)
            atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
        meta = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "generator_updates": getattr(engine, "g_updates", None),
            "critic_updates": getattr(engine, "d_updates", None),
            "metrics": {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))},
            **self.info,
        }
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(meta, indent=2, default=str))
        if self.state_path is not None and engine.state.epoch % self.state_interval == 0:
            self.save_state(engine)


class GanResume:
    """At the start of a run, load the training state that ``GanCheckpoint(state_path=...)`` wrote (if
    the file exists and ``enabled``): both networks and optimisers, the update counters, the random
    generators, and the trainer's epoch and iteration, so Ignite continues with the next epoch up to
    ``max_epochs``; ``quality`` (a ``mriae.evaluate.gan_quality.GanQuality``) gets back its curves up to that
    epoch. The saved ``epoch_length`` must match the run's (otherwise "epoch N" would mean other
    updates): a mismatch is refused."""

    def __init__(self, path: str, enabled: bool = True, quality=None) -> None:
        self.path, self.enabled, self.quality = Path(path), bool(enabled), quality
        self.resumed_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not (self.enabled and self.path.is_file()):
            return
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state["epoch_length"] != engine.state.epoch_length:
            raise ValueError(
                f"{self.path}: saved with epoch_length {state['epoch_length']}, this run has "
                f"{engine.state.epoch_length}; resume with the same epoch_length (or delete the file)"
            )
        _unwrap(engine.g_network).load_state_dict(state["generator"])
        _unwrap(engine.d_network).load_state_dict(state["critic"])
        engine.g_optimizer.load_state_dict(state["g_optimizer"])
        engine.d_optimizer.load_state_dict(state["d_optimizer"])
        engine.g_updates, engine.d_updates = int(state["g_updates"]), int(state["d_updates"])
        engine.state.epoch, engine.state.iteration = int(state["epoch"]), int(state["iteration"])
        _set_rng_state(state["rng"])
        if self.quality is not None:
            self.quality.restore(engine.state.epoch)
        self.resumed_epoch = engine.state.epoch
        logger.info(
            "resumed from %s: epoch %d, %d generator updates", self.path, engine.state.epoch, engine.g_updates
        )


class StopAfter:
    """End the run at the first epoch end after ``seconds`` of wall-clock time (None: never), so a
    command with a time limit stops where ``GanCheckpoint`` saves a state ``GanResume`` continues from."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = None if seconds is None else float(seconds)
        self._start: float | None = None
        self.stopped_at: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, _=None) -> None:
        self._start = time.monotonic()

    def __call__(self, engine: Engine) -> None:
        if self.seconds is None or self._start is None:
            return
        from mriae.train.distributed import any_rank  # under torchrun every rank stops after the same epoch

        late = any_rank(time.monotonic() - self._start >= self.seconds)
        if late and engine.state.epoch < engine.state.max_epochs:
            self.stopped_at = engine.state.epoch
            logger.info(
                "time limit of %.0f s reached: stopping after epoch %d", self.seconds, engine.state.epoch
            )
            engine.terminate()
