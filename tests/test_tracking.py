"""MLflow tracking against a REAL `mlflow server` on localhost, and MONAI's `--tracking mlflow`."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO, artifact_names, run_bundle

pytestmark = pytest.mark.slow


def _bundle_copy(tmp_path):
    root = tmp_path / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    return root


def _train(root, prepared, uri, *extra):
    return run_bundle("training", "--config_file", str(root / "configs" / "train.json"), "--bundle_root", str(root),
                      "--dataset_dir", str(prepared.parent), "--tracking_uri", uri, "--train#trainer#max_epochs", "2",
                      "--max_slices_per_subject", "4", "--batch_size", "8", *extra)


def test_training_logs_to_a_real_mlflow_server(mlflow_server, small_prepared, tmp_path):
    from mlflow.tracking import MlflowClient

    root = _bundle_copy(tmp_path)
    _train(root, small_prepared, mlflow_server)
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("res_unet").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("res_unet-train-")
    assert run.data.params["optimizer"] == "torch.optim.Adam" and run.data.params["learning_rate"] == "0.001"
    assert run.data.params["context"] == "2" and run.data.params["plan.inference_grid"] == "native"
    assert len(client.get_metric_history(run.info.run_id, "val_corrupted_psnr")) == 2
    assert {"model.pt", "curves.png", "train.json", "metadata.json"} <= artifact_names(client, run.info.run_id)
    assert any((tmp_path / "art").rglob("model.pt"))  # stored by the server, not next to the client


def test_monai_tracking_flag_joins_the_same_run(small_prepared, tmp_path):
    from mlflow.tracking import MlflowClient

    root = _bundle_copy(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    _train(root, small_prepared, uri, "--tracking", "mlflow")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("res_unet").experiment_id])
    assert len(runs) == 1  # MONAI's handlers write into our run instead of opening a second one
    arts = artifact_names(client, runs[0].info.run_id)
    assert any(a.startswith("config_") and a.endswith(".json") for a in arts)  # MONAI's executed-config record
    assert "model.pt" in arts
