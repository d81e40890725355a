"""Crash-resume: a training killed with SIGKILL at random moments and resumed with ``--resume True``
ends where an uninterrupted one ends; a new training keeps the previous model; MLflow survives a
server that goes away."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

EPOCHS = 4


def _bundle(tmp: Path) -> Path:
    root = tmp / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    return root


def _train_cmd(root: Path, dataset: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    files = str([str(root / "configs" / "train.json"), str(root / "configs" / "s4.json")])
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files, "--bundle_root", str(root),
            "--dataset_dir", str(dataset), "--use_mlflow", "False", "--train#trainer#max_epochs", str(epochs),
            "--max_slices_per_subject", "6", "--batch_size", "4", *extra]  # fmt: skip


ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _weights(root: Path) -> dict:
    return torch.load(root / "models" / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(small_prepared, tmp_path_factory):
    root = _bundle(tmp_path_factory.mktemp("plain"))
    subprocess.run(_train_cmd(root, small_prepared.parent), check=True, capture_output=True, env=ENV, timeout=900)
    return root


def test_killed_at_random_moments_and_resumed_it_ends_where_an_uninterrupted_run_ends(
    uninterrupted, small_prepared, tmp_path
):
    from mriae.train.resume import kill_and_resume

    root = _bundle(tmp_path)
    t_start = time.time()
    kills = kill_and_resume(_train_cmd(root, small_prepared.parent, "--resume", "True"),
                            root / "models" / "resume", kills=3, seed=7, env=ENV)  # fmt: skip
    assert kills >= 1 and time.time() - t_start < 900
    assert not (root / "models" / "resume").exists()  # finished: nothing left to resume
    a, b = _weights(uninterrupted), _weights(root)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    ha = json.loads((uninterrupted / "outputs" / "training" / "history.json").read_text())
    hb = json.loads((root / "outputs" / "training" / "history.json").read_text())
    assert len(hb["train_loss"]) == EPOCHS and len(hb["validation"]) == EPOCHS
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-4)
    side_a, side_b = (json.loads((r / "models" / "model.json").read_text()) for r in (uninterrupted, root))
    assert side_a["epoch"] == side_b["epoch"]


def test_a_new_training_keeps_the_previous_model(uninterrupted, small_prepared, tmp_path):
    root = tmp_path / "res_unet"
    shutil.copytree(uninterrupted, root)
    before = (root / "models" / "model.pt").read_bytes()
    res = subprocess.run(_train_cmd(root, small_prepared.parent, epochs=1),
                         capture_output=True, text=True, env=ENV, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    archived = list((root / "models" / "archive").glob("*/model.pt"))
    assert len(archived) == 1 and archived[0].read_bytes() == before  # the trained model is kept
    assert (archived[0].parent / "history.json").is_file() and (archived[0].parent / "model.json").is_file()
    hist = json.loads((root / "outputs" / "training" / "history.json").read_text())
    assert len(hist["train_loss"]) == 1  # the new run's own history beside its own model
    assert "kept in" in res.stdout
