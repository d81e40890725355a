"""The bundle's files: metadata verifies offline, the network's in/out shapes verify, the inference
config builds the same network as training, and the Model Zoo ids users override exist."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

BUNDLE = REPO / "bundles" / "res_unet"


def _monai(*args):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_verify_metadata_and_net_in_out():
    res = _monai("verify_metadata", "--meta_file", str(BUNDLE / "configs/metadata.json"),
                 "--filepath", str(REPO / "bundles/meta_schema.json"))
    assert res.returncode == 0 and "metadata is verified with no error" in res.stdout + res.stderr
    res = _monai("verify_net_in_out", "network_def", "--meta_file", str(BUNDLE / "configs/metadata.json"),
                 "--config_file", str(BUNDLE / "configs/inference.json"))
    assert res.returncode == 0 and "data shape of network is verified with no error" in res.stdout + res.stderr


def test_metadata_refuses_a_broken_network_data_format(tmp_path):
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    res = _monai("verify_metadata", "--meta_file", str(tmp_path / "metadata.json"), "--filepath", str(REPO / "bundles/meta_schema.json"))
    # refused for the missing field, by name (not for any other reason, such as a missing schema)
    assert res.returncode != 0 and "'num_channels' is a required property" in res.stdout + res.stderr


def test_inference_network_equals_training_network_and_standard_ids():
    from monai.bundle import ConfigParser

    train = ConfigParser.load_config_file(BUNDLE / "configs/train.json")
    infer = ConfigParser.load_config_file(BUNDLE / "configs/inference.json")
    assert train["network_def"] == infer["network_def"]
    assert infer["img_size"] == train["img_size"]
    p = ConfigParser(train)
    for key in ("train#trainer#max_epochs", "train#dataset", "train#dataloader", "train#handlers", "validate#evaluator",
                "validate#dataset", "validate#handlers", "network_def", "optimizer", "loss_name", "dataset_dir", "tracking_uri"):
        assert p.get(key) is not None, key
    assert p.get("train#trainer#max_epochs") == 100 and p.get("batch_size") == 32  # the full S4 recipe by default


@pytest.mark.parametrize("loss", ["mse", "dssim"])
def test_loss_is_one_override(loss):
    import torch
    from monai.bundle import ConfigParser

    p = ConfigParser(ConfigParser.load_config_file(BUNDLE / "configs/train.json"))
    p["loss_name"] = loss
    fn = p.get_parsed_content("loss", instantiate=True)
    x = torch.rand(2, 1, 32, 32)
    assert float(fn(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(fn(x, 1 - x)) > 0
    assert p.get_parsed_content("early_stop_min_delta") == (2e-7 if loss == "mse" else 5e-5)


def _expression_modules(node) -> set[str]:
    """The ``mriae`` modules that the ``$`` expressions of a config name (``_target_`` strings are
    located by MONAI itself and need no import)."""
    import re

    found = set()
    if isinstance(node, dict):
        for v in node.values():
            found |= _expression_modules(v)
    elif isinstance(node, list):
        for v in node:
            found |= _expression_modules(v)
    elif isinstance(node, str) and node.startswith("$") and not node.startswith("$import"):
        for ref in re.findall(r"(?<![\w.])mriae(?:\.\w+)+", node):
            parts = ref.split(".")
            for n in range(len(parts), 1, -1):  # the longest prefix that is a module
                name = ".".join(parts[:n])
                if _is_module_path(name):
                    found.add(name)
                    break
    return found


def _is_module_path(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO)) for p in REPO.glob("bundles/*/configs/*.json")))
def test_every_module_an_expression_names_is_imported(config):
    """A config's ``$`` expressions run with the modules its ``imports`` (or, for a file merged over
    train.json, train.json's ``imports``) import: none relies on another module having imported it."""
    path = REPO / config
    cfg = json.loads(path.read_text())
    imports = set(cfg.get("imports", []))
    train = path.parent / "train.json"
    if "imports" not in cfg and path.name not in ("train.json", "inference.json", "metadata.json") and train.is_file():
        imports = set(json.loads(train.read_text()).get("imports", []))
    missing = sorted(m for m in _expression_modules(cfg) if f"$import {m}" not in imports)
    assert missing == [], f"{config}: expressions name modules that are not imported: {missing}"
