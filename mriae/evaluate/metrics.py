"""Per-slice reconstruction metrics for clean and corrupted inputs, as an Ignite handler.

``ReconstructionMetrics`` attaches to a ``ReconstructionEvaluator``. For every slice and condition
it computes MSE, DSSIM, PSNR (data range 1) and SSIM (window 11, sigma 1.5, k1 0.01, k2 0.03: S4's
settings) of the reconstruction, and of the corrupted input itself (what doing nothing scores).
At the end of a run the means go into ``engine.state.metrics`` (``<prefix><condition>_<metric>``,
``<prefix><condition>_input_<metric>``, ``<prefix>loss``: the loss on the ``loss_condition``
input, clean by default, the corrupted one for a denoiser) for checkpointing, early stopping and
MLflow; with ``output_dir`` it also writes ``per_slice.csv``, ``per_subject.csv``,
``summary.csv`` / ``summary.json`` (mean and std) and one figure per case; with ``checkpoint``
also ``evaluated.json``: which weights these numbers belong to (file name and sha256), so that a
release fills its ``eval_metrics`` only from an evaluation of the weights it ships.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import SSIMMetric

__all__ = ["ReconstructionMetrics", "slice_metrics", "psnr_from_mse", "METRICS"]

METRICS = ("mse", "dssim", "psnr", "ssim")
logger = logging.getLogger("mriae.evaluate.metrics")


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, data range 1) of a mean squared error (tensor of any shape)."""
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def slice_metrics(
    pred: torch.Tensor, target: torch.Tensor, ssim: SSIMMetric | None = None
) -> dict[str, np.ndarray]:
    """Per-image metrics of a batch (B, C, *spatial) in [0, 1]."""
    pred, target = pred.float(), target.float()
    dims = tuple(range(1, pred.ndim))
    mse = ((pred - target) ** 2).mean(dim=dims)
    psnr = psnr_from_mse(mse)
    ssim = ssim or SSIMMetric(spatial_dims=pred.ndim - 2, data_range=1.0, win_size=11, kernel_sigma=1.5)
    s = ssim._compute_tensor(pred, target).reshape(-1)
    return {
        "mse": mse.cpu().numpy(),
        "psnr": psnr.cpu().numpy(),
        "ssim": s.cpu().numpy(),
        "dssim": ((1 - s) / 2).cpu().numpy(),
    }


class ReconstructionMetrics:
    def __init__(
        self,
        prefix: str = "val_",
        loss_fn: Callable | None = None,
        output_dir: str | None = None,
        figure_slices: Mapping[str, int] | None = None,
        spatial_dims: int = 2,
        print_summary: bool = False,
        loss_condition: str = "clean",
        checkpoint: str | None = None,
    ) -> None:
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.prefix, self.loss_fn, self.loss_condition = prefix, loss_fn, loss_condition
        self.output_dir = Path(output_dir) if output_dir else None
        self.figure_slices = dict(figure_slices or {})
        self.print_summary = print_summary
        self.ssim = SSIMMetric(spatial_dims=spatial_dims, data_range=1.0, win_size=11, kernel_sigma=1.5)
        self.rows: list[dict] = []
        self.cases: dict[str, dict] = {}
        self._loss_sum, self._loss_n = 0.0, 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, _=None) -> None:
        self.rows, self.cases, self._loss_sum, self._loss_n = [], {}, 0.0, 0

    def _iteration(self, engine: Engine) -> None:
        out = engine.state.output
        if not isinstance(out, Mapping):
            raise TypeError(
                "ReconstructionMetrics needs the evaluator's output un-decollated (decollate=False)"
            )
        target, n = out["label"], out["label"].shape[0]
        subjects = list(out.get("subject") or [""] * n)
        slices = [int(s) for s in (out.get("slice") if out.get("slice") is not None else [-1] * n)]
        if self.loss_fn is not None:
            key = "pred" if self.loss_condition == "clean" else f"pred_{self.loss_condition}"
            if key not in out:
                have = ["clean"] + [k[len("pred_") :] for k in out if k.startswith("pred_")]
                raise ValueError(
                    f"loss_condition {self.loss_condition!r} is not among the evaluated conditions ({', '.join(have)})"
                )
            pred = out[key]
            self._loss_sum += float(self.loss_fn(pred.float(), target.float())) * n
            self._loss_n += n
        conds = ["clean"] + [k[len("pred_") :] for k in out if k.startswith("pred_")]
        for cond in conds:
            pred = out["pred"] if cond == "clean" else out[f"pred_{cond}"]
            m = slice_metrics(pred, target, self.ssim)
            mi = None if cond == "clean" else slice_metrics(out[f"input_{cond}"], target, self.ssim)
            for i in range(n):
                row = {"subject": subjects[i], "slice": slices[i], "condition": cond}
                row.update({k: float(m[k][i]) for k in METRICS})
                if mi is not None:
                    row.update({f"input_{k}": float(mi[k][i]) for k in METRICS})
                self.rows.append(row)
        if self.output_dir is not None and self.figure_slices:
            for i in range(n):
                if self.figure_slices.get(subjects[i]) == slices[i]:
                    case = {"clean": (target[i, 0].cpu().numpy(), out["pred"][i, 0].float().cpu().numpy())}
                    for cond in conds[1:]:
                        case[cond] = (
                            out[f"input_{cond}"][i, 0].cpu().numpy(),
                            out[f"pred_{cond}"][i, 0].float().cpu().numpy(),
                        )
                    self.cases[subjects[i]] = {
                        "slice": slices[i],
                        "target": target[i, 0].cpu().numpy(),
                        "images": case,
                    }

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{condition: {column: {"mean", "std", "n"}}}`` over slices."""
        out: dict = {}
        for cond in dict.fromkeys(r["condition"] for r in self.rows):
            rows = [r for r in self.rows if r["condition"] == cond]
            cols = [c for c in rows[0] if c not in ("subject", "slice", "condition")]
            out[cond] = {
                c: {
                    "mean": float(np.mean([r[c] for r in rows])),
                    "std": float(np.std([r[c] for r in rows])),
                    "n": len(rows),
                }
                for c in cols
            }
        return out

    def _complete(self, engine: Engine) -> None:
        if not self.rows:
            return
        summ = self.summary()
        for cond, cols in summ.items():
            for col, st in cols.items():
                engine.state.metrics[f"{self.prefix}{cond}_{col}"] = st["mean"]
        if self._loss_n:
            engine.state.metrics[f"{self.prefix}loss"] = self._loss_sum / self._loss_n
        if self.output_dir is not None:
            self.write(summ)
        if self.print_summary:
            from mriae.figures.plots import summary_table

            print(summary_table(summ), flush=True)

    def write(self, summ: dict) -> None:
        import pandas as pd

        from mriae.files import atomic_write_text
        from mriae.figures.plots import case_figure

        d = self.output_dir
        d.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self.rows)
        atomic_write_text(d / "per_slice.csv", df.to_csv(index=False))
        num = [c for c in df.columns if c not in ("subject", "slice", "condition")]
        atomic_write_text(
            d / "per_subject.csv",
            df.groupby(["condition", "subject"], sort=False)[num].mean().reset_index().to_csv(index=False),
        )
        flat = [{"condition": c, "column": k, **v} for c, cols in summ.items() for k, v in cols.items()]
        atomic_write_text(d / "summary.csv", pd.DataFrame(flat).to_csv(index=False))
        atomic_write_text(d / "summary.json", json.dumps(summ, indent=2))
        if self.checkpoint is not None and self.checkpoint.is_file():
            from mriae.files import sha256_file

            record = {
                "checkpoint": self.checkpoint.name,
                "sha256": sha256_file(self.checkpoint),
                "slices": len({(r["subject"], r["slice"]) for r in self.rows}),
                "conditions": list(summ),
            }
            atomic_write_text(d / "evaluated.json", json.dumps(record, indent=2))
        for sid, case in self.cases.items():
            case_figure(sid, case, d / "figures" / f"{sid}.png")
