"""The Bayesian sweep (mriae.tools.sweep): space file, pruning, SQLite resume, MLflow child runs, and a best
trial written as an override file that `monai.bundle` merges after train.json."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
from conftest import REPO


def test_space_file_maps_names_to_config_ids_and_skips_optional_ones(tmp_path):
    from mriae.tools.sweep import load_space, suggest

    train = json.loads((REPO / "bundles/conv_ae/configs/train.json").read_text())
    space = load_space(REPO / "configs/sweep_space.json", train)
    assert set(space) == {"learning_rate", "epochs", "batch_size"}  # conv_ae has no latent_size
    assert space["learning_rate"]["choices"] == [1e-3, 5e-4, 1e-4]
    ae = load_space(REPO / "configs/sweep_space.json", json.loads((REPO / "bundles/ae_2d/configs/train.json").read_text()))
    assert ae["latent_size"]["choices"] == [512, 1024, 2048]
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    over = suggest(study.ask(), {**ae, "beta": {"key": "beta", "low": 0.1, "high": 4.0, "log": True}})
    assert set(over) == {"learning_rate", "max_epochs", "batch_size", "latent_size", "beta"}
    assert over["max_epochs"] in (10, 20, 40) and 0.1 <= over["beta"] <= 4.0
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": {"choices": [1]}}')
    with pytest.raises(ValueError, match="needs 'key'"):
        load_space(bad)


@pytest.mark.slow
def test_three_trial_sweep_prunes_resumes_and_writes_best_overrides(small_prepared, tmp_path):
    from mlflow.tracking import MlflowClient
    from monai.bundle import ConfigParser

    from mriae.tools.sweep import run_sweep

    root = tmp_path / "cae_2d"
    shutil.copytree(REPO / "bundles/cae_2d", root, ignore=shutil.ignore_patterns("models", "eval", "outputs", "sweep"))
    space = tmp_path / "space.json"  # a tiny space; one learning rate far too small to learn in 3 epochs
    space.write_text(json.dumps({"learning_rate": {"key": "learning_rate", "choices": [1e-3, 1e-9]},
                                 "latent_size": {"key": "latent_size", "choices": [16, 32], "optional": True}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fixed = {"dataset_dir": str(small_prepared.parent), "max_slices_per_subject": 6, "batch_size": 8, "max_epochs": 3}
    kw = dict(out_dir=tmp_path / "sweep", space=space, overrides=fixed, n_startup_trials=1, n_warmup_steps=0,
              tracking_uri=uri, seed=1, enqueue=[{"learning_rate": 1e-3, "latent_size": 32},
                                                 {"learning_rate": 1e-9, "latent_size": 32}])
    res = run_sweep(root, 3, **kw)
    trials = res["study"].trials
    assert len(trials) == 3 and (tmp_path / "sweep/study.db").is_file()
    states = [t.state for t in trials]
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    for t in trials:
        hist = t.user_attrs["history"]
        assert len(hist) == (3 if t.state == optuna.trial.TrialState.COMPLETE else len(hist)) and len(hist) >= 1
        if t.state == optuna.trial.TrialState.PRUNED:  # stopped early, after a validation worse than the median
            assert len(hist) < 3
    good = [t for t in trials if t.params["learning_rate"] == 1e-3 and t.state == optuna.trial.TrialState.COMPLETE]
    assert good and res["best"]["overrides"]["learning_rate"] == 1e-3
    # trial 1 (enqueued, lr 1e-9) validates worse than the median after epoch 1: pruned there
    assert trials[1].params["learning_rate"] == 1e-9 and states[1] == optuna.trial.TrialState.PRUNED
    assert len(trials[1].user_attrs["history"]) == 1
    # the best trial as an override file monai.bundle merges after train.json
    best = json.loads((tmp_path / "sweep/best_overrides.json").read_text())
    assert set(best) == {"learning_rate", "latent_size"}
    merged = ConfigParser.load_config_files([str(root / "configs/train.json"), str(tmp_path / "sweep/best_overrides.json")])
    assert merged["learning_rate"] == best["learning_rate"] and merged["latent_size"] == best["latent_size"]
    # MLflow: one parent run, each trial a child run with its per-epoch validation loss
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cae_2d").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for r in children:
        n = int(r.info.run_name.split("-")[1])
        assert len(client.get_metric_history(r.info.run_id, "val_loss")) == len(trials[n].user_attrs["history"])
        assert r.data.tags["optuna_state"] == trials[n].state.name
    # resume: the same command with a larger budget continues the same study in the same parent run
    res2 = run_sweep(root, 4, **kw)
    assert len(res2["study"].trials) == 4 and [t.number for t in res2["study"].trials] == [0, 1, 2, 3]
    runs = client.search_runs([client.get_experiment_by_name("cae_2d").experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 4
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
