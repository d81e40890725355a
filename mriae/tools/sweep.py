"""Bayesian hyperparameter search (Optuna TPE) for any bundle, S3's space by default.

    python scripts/sweep.py --bundle bundles/ae_2d --trials 20            # or python -m mriae.tools.sweep
    python -m monai.bundle run training \
        --config_file "['bundles/ae_2d/configs/train.json','bundles/ae_2d/sweep/best_overrides.json']"

- The space is a JSON file the user edits: ``<bundle>/configs/sweep_space.json`` if it exists, else
  the repository's ``configs/sweep_space.json`` (S3's: lr {1e-3, 5e-4, 1e-4}, epochs {10, 20, 40},
  batch {16, 32, 64}, latent {512, 1024, 2048}). Each entry names the config id it sets::

      {"learning_rate": {"key": "learning_rate", "choices": [0.001, 0.0005, 0.0001]},
       "latent_size": {"key": "latent_size", "choices": [512, 1024, 2048], "optional": true},
       "beta": {"key": "beta", "low": 0.1, "high": 4.0, "log": true}}

  ``choices`` is categorical, ``low`` / ``high`` (``log``, ``step``) a float or int range;
  ``optional`` entries are skipped for bundles whose train.json has no such id.
- Each trial runs the bundle's train.json in this process (its own checkpoint and outputs under
  ``<out>/trials/<n>``, the bundle's own MLflow logging off), reports the validation loss (clean
  MSE) after every epoch to Optuna, and stops early when ``MedianPruner`` says so.
- Each trial is an MLflow child run of one parent run per study (params, per-epoch ``val_loss`` and
  ``train_loss``, its state); without MLflow installed, or with ``--no-mlflow``, nothing is logged.
- The study lives in SQLite (``<out>/study.db``): run the same command again after a crash and it
  goes on until ``--trials`` trials have finished (complete or pruned); trials a crash left
  RUNNING are marked failed (heartbeat) and not counted.
- The best trial is written as ``<out>/best_overrides.json``: config ids -> values, a file that
  ``monai.bundle run`` merges after train.json.
- Several workers share one study: ``torchrun --nproc_per_node=N -m mriae.tools.sweep ...`` starts N
  processes, each runs one trial at a time on its own GPU (``CUDA_VISIBLE_DEVICES`` = its local
  rank) or CPU process; Optuna's storage hands every trial to one worker. Worker 0 enqueues, owns
  the parent MLflow run and writes the results once no trial is running (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna
from ignite.engine import Events

from mriae import repo_root
from mriae.config import bundle_files, parse_overrides
from mriae.errors import InputError, MissingFileError
from mriae.files import atomic_write_text

__all__ = ["load_space", "find_space", "suggest", "run_trial", "run_sweep", "main"]
logger = logging.getLogger("mriae.tools.sweep")


def find_space(bundle_root: str | Path, space: str | Path | None = None) -> Path:
    """The space file: ``space`` if given, else the bundle's, else the repository default."""
    for cand in (
        [Path(space)]
        if space
        else [
            Path(bundle_root) / "configs" / "sweep_space.json",
            repo_root() / "configs" / "sweep_space.json",
        ]
    ):
        if cand.is_file():
            return cand
    raise MissingFileError(
        f"{space or Path(bundle_root) / 'configs' / 'sweep_space.json'}: sweep space not found"
    )


def load_space(path: str | Path, config: Mapping | None = None) -> dict[str, dict]:
    """Read and check a space file; with ``config`` (the parsed train.json) drop optional entries
    whose config id the bundle lacks."""
    path = Path(path)
    try:
        space = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    out = {}
    for name, spec in space.items():
        if name.startswith("_"):
            continue  # comments
        if "key" not in spec or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise InputError(f"{path}: '{name}' needs 'key' and either 'choices' or 'low'/'high'")
        if config is not None and spec.get("optional") and not _has_id(config, spec["key"]):
            continue
        out[name] = dict(spec)
    if not out:
        raise InputError(f"{path}: empty search space")
    return out


def _has_id(config: Mapping, key: str) -> bool:
    node = config
    for part in key.replace("::", "#").split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def suggest(trial: optuna.Trial, space: Mapping[str, Mapping]) -> dict[str, object]:
    """Config overrides ``{config id: value}`` for one trial."""
    out = {}
    for name, spec in space.items():
        if "choices" in spec:
            v = trial.suggest_categorical(name, list(spec["choices"]))
        elif all(isinstance(spec[k], int) for k in ("low", "high")) and not isinstance(
            spec.get("step", 1), float
        ):
            v = trial.suggest_int(
                name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            v = trial.suggest_float(
                name, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False)
            )
        out[spec["key"]] = v
    return out


def run_trial(
    config_files: Sequence[str | Path],
    overrides: Mapping[str, object],
    report=None,
    metric: str = "val_loss",
) -> dict:
    """Train a bundle in this process with ``overrides``; ``report(epoch, metrics) -> bool`` is called
    after every validation and stops training when it returns True. Returns ``{"best", "history",
    "stopped"}`` (best = lowest ``metric``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser.update(dict(overrides))
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    history: list[dict] = []
    state = {"stopped": False}

    def _on_validation(engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        metrics["train_loss"] = float(trainer.state.metrics.get("train_loss", float("nan")))
        history.append(metrics)
        if report is not None and report(trainer.state.epoch, metrics):
            state["stopped"] = True
            trainer.terminate()

    evaluator.add_event_handler(Events.EPOCH_COMPLETED, _on_validation)
    trainer.run()
    vals = [h[metric] for h in history if metric in h]
    return {"best": min(vals) if vals else float("inf"), "history": history, "stopped": state["stopped"]}


class _Tracker:
    """MLflow parent run per study, one child run per trial (no-op without MLflow). Worker 0 starts
    (or continues) the parent run; the other workers wait for its id in the study and tag their
    trials' runs with it (``mlflow.parentRunId``, MLflow's nesting) without activating it."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str, study, worker: int = 0) -> None:
        self.mlflow, self.worker = None, int(worker)
        if not enabled:
            return
        try:
            import mlflow
        except ImportError:
            logger.warning("MLflow is not installed: the sweep is not tracked")
            return
        from mriae.train.tracking import default_tracking_uri

        mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
        mlflow.set_experiment(experiment)
        if self.worker:
            self.mlflow, self.parent_id = mlflow, _wait_for_study_attr(study, "mlflow_parent_run_id")
            return
        parent = study.user_attrs.get("mlflow_parent_run_id")
        run = (
            mlflow.start_run(run_id=parent)
            if parent
            else mlflow.start_run(run_name=f"{study.study_name}-sweep")
        )
        if not parent:
            study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        self.mlflow, self.parent, self.parent_id = mlflow, run, run.info.run_id

    def trial(self, number: int, params: Mapping):
        if self.mlflow is None:
            return None
        if self.worker:
            run = self.mlflow.start_run(run_name=f"trial-{number:03d}", tags={"mlflow.parentRunId": self.parent_id})
        else:
            run = self.mlflow.start_run(run_name=f"trial-{number:03d}", nested=True)
        self.mlflow.log_params({str(k): str(v) for k, v in params.items()})
        return run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: v for k, v in metrics.items() if v == v}, step=step)

    def end_trial(self, state: str, best: float | None) -> None:
        if self.mlflow is None:
            return
        self.mlflow.set_tag("optuna_state", state)
        if best is not None:
            self.mlflow.log_metric("best_val_loss", best)
        self.mlflow.end_run("FINISHED" if state != "FAIL" else "FAILED")

    def close(self, best: Mapping | None) -> None:
        if self.mlflow is None or self.worker:
            return
        if best:
            self.mlflow.set_tags(
                {f"best.{k}": str(v) for k, v in best["overrides"].items()}
            )  # tags: a resume may change them
            self.mlflow.set_tag("best.trial", str(best["number"]))
            self.mlflow.log_metric("best_val_loss", best["value"])
        self.mlflow.end_run()


def run_sweep(
    bundle_root: str | Path,
    n_trials: int = 20,
    out_dir: str | Path | None = None,
    space: str | Path | None = None,
    extra_config_files: Sequence[str | Path] = (),
    overrides: Mapping[str, object] | None = None,
    study_name: str | None = None,
    seed: int = 0,
    n_startup_trials: int = 5,
    n_warmup_steps: int = 2,
    use_mlflow: bool = True,
    tracking_uri: str | None = None,
    enqueue: Sequence[Mapping] = (),
    worker: int = 0,
    storage: str | None = None,
) -> dict:
    """Run (or resume) a study; writes ``best_overrides.json`` and ``trials.json`` into ``out_dir``.
    ``enqueue``: parameter sets (space names -> values) tried first, e.g. the bundle's defaults; only
    for a new study. ``worker``: this process's number among workers sharing the study (0 enqueues,
    owns the MLflow parent run and writes the results after the last running trial; the others only
    run trials, their sampler seeded ``seed + worker``). ``storage``: an Optuna storage URL (default
    SQLite in ``out_dir``; a database server for workers on several nodes)."""
    root = Path(bundle_root).resolve()
    from monai.bundle import ConfigParser

    files = bundle_files(root, *extra_config_files)
    cfg = ConfigParser.load_config_files(files)
    name = cfg.get("bundle_name", root.name)
    out = Path(out_dir or root / "sweep").resolve()
    out.mkdir(parents=True, exist_ok=True)
    space_file = find_space(root, space)
    spec = load_space(space_file, cfg)
    if worker:
        _workers_ready(out, wait=True)  # worker 0 has created the study and the MLflow database
    storage = optuna.storages.RDBStorage(
        storage or f"sqlite:///{out / 'study.db'}", heartbeat_interval=60, grace_period=120,
        engine_kwargs={"connect_args": {"timeout": 120}} if not storage else None,  # workers wait for the lock
    )
    study = optuna.create_study(
        study_name=study_name or f"{name}-sweep",
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=min(n_startup_trials, 10)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps),
    )
    if worker == 0:
        study.set_user_attr("space", spec)
        if not study.trials:
            for params in enqueue:
                study.enqueue_trial(dict(params))
    tracker = _Tracker(use_mlflow, tracking_uri, name, study, worker)
    if worker == 0:
        _workers_ready(out)
    base = {"bundle_root": str(root), "use_mlflow": False, **dict(overrides or {})}

    def objective(trial: optuna.Trial) -> float:
        if _over_budget(study, trial, n_trials):  # another worker started the last trial of the budget
            study.stop()
            raise _OverBudget(f"trial {trial.number}: {n_trials} trials already started")
        params = suggest(trial, spec)
        trial.set_user_attr("worker", worker)
        tdir = out / "trials" / f"{trial.number:03d}"
        run_over = {**base, **params, "ckpt_dir": str(tdir / "models"), "output_dir": str(tdir / "outputs")}
        tracker.trial(trial.number, params)

        def report(epoch: int, metrics: Mapping[str, float]) -> bool:
            tracker.log({"val_loss": metrics["val_loss"], "train_loss": metrics["train_loss"]}, epoch)
            trial.report(metrics["val_loss"], epoch)
            return trial.should_prune()

        try:
            res = run_trial(files, run_over, report)
        except Exception:
            tracker.end_trial("FAIL", None)
            raise
        trial.set_user_attr("history", [h["val_loss"] for h in res["history"]])
        if res["stopped"]:
            tracker.end_trial("PRUNED", res["best"])
            raise optuna.TrialPruned(f"pruned after {len(res['history'])} epochs")
        tracker.end_trial("COMPLETE", res["best"])
        return res["best"]

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = n_trials - len(study.get_trials(deepcopy=False, states=done))
    try:
        if remaining > 0:
            study.optimize(
                objective,
                n_trials=remaining,
                catch=(_OverBudget,),
                # running trials count: a worker does not start one that another worker's would complete
                callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=(*done, optuna.trial.TrialState.RUNNING))],
            )
    finally:
        if worker == 0:
            _wait_for_trials(study)  # the other workers' last trials
        best = _write_results(study, spec, out) if worker == 0 else None
        tracker.close(best)
    return {"study": study, "best": best, "out_dir": out, "space_file": space_file}


class _OverBudget(Exception):
    """A trial started after the budget was taken by other workers (recorded as failed, not run)."""


# ------------------------------------------------------------------ workers sharing one study
def _workers_ready(out_dir, wait: bool = False, timeout: float = 900.0) -> None:
    """Worker 0 marks ``out_dir/workers_ready`` with this launch's id (``TORCHELASTIC_RUN_ID``) once
    the study, its first trials and the MLflow parent run exist; with ``wait`` the other workers wait
    for that mark before they open the databases (two processes creating one SQLite schema collide)."""
    mark, run_id = Path(out_dir) / "workers_ready", os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if not wait:
        atomic_write_text(mark, run_id)
        return
    t0 = time.monotonic()
    while not (mark.is_file() and mark.read_text() == run_id):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{mark}: worker 0 did not set up the study in {timeout:.0f} s")
        time.sleep(0.5)


def _wait_for_study_attr(study, key: str, timeout: float = 900.0, poll: float = 0.5):
    """The study's user attribute ``key`` once another worker has set it (worker 0's MLflow parent run)."""
    t0 = time.monotonic()
    while True:
        value = study.user_attrs.get(key)  # read from the storage at every call
        if value is not None:
            return value
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"study {study.study_name}: worker 0 did not set {key!r} in {timeout:.0f} s")
        time.sleep(poll)


def _over_budget(study, trial, n_trials: int) -> bool:
    """True when ``n_trials`` trials numbered below ``trial`` are done, running or waiting: the budget
    is taken (trial numbers are handed out in order by the shared storage, so exactly the first
    ``n_trials`` trials that do not fail are run, whatever the number of workers)."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    before = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    return len(before) >= n_trials


def _wait_for_trials(study, poll: float = 1.0) -> None:
    """Return once no trial of the study is running (the other workers' last trials); trials of a
    killed worker are failed by Optuna's heartbeat after its grace period."""
    from optuna.trial import TrialState

    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.storages.fail_stale_trials(study)  # a no-op for a storage without heartbeats
        time.sleep(poll)


def _write_results(study, spec: Mapping, out: Path) -> dict | None:
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "val_loss_per_epoch": t.user_attrs.get("history"),
        }
        for t in study.trials
    ]
    atomic_write_text(out / "trials.json", json.dumps(rows, indent=2))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    bt = study.best_trial
    overrides = {spec[k]["key"]: v for k, v in bt.params.items() if k in spec}
    atomic_write_text(out / "best_overrides.json", json.dumps(overrides, indent=4) + "\n")
    return {"number": bt.number, "value": bt.value, "overrides": overrides}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mriae.tools.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/ae_2d")
    ap.add_argument("--trials", type=int, default=20, help="total trials (complete + pruned), across resumes")
    ap.add_argument(
        "--space",
        help="search space JSON (default: <bundle>/configs/sweep_space.json, else configs/sweep_space.json)",
    )
    ap.add_argument("--out", help="study folder (default <bundle>/sweep)")
    ap.add_argument("--config_file", action="append", default=[], help="extra config merged after train.json")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=JSON",
        help="fixed override for every trial, e.g. --set dataset_dir='\"data/ixi\"' --set max_slices_per_subject=8",
    )
    ap.add_argument("--study_name")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--startup_trials", type=int, default=5, help="MedianPruner: trials before pruning starts"
    )
    ap.add_argument(
        "--warmup_epochs", type=int, default=2, help="MedianPruner: epochs before a trial can be pruned"
    )
    ap.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="JSON",
        help="parameters to try first in a new study, e.g. '{\"learning_rate\": 0.0005}'",
    )
    ap.add_argument("--tracking_uri")
    ap.add_argument("--storage", help="Optuna storage URL shared by all workers (default: SQLite in --out)")
    ap.add_argument("--no-mlflow", action="store_true")
    a = ap.parse_args(argv)
    from mriae.train.distributed import sweep_worker

    worker = sweep_worker()  # under torchrun: this process's worker number, its GPU chosen
    fixed = parse_overrides(a.set, "--set")
    res = run_sweep(
        a.bundle,
        a.trials,
        a.out,
        a.space,
        a.config_file,
        fixed,
        a.study_name,
        a.seed,
        a.startup_trials,
        a.warmup_epochs,
        not a.no_mlflow,
        a.tracking_uri,
        [json.loads(e) for e in a.enqueue],
        worker,
        a.storage,
    )
    if worker:
        return 0  # worker 0 reports the study
    st = res["study"]
    counts = {s.name: len(st.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
    print(
        json.dumps(
            {
                "trials": {k: v for k, v in counts.items() if v},
                "best": res["best"],
                "best_overrides": str(res["out_dir"] / "best_overrides.json") if res["best"] else None,
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
