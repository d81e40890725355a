#!/usr/bin/env python3
"""Write ``bundles/<name>/configs/multi_gpu_train.json`` for every trainable bundle from its train.json.

    python scripts/make_multi_gpu_configs.py            # (re)write them
    python scripts/make_multi_gpu_configs.py --check    # exit 1 if one is missing or out of date

The file follows the MONAI Model Zoo's ``multi_gpu_train.json``: ``device`` from ``LOCAL_RANK``,
the network(s) in ``DistributedDataParallel``, each rank its share of the training data, the
writers on rank 0 only, ``initialize`` joining the process group first and ``finalize`` leaving it
(docs/distributed.md). It is generated because ``initialize`` and ``imports`` are lists that a
merged config replaces whole: they repeat train.json's items.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "multi_gpu_train.json"
MAIN = "mriae.train.distributed.is_main()"


def _wrap(expr: str) -> str:
    if not (isinstance(expr, str) and expr.startswith("$")):
        raise ValueError(f"expected a '$' expression for a network, got {expr!r}")
    return f"$mriae.train.distributed.wrap({expr[1:]})"


def _initialize(items: list[str]) -> list[str]:
    out = ["$mriae.train.distributed.init_process_group()"]
    for it in items:
        if it.startswith("$mriae.train.resume.archive_previous(") or (it.startswith("$@train#resume.attach(")):
            it = f"{it} if {MAIN} else None"  # rank 0 moves old files and writes the resume state
        out.append(it)
    out.append("$mriae.train.distributed.PerRankSeed(@seed).attach(@train#trainer)")
    return out


def multi_gpu_config(train: dict) -> dict:
    imports = list(train.get("imports", []))
    if "$import mriae.train.distributed" not in imports:
        imports.append("$import mriae.train.distributed")
    cfg: dict = {
        "imports": imports,
        "device": "$mriae.train.distributed.device()",
    }
    gan = "generator" in train and "discriminator" in train
    for key in ("generator", "discriminator") if gan else ("network",):
        cfg[key] = _wrap(train[key])
    for opt, net, inner in (("optimizer", "network", "network_def"), ("g_optimizer", "generator", "network_def"),
                            ("d_optimizer", "discriminator", "discriminator_def")):  # fmt: skip
        params = train.get(opt, {}).get("params") if isinstance(train.get(opt), dict) else None
        if isinstance(params, str) and f"@{net}." in params and f"@{net}.parameters()" not in params:
            # a method of the network itself (cae_3d's param_groups): the module the wrapper holds
            # (the same parameters; batch norm's conversion keeps them too)
            cfg[f"{opt}#params"] = params.replace(f"@{net}.", f"@{inner}.")
    loader = train["train"]["dataloader"]
    if loader["_target_"] == "mriae.data.slices.DeviceBatchLoader":
        cfg["train#dataloader#_target_"] = "mriae.train.distributed.ShardedDeviceBatchLoader"
    elif loader["_target_"] == "DataLoader":
        cfg["train#dataloader#shuffle"] = False
        cfg["train#dataloader#sampler"] = {
            "_target_": "torch.utils.data.DistributedSampler",
            "dataset": "@train#dataset",
            "shuffle": bool(loader.get("shuffle", True)),
            "seed": "@seed",
            "drop_last": True,
        }
    else:
        raise ValueError(f"unknown training loader {loader['_target_']}")
    if train.get("use_mlflow") is True:  # an MLflow handler is not even built on the other ranks
        cfg["use_mlflow"] = f"${MAIN}"
    cfg["train#trainer#train_handlers"] = "$mriae.train.distributed.main_only(@train#handlers)"
    if "validate" in train and "handlers" in train["validate"]:
        cfg["validate#evaluator#val_handlers"] = "$mriae.train.distributed.main_only(@validate#handlers)"
    if isinstance(train.get("hyperparameters"), dict):
        cfg["hyperparameters#world_size"] = "$mriae.train.distributed.world_size()"
        cfg["hyperparameters#global_batch_size"] = "$@batch_size * mriae.train.distributed.world_size()"
    cfg["initialize"] = _initialize(list(train.get("initialize", [])))
    cfg["finalize"] = ["$mriae.train.distributed.destroy_process_group()"]
    return cfg


def trainable_bundles() -> list[Path]:
    return sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/train.json"))


def render(bundle: Path) -> str:
    train = json.loads((bundle / "configs" / "train.json").read_text())
    return json.dumps(multi_gpu_config(train), indent=4) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that every file is up to date")
    a = ap.parse_args(argv)
    stale = []
    for b in trainable_bundles():
        path, text = b / "configs" / NAME, render(b)
        if a.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
            print(path.relative_to(REPO))
    for p in stale:
        print(f"error: {p.relative_to(REPO)}: missing or out of date (run python scripts/make_multi_gpu_configs.py)",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
