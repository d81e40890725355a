"""Crash-safe training: resume after a kill, and never lose an earlier model.

``ResumeCheckpoint`` saves, at the end of every epoch (after validation), everything a training needs to
go on exactly where it was: the trainer's epoch and iteration, the network, the optimiser, the LR
scheduler, the early-stopping counter, the best checkpoint's best value, the history, the data
loader's generators and the global random states. It is Ignite's ``Checkpoint`` with a ``DiskSaver``
(atomic: a temporary file, then a rename; one file kept), so a process killed at any moment leaves
the last complete checkpoint. ``--resume True`` loads it before ``trainer.run()`` and Ignite goes on
from that epoch (``Engine.load_state_dict``); the MLflow run of the killed training is continued
under its own name (``run_name``). A training that ends normally removes its resume checkpoint.

A new training (not resuming) first moves the previous training's model, side file, history and
curves into ``models/archive/<time>/`` (``archive_previous``), so a short smoke run never silently
replaces a trained model, and a killed run never leaves another run's history beside its model.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from mriae.files import atomic_write_text
__all__ = ["ResumeCheckpoint", "RandomState", "run_name", "archive_previous", "kill_and_resume", "RESUME_DIR"]
logger = logging.getLogger("mriae.train.resume")
RESUME_DIR = "resume"


class RandomState:
    """Python's, NumPy's and torch's (CPU and CUDA) global random states, as a state dict of tensors and
    plain numbers (loadable with ``torch.load(weights_only=True)``)."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
        n = state["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class _EarlyStopState:
    """The state of MONAI's ``EarlyStopHandler`` (Ignite's ``EarlyStopping`` inside it)."""

    def __init__(self, handler) -> None:
        self.handler = handler

    def state_dict(self) -> dict:
        inner = getattr(self.handler, "_handler", None)
        if inner is None:
            return {}
        return {"counter": int(inner.counter), "best_score": inner.best_score}

    def load_state_dict(self, state: Mapping) -> None:
        inner = getattr(self.handler, "_handler", None)
        if inner is not None and state:
            inner.counter, inner.best_score = int(state["counter"]), state["best_score"]


class ResumeCheckpoint:
    """Save the training's whole state every ``every`` epochs into ``<directory>/resume``; with
    ``resume``, ``load()`` (called before ``trainer.run()``, in the bundle's ``initialize``) restores
    the last one. ``objects`` maps names to things with ``state_dict``/``load_state_dict``; MONAI's
    ``EarlyStopHandler`` is wrapped automatically."""

    def __init__(
        self,
        directory: str,
        objects: Mapping[str, object],
        resume: bool = False,
        every: int = 1,
        run_name: str | None = None,
    ) -> None:
        from ignite.handlers import Checkpoint, DiskSaver
        from monai.handlers import EarlyStopHandler

        self.dir = Path(directory) / RESUME_DIR
        self.resume, self.every, self.run_name = bool(resume), int(every), run_name
        self.objects = {
            k: (_EarlyStopState(v) if isinstance(v, EarlyStopHandler) else v)
            for k, v in objects.items()
            if v is not None
        }
        self.objects.setdefault("random", RandomState())
        self._saver = DiskSaver(str(self.dir), create_dir=True, require_empty=False, atomic=True)
        self._checkpoint = Checkpoint(self.objects, self._saver, filename_prefix="resume", n_saved=1)
        self.loaded_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self._save)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def latest(self) -> Path | None:
        files = sorted(self.dir.glob("resume_*.pt"), key=lambda p: p.stat().st_mtime)
        return files[-1] if files else None

    def load(self) -> int | None:
        """Restore the last checkpoint when resuming; returns its epoch (None: starting afresh)."""
        if not self.resume:
            return None
        path = self.latest()
        if path is None:
            logger.info("resume: no checkpoint in %s, starting afresh", self.dir)
            return None
        from ignite.handlers import Checkpoint

        state = torch.load(path, map_location="cpu", weights_only=True)
        Checkpoint.load_objects(self.objects, state)
        trainer = self.objects.get("trainer")
        self.loaded_epoch = int(trainer.state.epoch) if trainer is not None else None
        logger.info("resume: restored %s (epoch %s)", path.name, self.loaded_epoch)
        return self.loaded_epoch

    def _save(self, engine: Engine) -> None:
        self._checkpoint(engine)
        meta = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "run_name": self.run_name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(self.dir / "resume.json", json.dumps(meta))

    def _finish(self, engine: Engine) -> None:
        if getattr(engine.state, "time_limit_reached", False):
            return  # stopped by --time_limit: kept, so that --resume True continues it
        shutil.rmtree(self.dir, ignore_errors=True)  # done: nothing to resume


def run_name(ckpt_dir: str, new_name: str, resume: bool = False) -> str:
    """The MLflow run name: when resuming a killed training, that training's own name (so its
    MLflow run goes on), else ``new_name``."""
    meta = Path(ckpt_dir) / RESUME_DIR / "resume.json"
    if resume and meta.is_file():
        try:
            name = json.loads(meta.read_text()).get("run_name")
        except ValueError:
            name = None
        if name:
            return str(name)
    return new_name


def archive_previous(ckpt_path: str, output_dir: str, resume: bool = False) -> Path | None:
    """Before a new training (not a resume), move the previous training's ``model.pt`` / ``model.json``
    and its ``history.json`` / ``curves.png`` into ``<models>/archive/<time>/``; returns that folder."""
    if resume and (Path(ckpt_path).parent / RESUME_DIR).is_dir():
        return None
    ckpt = Path(ckpt_path)
    found = [p for p in (ckpt, ckpt.with_suffix(".json")) if p.is_file()]
    found += [p for p in (Path(output_dir) / "history.json", Path(output_dir) / "curves.png") if p.is_file()]
    stale = ckpt.parent / RESUME_DIR
    if not found and not stale.is_dir():
        return None
    dest = (
        ckpt.parent
        / "archive"
        / time.strftime(
            "%Y%m%d-%H%M%S", time.localtime(max((p.stat().st_mtime for p in found), default=time.time()))
        )
    )
    while dest.exists():
        dest = dest.with_name(dest.name + "-1")
    dest.mkdir(parents=True)
    for p in found:
        shutil.move(str(p), dest / p.name)
    if stale.is_dir():  # a killed training that is not being resumed
        shutil.move(str(stale), dest / RESUME_DIR)
    logger.warning("kept the previous training's files in %s", dest)
    print(f"[mriae] the previous model and history are kept in {dest}", flush=True)
    return dest


def kill_and_resume(
    cmd: list[str],
    resume_dir: str | Path,
    kills: int,
    seed: int = 0,
    max_delay: float = 4.0,
    timeout: float = 900.0,
    env: Mapping | None = None,
) -> int:
    """Soak: start the training ``cmd`` (which must carry ``--resume True``), SIGKILL it at a random
    moment (0 to ``max_delay`` s) once it has written its first resume checkpoint in ``resume_dir``,
    start it again, ``kills`` times, then let it finish. Returns the number of kills that hit a
    running process; raises ``RuntimeError`` if the final run fails or a run takes over ``timeout``."""
    import signal
    import subprocess

    rng, done = random.Random(seed), 0
    marker = Path(resume_dir) / "resume.json"
    for attempt in range(kills + 1):
        proc = subprocess.Popen(cmd, env=None if env is None else dict(env),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if attempt < kills:
            deadline = time.time() + timeout
            while not marker.is_file() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(rng.uniform(0.0, max_delay))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                done += 1
                continue
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:6])}...: exited {proc.returncode} before it was killed")
            break  # it finished before the kill: nothing left to resume
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"the resumed training ran over {timeout:.0f} s") from None
        if rc != 0:
            raise RuntimeError(f"the resumed training exited {rc}")
    return done
