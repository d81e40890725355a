"""Bundle releases through the MLflow Model Registry, against a REAL `mlflow server` on localhost."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile

import pytest
from conftest import free_port, mlflow_server_at

from mriae.errors import InputError, MissingFileError
from mriae.share.registry import fetch, publish

TRAINING_RUN = "res_unet-train-20261202-075621-8ba1"
PLAN = {"plan.spacing": "[1.0, 1.0, 1.0]", "plan.axcodes": "RAS", "data.fingerprint": "3f9a0c21"}
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server_at(tmp_path_factory.mktemp("registry")) as url:
        yield url


def _client(url):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundle_zip(folder, version="0.2.0", seed=0, name="res_unet"):
    """A small real release zip: ``res_unet/`` with metadata, weights and a README."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"model-{version}-{seed}.pt"
    g = torch.Generator().manual_seed(seed)
    torch.save({"conv.weight": torch.randn(4, 1, 3, 3, generator=g), "conv.bias": torch.zeros(4)}, weights)
    meta = {"name": name, "version": version, "description": "test denoiser",
            "changelog": {version: f"release {version}", "0.1.0": "first"}}
    path = folder / f"{name}_{version}.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/configs/metadata.json", json.dumps(meta))
        z.write(weights, f"{name}/models/model.pt")
        z.writestr(f"{name}/docs/README.md", f"# {name} {version}\n")
    weights.unlink()
    return path


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def _released_files(run_id, client, path="release"):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _released_files(run_id, client, f.path) if f.is_dir else [f.path]
    return out


def test_publish_to_the_training_run_then_fetch_back(server, tmp_path):
    client = _client(server)
    exp = client.create_experiment("res_unet")
    train = client.create_run(exp, run_name=TRAINING_RUN)
    client.set_terminated(train.info.run_id, "FINISHED")
    z1 = _bundle_zip(tmp_path / "dist1")

    res = publish(z1, tracking_uri=server, model_name="denoiser", training_run=TRAINING_RUN,
                  metrics={"val_psnr": 38.41, "val_ssim": 0.97}, tags=PLAN, alias="production")
    assert res["model_name"] == "denoiser" and res["version"] == 1 and res["sha256"] == _sha(z1)
    assert res["run_id"] == train.info.run_id and res["training_run_found"] is True
    assert res["artifact_uri"].endswith("/res_unet_0.2.0.zip")
    assert [p.rsplit("/", 1)[-1] for p in _released_files(train.info.run_id, client)] == ["res_unet_0.2.0.zip"]

    mv = client.get_model_version("denoiser", "1")
    assert mv.run_id == train.info.run_id and mv.source.startswith(f"runs:/{train.info.run_id}/release/")
    assert mv.description == "release 0.2.0"
    assert mv.tags == {"bundle_name": "res_unet", "bundle_version": "0.2.0", "sha256": _sha(z1),
                       "file_name": "res_unet_0.2.0.zip", "training_run": TRAINING_RUN, "training_run_found": "true",
                       "val_psnr": "38.41", "val_ssim": "0.97", **PLAN}
    assert client.get_model_version_by_alias("denoiser", "production").version == "1"
    assert client.get_registered_model("denoiser").description == "test denoiser"

    again = publish(z1, tracking_uri=server, model_name="denoiser", training_run=TRAINING_RUN, tags=PLAN)
    assert again == res  # the same zip: the same version, nothing uploaded again
    assert len(client.search_model_versions("name = 'denoiser'")) == 1
    assert len(_released_files(train.info.run_id, client)) == 1

    z2 = _bundle_zip(tmp_path / "dist2", version="0.2.1", seed=1)
    res2 = publish(z2, tracking_uri=server, model_name="denoiser", training_run=TRAINING_RUN, tags=PLAN)
    assert res2["version"] == 2 and res2["sha256"] == _sha(z2) != _sha(z1)
    assert len(client.search_model_versions("name = 'denoiser'")) == 2

    out = tmp_path / "fetched"
    by_number = fetch("denoiser", 1, tracking_uri=server, out_dir=out / "n")
    by_alias = fetch("denoiser", alias="production", tracking_uri=server, out_dir=out / "a")
    by_alias_as_version = fetch("denoiser", "production", tracking_uri=server, out_dir=out / "av")
    latest = fetch("denoiser", "latest", tracking_uri=server, out_dir=out / "l")
    default = fetch("denoiser", tracking_uri=server, out_dir=out / "d")
    assert by_number.name == "res_unet_0.2.0.zip" and latest.name == "res_unet_0.2.1.zip"
    assert _sha(by_number) == _sha(by_alias) == _sha(by_alias_as_version) == _sha(z1)
    assert _sha(latest) == _sha(default) == _sha(z2)
    for d in ("n", "a", "av", "l", "d"):
        assert len(os.listdir(out / d)) == 1  # the zip only: no temporary folder left behind

    # the alias moves when a release is published again with it
    publish(z2, tracking_uri=server, model_name="denoiser", alias="production")
    assert _sha(fetch("denoiser", alias="production", tracking_uri=server, out_dir=out / "moved")) == _sha(z2)


def test_weights_trained_elsewhere_get_a_release_run(server, tmp_path, caplog):
    client = _client(server)
    z = _bundle_zip(tmp_path / "dist", version="0.3.0", seed=2)
    with caplog.at_level(logging.WARNING, logger="mriae.share.registry"):
        res = publish(z, tracking_uri=server, training_run="res_unet-train-20260101-000000-ffff")
    assert any("res_unet-train-20260101-000000-ffff" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    assert res["model_name"] == "res_unet" and res["version"] == 1 and res["training_run_found"] is False

    run = client.get_run(res["run_id"])
    assert run.info.run_name == "res_unet-release-0.3.0" and run.info.status == "FINISHED"
    assert run.data.tags["mriae.training_run"] == "res_unet-train-20260101-000000-ffff"
    assert run.data.tags["mriae.training_run_found"] == "false"
    assert client.get_experiment(run.info.experiment_id).name == "res_unet"
    assert [p.rsplit("/", 1)[-1] for p in _released_files(run.info.run_id, client)] == ["res_unet_0.3.0.zip"]
    mv = client.get_model_version("res_unet", "1")
    assert mv.tags["training_run_found"] == "false" and mv.tags["sha256"] == _sha(z)
    assert _sha(fetch("res_unet", 1, tracking_uri=server, out_dir=tmp_path / "got")) == _sha(z)


def test_fetch_refuses_unknown_names_and_a_tampered_zip(server, tmp_path):
    client = _client(server)
    with pytest.raises(InputError) as e:
        fetch("no_such_model", 1, tracking_uri=server, out_dir=tmp_path)
    assert "no_such_model" in _one_line(e)

    z = _bundle_zip(tmp_path / "dist", version="1.0.0", seed=3)
    publish(z, tracking_uri=server, model_name="tampered")
    with pytest.raises(InputError) as e:
        fetch("tampered", 9, tracking_uri=server, out_dir=tmp_path)
    assert "'9'" in _one_line(e)
    with pytest.raises(InputError) as e:
        fetch("tampered", alias="staging", tracking_uri=server, out_dir=tmp_path)
    assert "staging" in _one_line(e)

    client.set_model_version_tag("tampered", "1", "sha256", "0" * 64)
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        fetch("tampered", 1, tracking_uri=server, out_dir=out)
    assert "sha256" in _one_line(e)
    assert os.listdir(out) == []  # neither the zip nor the temporary folder


def test_bad_zips_are_refused_in_one_line(tmp_path):
    with pytest.raises(MissingFileError) as e:
        publish(tmp_path / "nope.zip", tracking_uri="http://127.0.0.1:1")
    assert "nope.zip" in _one_line(e)

    text = tmp_path / "text.zip"
    text.write_text("not a zip")
    with pytest.raises(InputError) as e:
        publish(text, tracking_uri="http://127.0.0.1:1")
    assert "not a zip file" in _one_line(e)

    loose = tmp_path / "loose.zip"
    with zipfile.ZipFile(loose, "w") as z:
        z.writestr("configs/metadata.json", "{}")
        z.writestr("models/model.pt", b"")
    with pytest.raises(InputError) as e:
        publish(loose, tracking_uri="http://127.0.0.1:1")
    assert "not a bundle zip" in _one_line(e)


def test_unreachable_server_is_one_line(tmp_path):
    z = _bundle_zip(tmp_path / "dist")
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    before = {k: os.environ.get(k) for k in HTTP_ENV}
    with pytest.raises(InputError) as e:
        publish(z, tracking_uri=url)
    assert url in _one_line(e) and "not reachable" in str(e.value)
    with pytest.raises(InputError) as e:
        fetch("res_unet", 1, tracking_uri=url, out_dir=tmp_path / "out")
    assert url in _one_line(e)
    assert {k: os.environ.get(k) for k in HTTP_ENV} == before  # the HTTP settings held only during the calls
    assert not (tmp_path / "out").exists()
