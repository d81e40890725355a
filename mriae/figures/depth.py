"""S1's training figures for volume autoencoders: reconstructions at several depths, every epoch.

``DepthFigures`` is an Ignite handler for the trainer. At the end of each epoch (every
``interval``) it reconstructs one fixed validation volume, writes ``recon_epoch_###.png`` (rows:
input, reconstruction; columns: ``n_depths`` evenly spaced slices along ``axis``) into
``output_dir``, and, when ``tracking_uri`` is set, logs it as an artifact (``depth_figures/``) of
the MLflow run named ``run_name`` that the bundle's ``MLFlowHandler`` opened. It finds that run by
name rather than holding the handler, so the bundle's ``use_mlflow`` switch turns it off too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["DepthFigures", "depth_figure"]
logger = logging.getLogger("mriae.figures.depth")


def depth_figure(
    volume: np.ndarray, recon: np.ndarray, path: str | Path, title: str = "", n_depths: int = 6, axis: int = 0
) -> Path:
    """Rows input / reconstruction, columns ``n_depths`` slices along ``axis`` of (D, H, W) arrays."""
    from mriae.figures.plots import plt, save_figure

    idx = np.linspace(0, volume.shape[axis] - 1, n_depths + 2).round().astype(int)[1:-1]
    fig, axes = plt.subplots(2, n_depths, figsize=(1.9 * n_depths, 4.0), squeeze=False)
    for c, k in enumerate(idx):
        for r, (arr, name) in enumerate(((volume, "input"), (recon, "recon"))):
            ax = axes[r, c]
            ax.imshow(np.take(arr, k, axis=axis), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name}, depth {k}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, Path(path))
    return Path(path)


class DepthFigures:
    """Per-epoch reconstruction figure of one volume at several depths (see module doc).

    Args:
        network: the network being trained.
        dataset: a dataset of volumes (items ``{"image": (1, D, H, W)}``); item ``index`` is shown.
        output_dir: where the PNGs go.
        n_depths / axis: how many slices along which axis of (D, H, W).
        tracking_uri / experiment_name / run_name: the MLflow run to log to (None: files only).
    """

    main_process_only = True  # writes files: under torchrun only rank 0 runs it (train.distributed.main_only)

    def __init__(
        self,
        network: torch.nn.Module,
        dataset,
        output_dir: str,
        index: int = 0,
        n_depths: int = 6,
        axis: int = 0,
        interval: int = 1,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
    ) -> None:
        self.network, self.dataset, self.output_dir = network, dataset, Path(output_dir)
        self.index, self.n_depths, self.axis, self.interval = index, n_depths, axis, interval
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        item = self.dataset[self.index]
        x = torch.as_tensor(item["image"])[None].to(next(self.network.parameters()).device)
        was_training = self.network.training
        self.network.eval()
        with torch.no_grad():
            y = self.network(x).float()
        self.network.train(was_training)
        epoch = engine.state.epoch
        path = self.output_dir / "depth_figures" / f"recon_epoch_{epoch:03d}.png"
        depth_figure(
            x[0, 0].cpu().numpy(),
            y[0, 0].cpu().numpy(),
            path,
            f"{item.get('subject', '')}, epoch {epoch}",
            self.n_depths,
            self.axis,
        )
        self.written.append(path)
        if self.tracking_uri and self.run_name:
            self._log(path)

    def _log(self, path: Path) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:  # MLflow is optional on GPU boxes
            return
        client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment_name or "")
        if exp is None:
            return
        runs = client.search_runs(
            [exp.experiment_id], filter_string=f"attributes.run_name = '{self.run_name}'", max_results=1
        )
        if runs:
            client.log_artifact(runs[0].info.run_id, str(path), "depth_figures")
        else:
            logger.warning("no MLflow run named %s; figure kept at %s only", self.run_name, path)
