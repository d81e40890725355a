"""Load a trained bundle's network and data outside ``monai.bundle run`` (for the visualisation,
sampling and interpolation commands), its train.json read by ``mriae.config.bundle_config``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mriae.config import bundle_config

__all__ = ["BundleHandle", "log_artifacts"]
logger = logging.getLogger("mriae.tools.bundle")


class BundleHandle:
    """A bundle's parsed train.json (``bundle_root`` set, MLflow off) with lazy network / datasets."""

    def __init__(self, bundle: str | Path, overrides: Mapping | None = None, ckpt: str | None = None) -> None:
        self.root = Path(bundle).resolve()
        self.parser = bundle_config(
            self.root, overrides={"bundle_root": str(self.root), "use_mlflow": False, **dict(overrides or {})}
        )
        self.name = self.parser.get("bundle_name", self.root.name)
        self.ckpt = Path(ckpt) if ckpt else self.root / "models" / "model.pt"
        self._net = None

    def network(self, device: str = "cpu") -> torch.nn.Module:
        """The bundle's ``network_def`` with the trained weights (warns and stays untrained without them)."""
        if self._net is None:
            from mriae.networks.checkpoint import load_weights

            net = self.parser.get_parsed_content("network_def", instantiate=True)
            if self.ckpt.is_file():
                load_weights(net, self.ckpt)
            else:
                logger.warning("%s: no checkpoint, using an untrained network", self.ckpt)
            self._net = net.to(device).eval()
        return self._net

    def dataset(self, partition: str = "test"):
        """The bundle's dataset (validate#dataset's definition) for ``partition``."""
        key = "train#dataset" if partition == "training" else "validate#dataset"
        if partition != "training":
            self.parser[f"{key}#partition"] = partition
            if self.parser.get(f"{key}#max_slices_per_subject", "missing") != "missing":
                self.parser[f"{key}#max_slices_per_subject"] = None
        return self.parser.get_parsed_content(key, instantiate=True)

    def item(self, partition: str, index: int, subject: str | None = None) -> dict:
        """Item ``index`` of the partition, or (with ``subject``) that subject's slice number ``index``."""
        ds = self.dataset(partition)
        if subject is None:
            if not 0 <= index < len(ds):
                raise IndexError(f"index {index} outside the {partition} partition (0..{len(ds) - 1})")
            return ds[index]
        for i in range(len(ds)):
            it = ds[i]
            if it["subject"] == subject and int(it["slice"]) == index:
                return it
        raise IndexError(f"subject {subject} has no slice {index} in the {partition} partition")


def log_artifacts(
    paths: Sequence[Path], experiment: str, run_name: str, params: Mapping, tracking_uri: str | None = None
) -> str | None:
    """Log files to a new MLflow run, say so, and return its id (None without MLflow)."""
    try:
        import mlflow
    except ImportError:
        return None
    from mriae.train.tracking import default_tracking_uri, flatten

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(flatten(params))
        for p in paths:
            mlflow.log_artifact(str(p))
    print(f"logged to MLflow run {run.info.run_id}")
    return run.info.run_id
