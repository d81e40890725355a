"""Compare bundles on one split: train (or reuse) each, evaluate all on the same corrupted test slices
next to classical baselines, test the differences, and write a leaderboard.

Steps (``python scripts/compare.py -h``):
1. For each model spec ``bundle[:key=value,...]`` (e.g. ``shallow_res_ae:block=original``,
   ``skip_cae:l2=1e-5``, ``res_unet:loss_name=dssim``) copy ``bundles/<bundle>`` to
   ``<output>/bundles/<label>`` and run ``python -m monai.bundle run training`` there with the spec's and
   the command line's overrides; a copy that already holds ``models/model.pt`` is reused.
2. Corrupt the test slices once per condition (``conditions``) with a generator seeded from the
   compare seed and the condition's name, on the CPU, so every model and baseline sees the same
   inputs whatever the device; evaluate with ``mriae.evaluate.metrics.slice_metrics``.
3. Per model and condition: mean, std and a 95 % CI by bootstrapping subjects; paired tests between all
   entries per condition and metric, at the slice level (S4) and the subject level (``mriae.compare.stats``).
4. Leaderboard (markdown into docs/results.md between the compare markers, and CSV), the p-value
   matrix figure, a reconstruction grid, and an MLflow parent run with a child run per entry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from mriae import repo_root
from mriae.data.corruption import CORRUPTION_SEED, Corruption, corrupt_items
from mriae.config import bundle_config, bundle_files, parse_value
from mriae.errors import InputError, MissingFileError
from mriae.evaluate.metrics import METRICS, slice_metrics
from mriae.compare.stats import bootstrap_ci, paired_tests

__all__ = [
    "ModelSpec",
    "parse_spec",
    "corrupt_all",
    "train_model",
    "load_network",
    "AtTrainingGeometry",
    "OnWholeVolumes",
    "evaluate",
]

S4_MODELS = [
    "res_unet@s4",
    "shallow_res_ae@s4",
    "shallow_res_ae@s4:block=original",
    "skip_cae@s4",
    "myronenko_ae@s4",
]
@dataclass
class ModelSpec:
    bundle: str
    overrides: dict = field(default_factory=dict)
    recipe: str | None = None  # a config file merged over train.json: configs/<recipe>.json (e.g. s4)

    @property
    def label(self) -> str:
        parts = [self.bundle + (f"-{self.recipe}" if self.recipe else "")]
        parts += [f"{k.split('#')[-1]}_{v}" for k, v in self.overrides.items()]
        return re.sub(r"[^A-Za-z0-9_.-]", "", "-".join(str(p) for p in parts))

    def config_files(self, root: str | Path) -> list[str]:
        """train.json, then the recipe's file."""
        try:
            return bundle_files(root, recipe=self.recipe)
        except MissingFileError as e:
            spec = self.bundle + (f"@{self.recipe}" if self.recipe else "")
            raise InputError(f"{e} (model spec {spec})") from None


def parse_spec(text: str) -> ModelSpec:
    """``"bundle"``, ``"bundle@recipe"`` (``configs/<recipe>.json`` merged over train.json, e.g.
    ``res_unet@s4`` for S4's exact recipe) and ``":key=value,key2=value2"`` overrides after either."""
    name, _, rest = text.partition(":")
    name, _, recipe = name.partition("@")
    over = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"model spec {text!r}: expected key=value, got {item!r}")
        over[k.strip()] = parse_value(v.strip())
    return ModelSpec(name.strip(), over, recipe.strip() or None)


def corrupt_all(
    images: torch.Tensor,
    corruption: Corruption | None,
    seed: int = CORRUPTION_SEED,
    keys: Sequence[Sequence] | None = None,
) -> torch.Tensor:
    """The corrupted test set of one condition: every slice by ``corrupt_items`` under its key
    (``(subject, slice)``; its row number when ``keys`` is None), so it is the image validation and
    evaluate.json give that slice under that condition."""
    keys = [(i,) for i in range(len(images))] if keys is None else keys
    return corrupt_items(corruption, images, keys, seed)


def train_model(
    spec: ModelSpec,
    output: Path,
    dataset_dir: str,
    overrides: dict,
    use_mlflow: bool,
    tracking_uri: str | None,
    retrain: bool = False,
    in_place: bool = False,
) -> dict:
    """Train one spec with ``python -m monai.bundle run training`` (or reuse its checkpoint)."""
    src = repo_root() / "bundles" / spec.bundle
    if not (src / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"bundle {spec.bundle!r} not found under {src.parent}")
    root = src if in_place else output / "bundles" / spec.label
    info = {"label": spec.label, "bundle": spec.bundle, "root": str(root), "overrides": spec.overrides}
    ckpt = root / "models" / "model.pt"
    if ckpt.is_file() and not retrain:
        return {**info, "trained": False, "seconds": 0.0}
    if in_place:
        raise FileNotFoundError(f"{ckpt}: no trained checkpoint to reuse")
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    run_name = f"{spec.label}-train-{time.strftime('%Y%m%d-%H%M%S')}"
    args = {"dataset_dir": dataset_dir, "use_mlflow": use_mlflow, "run_name": run_name}
    if tracking_uri:
        args["tracking_uri"] = tracking_uri
    args.update(overrides)
    args.update(spec.overrides)
    files = spec.config_files(root)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file"]
    cmd += [str(files) if len(files) > 1 else files[0], "--bundle_root", str(root)]
    for k, v in args.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
    log = output / "logs" / f"{spec.label}-train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f:
        res = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
    if res.returncode != 0 or not ckpt.is_file():
        raise RuntimeError(f"training {spec.label} failed (exit {res.returncode}); see {log}")
    return {**info, "trained": True, "seconds": time.time() - t0, "run_name": run_name}


class AtTrainingGeometry(torch.nn.Module):
    """Run a 2D network trained on other slice geometry on the compare's test slices and return the
    output on the test grid: ``resize`` to the size its training slices were resized to (S1's
    64x64 CAE), or zero-``pad`` to the side its slices were padded to (S2's 176x176 CAE), then back.
    The comparison stays on the test grid, so every entry is scored on the same pixels."""

    def __init__(self, net: torch.nn.Module, side: int, how: str) -> None:
        super().__init__()
        if how not in ("resize", "pad"):
            raise ValueError(f"how={how!r}: 'resize' or 'pad'")
        self.net, self.side, self.how = net, int(side), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        if self.how == "resize":
            y = self.net(F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True))
            return F.interpolate(y.float(), size=(h, w), mode="bilinear", antialias=True)
        top, left = (self.side - h) // 2, (self.side - w) // 2
        y = self.net(F.pad(x, (left, self.side - w - left, top, self.side - h - top)))
        return y[..., top : top + h, left : left + w]


class _OnCorruptedVolumes(torch.nn.Module):
    """Score a bundle that needs more than the test slice itself on the compare's 2D test slices.

    Per test subject, its prepared volume (the cache the test slices were cut from) is rebuilt with
    the test slices replaced by the corrupted slices every 2D entry gets, and its other slices (those
    the relevance filter left out of the test set) corrupted by the same condition under their own keys
    (``corrupt_items``, ``(subject, slice)``); ``_run(volume)`` turns that volume into the prediction on the prepared grid, whose
    rows at the test slices are the result. Call ``wrapper.predict(x, subjects, slices, corruption,
    seed, device)``; ``x`` holds the corrupted test slices in the test set's order."""

    def __init__(self, net: torch.nn.Module, test_set) -> None:
        super().__init__()
        import numpy as np

        self.net = net
        self.volumes = {
            rec["subject"]: torch.from_numpy(
                np.asarray(np.load(Path(test_set.root) / rec["image"]), dtype=np.float32)
            )
            for rec in test_set.records
        }
        side = tuple(test_set.images.shape[-2:])
        for sid, vol in self.volumes.items():
            if tuple(vol.shape[1:]) != side:
                raise InputError(
                    f"{sid}: prepared volume {tuple(vol.shape)} does not hold {side} test slices"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} needs the subjects and slices of its input: call predict()")

    def _run(self, vol: torch.Tensor, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x, subjects, slices, corruption, seed: int, device: torch.device) -> torch.Tensor:
        out = torch.empty_like(x, dtype=torch.float32)
        rows: dict[str, list[int]] = {}
        for i, s in enumerate(subjects):
            rows.setdefault(s, []).append(i)
        for sid in sorted(rows):
            vol = self.volumes[sid].clone()
            r = torch.as_tensor(rows[sid])
            z = torch.as_tensor([int(slices[i]) for i in rows[sid]])
            rest = torch.ones(len(vol), dtype=torch.bool)
            rest[z] = False
            if corruption is not None and bool(rest.any()):
                keys = [(sid, int(k)) for k in torch.nonzero(rest)[:, 0]]
                vol[rest] = corrupt_items(corruption, vol[rest][:, None], keys, seed)[:, 0]
            vol[z] = x[r, 0].float()
            out[r, 0] = self._run(vol, device)[z]
        return out


class OnWholeVolumes(_OnCorruptedVolumes):
    """A 3D bundle trained on whole volumes resized to ``size`` (S1's volume CAE): the rebuilt volume
    is resized to ``size`` as the bundle's ``VolumeDataset`` resizes training volumes (trilinear,
    anti-aliased), reconstructed and resized back to the prepared grid."""

    def __init__(self, net: torch.nn.Module, size, test_set) -> None:
        super().__init__(net, test_set)
        self.size = tuple(int(s) for s in size)

    def _run(self, vol: torch.Tensor, device: torch.device) -> torch.Tensor:
        from monai.transforms import Resize

        small = torch.as_tensor(
            Resize(spatial_size=self.size, mode="trilinear", anti_aliasing=True)(vol[None])
        ).float()
        rec = self.net(small[None].to(device)).float().cpu()[0]
        up = Resize(spatial_size=tuple(vol.shape), mode="trilinear", anti_aliasing=True)
        return torch.as_tensor(up(rec)).float()[0]


class OnSliceStacks(_OnCorruptedVolumes):
    """A 2.5D bundle that takes ``context`` neighbouring slices on each side (res_unet's denoiser):
    every test slice is predicted from its stack in the rebuilt (corrupted) volume, along the
    prepared sagittal axis, as inference does (``mriae.infer.pipeline.SliceStackInferer``)."""

    def __init__(self, net: torch.nn.Module, context: int, test_set) -> None:
        super().__init__(net, test_set)
        from mriae.infer.pipeline import SliceStackInferer

        self.context = int(context)
        self.inferer = SliceStackInferer(context=self.context, axes=[0], sw_batch_size=64)

    def _run(self, vol: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.inferer(vol[None, None].to(device), self.net).float().cpu()[0, 0]


def load_network(
    root: str | Path, overrides: dict, device: torch.device, test_set=None, recipe: str | None = None
) -> torch.nn.Module:
    """The bundle's ``network_def`` with the spec's overrides, trained weights loaded, in eval mode.

    With ``test_set`` (the compare's test ``SliceDataset``), a 2D bundle whose training slices were
    resized (dataset ``size``) or padded (dataset ``pad_to``) to another side is wrapped in
    :class:`AtTrainingGeometry`, and a 3D bundle trained on whole volumes (``img_size`` of three
    sides) in :class:`OnWholeVolumes`."""
    from mriae.networks.checkpoint import load_weights

    parser = bundle_config(root, recipe=recipe, overrides=overrides)
    net = parser.get_parsed_content("network_def", instantiate=True)
    load_weights(net, Path(root) / "models" / "model.pt")
    net = net.to(device).eval()
    if test_set is None:
        return net
    if int(parser.get_parsed_content("spatial_dims", default=2)) != 2:
        size = parser.get_parsed_content("img_size", default=None)
        if not isinstance(size, (list, tuple)) or len(size) != 3:
            raise InputError(
                f"{root}: a 3D bundle needs an 'img_size' of three sides to be scored on whole volumes"
            )
        return OnWholeVolumes(net, size, test_set).eval()
    context = int(parser.get_parsed_content("context", default=0) or 0)
    if context:
        return OnSliceStacks(net, context, test_set).eval()
    test_side = int(test_set.images.shape[-1])
    ds = parser.get("train#dataset", {})
    for key, how in (("size", "resize"), ("pad_to", "pad")):
        if key in ds:
            side = parser.get_parsed_content(f"train#dataset#{key}")
            if side is not None and int(side) != int(test_side):
                return AtTrainingGeometry(net, int(side), how).eval()
    return net


@torch.no_grad()
def _predict(net: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    return torch.cat([net(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def evaluate(
    models: dict[str, torch.nn.Module],
    baselines: dict,
    images: torch.Tensor,
    subjects: list[str],
    slices: list[int],
    conds: dict,
    seed: int,
    device: torch.device,
    grid_index: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Per-slice metrics of every model and available baseline under every condition, plus the grid
    images (``{condition: {"input": array, entry: array}}``) of slice ``grid_index``."""
    from monai.metrics import SSIMMetric

    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=11, kernel_sigma=1.5)
    frames, grid = [], {}
    for cname, corr in conds.items():
        x = corrupt_all(images, corr, seed, list(zip(subjects, slices)))
        outs = {
            label: net.predict(x, subjects, slices, corr, seed, device)
            if isinstance(net, _OnCorruptedVolumes)
            else _predict(net, x, device)
            for label, net in models.items()
        }
        outs.update({n: b(x, subjects) for n, b in baselines.items() if b.available})
        grid[cname] = {"target": images[grid_index, 0].numpy(), "input": x[grid_index, 0].numpy()}
        for entry, pred in outs.items():
            m = slice_metrics(pred, images, ssim)
            df = pd.DataFrame({"entry": entry, "condition": cname, "subject": subjects, "slice": slices})
            for k in METRICS:
                df[k] = m[k]
            frames.append(df)
            grid[cname][entry] = pred[grid_index, 0].numpy()
    return pd.concat(frames, ignore_index=True), grid


def summarize(per_slice: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean, std, subject-bootstrap 95 % CI per entry, condition and metric."""
    rows = []
    for (entry, cond), g in per_slice.groupby(["entry", "condition"], sort=False):
        for k in METRICS:
            mean, lo, hi = bootstrap_ci(g[k].to_numpy(), g["subject"].tolist(), n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "entry": entry,
                    "condition": cond,
                    "metric": k,
                    "mean": mean,
                    "std": float(g[k].std(ddof=0)),
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_slices": len(g),
                    "n_subjects": g["subject"].nunique(),
                }
            )
    return pd.DataFrame(rows)


def pairwise(per_slice: pd.DataFrame, metrics=("psnr", "ssim")) -> pd.DataFrame:
    """Paired tests between all entries, per condition, metric and level (slice, subject)."""
    out = []
    for cond, g in per_slice.groupby("condition", sort=False):
        for k in metrics:
            wide = g.pivot_table(index=["subject", "slice"], columns="entry", values=k, sort=False)
            for level, scores in (("slice", wide), ("subject", wide.groupby(level="subject").mean())):
                t = paired_tests(scores)
                t.insert(0, "level", level)
                t.insert(0, "metric", k)
                t.insert(0, "condition", cond)
                out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
