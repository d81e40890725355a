"""A real `mlflow server` that is down at the start, goes away mid-run, or outlives a killed training:
the training goes on and loses nothing, and no run is left RUNNING by a process that died."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp_path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "art")]  # fmt: skip
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)  # fmt: skip
        for _ in range(240):
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=1).status == 200:
                    return self
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited: " + self.proc.stderr.read()[-2000:])
        raise RuntimeError("mlflow server did not start in 120 s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its workers
            self.proc.wait(timeout=30)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture()
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


def _cmd(root, prepared, uri, epochs=2):
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
            str([str(root / "configs" / "train.json"), str(root / "configs" / "s4.json")]), "--bundle_root", str(root),
            "--dataset_dir", str(prepared.parent), "--tracking_uri", uri, "--train#trainer#max_epochs", str(epochs),
            "--max_slices_per_subject", "6", "--batch_size", "4"]  # fmt: skip


def _bundle(tmp_path):
    root = tmp_path / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    return root


def _runs(server):
    c = server.client()
    exp = c.get_experiment_by_name("res_unet")
    return [] if exp is None else c.search_runs([exp.experiment_id])


def _finished_training(root, epochs):
    hist = json.loads((root / "outputs" / "training" / "history.json").read_text())
    return (root / "models" / "model.pt").is_file() and len(hist["train_loss"]) == epochs


def test_server_down_at_the_start(small_prepared, tmp_path):
    root = _bundle(tmp_path)
    res = subprocess.run(_cmd(root, small_prepared, f"http://127.0.0.1:{_free_port()}"), capture_output=True,
                         text=True, env=ENV, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert _finished_training(root, 2)
    assert (res.stdout + res.stderr).count("MLflow tracking stopped") == 1  # warned once


def test_server_gone_mid_run_then_training_goes_on(small_prepared, tmp_path, server):
    server.start()
    root = _bundle(tmp_path)
    proc = subprocess.Popen(_cmd(root, small_prepared, server.url, epochs=6), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # until the first epoch's metrics reached the server
        runs = _runs(server)
        if runs and server.client().get_metric_history(runs[0].info.run_id, "val_loss"):
            break
        time.sleep(1)
    server.stop()
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert _finished_training(root, 6) and out.count("MLflow tracking stopped") == 1


def test_a_killed_training_leaves_no_run_running(small_prepared, tmp_path, server):
    server.start()
    root = _bundle(tmp_path)
    for sig, expected in ((signal.SIGTERM, "KILLED"), (signal.SIGKILL, None)):
        proc = subprocess.Popen(_cmd(root, small_prepared, server.url, epochs=50), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ENV)  # fmt: skip
        deadline = time.time() + 600
        while time.time() < deadline and not [r for r in _runs(server) if r.info.status == "RUNNING"]:
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(sig)
        proc.wait(timeout=300)
        if expected:  # SIGTERM: the handler ends its own run
            assert sorted(r.info.status for r in _runs(server)) == [expected]
    assert sorted(r.info.status for r in _runs(server)) == ["KILLED", "RUNNING"]  # SIGKILL: nobody could say so
    res = subprocess.run(_cmd(root, small_prepared, server.url, epochs=1), capture_output=True, text=True, env=ENV,
                         timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(r.info.status for r in _runs(server)) == ["FINISHED", "KILLED", "KILLED"]
