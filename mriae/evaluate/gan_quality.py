"""Measured GAN quality: diversity, fidelity and fixed-noise sample grids, every epoch.

S1 judged its GANs by eye; these numbers replace that:

- **diversity**: mean pairwise MS-SSIM among generated samples beside the same among real samples
  (``pairwise_msssim``; MONAI's ``compute_ms_ssim``). Mode collapse shows as generated MS-SSIM
  rising well above the real one. At 64 px the standard 5 scales with an 11 px window do not fit, so
  3 scales (Wang et al.'s first three weights, renormalised to sum 1) and a 7 px Gaussian window.
- **fidelity**: Frechet distance (``frechet_distance``, the FID formula) and MMD between real and
  generated samples in a feature space that works offline (``AEFeatures``): the latent of the
  project's Residual U-Net autoencoder (``bundles/res_unet/models/model.pt`` when present, else a
  fixed random-init encoder, seed 0; which one is recorded), globally average-pooled to 128
  values. Inputs are resized to the AE's 128 px. For volumes, the three middle planes each go
  through the 2D encoder and their features are concatenated (384 values). These are not Inception
  features: numbers compare runs in THIS space only, not with published FIDs.
  MMD is MONAI's ``MMDMetric`` (linear kernel, unbiased: the squared distance of feature means)
  and ``mmd_rbf``, a Gaussian-kernel MMD^2 (bandwidth: median pairwise distance of the real set),
  which also sees differences in spread such as collapse.

``GanQuality`` is the Ignite handler the bundles attach to the trainer. It also records
``gen_spread`` / ``real_spread`` (the std across samples, averaged over pixels or voxels): a generator
that returns one image whatever its noise has ``gen_spread`` 0.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.metrics import MMDMetric
from monai.metrics.regression import compute_ms_ssim

from mriae.figures.gan import middle_planes
from mriae.files import sha256_file

__all__ = [
    "MSSSIM_WEIGHTS",
    "pairwise_msssim",
    "frechet_distance",
    "mmd_linear",
    "mmd_rbf",
    "AEFeatures",
    "GanQuality",
]

logger = logging.getLogger("mriae.evaluate.gan_quality")
_W = (0.0448, 0.2856, 0.3001)
MSSSIM_WEIGHTS = tuple(w / sum(_W) for w in _W)


def pairwise_msssim(x: torch.Tensor, kernel_size: int = 7, weights=MSSSIM_WEIGHTS, chunk: int = 256) -> float:
    """Mean MS-SSIM over all pairs i < j of a batch ``(N, C, *spatial)`` in [0, 1] (N >= 2)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("pairwise MS-SSIM needs at least two samples")
    i, j = torch.triu_indices(n, n, offset=1)
    vals = []
    for s in range(0, len(i), chunk):
        a, b = x[i[s : s + chunk]].float(), x[j[s : s + chunk]].float()
        vals.append(
            compute_ms_ssim(
                a, b, spatial_dims=x.ndim - 2, data_range=1.0, kernel_size=kernel_size, weights=list(weights)
            ).reshape(-1)
        )
    return float(torch.cat(vals).mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``(N, d)`` and ``(M, d)``:
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)``. Same value as MONAI's ``FIDMetric``,
    but ``tr((S_a S_b)^1/2)`` comes from the eigenvalues of the symmetric ``S_a^1/2 S_b S_a^1/2``, which
    stays real and finite when there are fewer samples than features (singular covariances)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    ca, cb = torch.atleast_2d(ca), torch.atleast_2d(cb)
    ev, vec = torch.linalg.eigh(ca)
    sqrt_a = (vec * ev.clamp_min(0).sqrt()) @ vec.T
    m = sqrt_a @ cb @ sqrt_a
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + ca.trace() + cb.trace() - 2 * tr_covmean)


def mmd_linear(a: torch.Tensor, b: torch.Tensor) -> float:
    """MONAI's ``MMDMetric`` on feature vectors (equal numbers of samples)."""
    k = min(a.shape[0], b.shape[0])
    return float(MMDMetric()(a[:k].double(), b[:k].double()))


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with a Gaussian kernel ``exp(-|x - y|^2 / (2 h^2))``; ``h`` defaults to the median
    pairwise distance within ``a`` (the reference set, so the scale is fixed across epochs)."""
    a, b = a.double(), b.double()
    daa, dbb, dab = torch.cdist(a, a) ** 2, torch.cdist(b, b) ** 2, torch.cdist(a, b) ** 2
    if bandwidth is None:
        off = daa[~torch.eye(len(a), dtype=torch.bool)]
        bandwidth = float(off.median().sqrt().clamp_min(1e-12))
    g = 2 * bandwidth**2
    kaa, kbb, kab = (-daa / g).exp(), (-dbb / g).exp(), (-dab / g).exp()
    m, n = len(a), len(b)
    return float(
        (kaa.sum() - kaa.trace()) / (m * (m - 1)) + (kbb.sum() - kbb.trace()) / (n * (n - 1)) - 2 * kab.mean()
    )


class AEFeatures(torch.nn.Module):
    """Feature vectors from the Residual U-Net autoencoder's encoder (module doc).

    ``weights``: a res_unet checkpoint; when the file is missing (or ``None``) the encoder keeps a
    fixed random initialisation (seed 0) and ``self.source`` says so."""

    def __init__(self, weights: str | None = None, img_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        from mriae.networks import ResUNetAE

        def seeded() -> torch.nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return ResUNetAE(spatial_dims=2, img_size=img_size)

        ae = seeded()
        self.source = f"random-init ResUNetAE encoder (seed {seed})"
        if weights and Path(weights).is_file():
            from mriae.networks.checkpoint import load_weights
            from mriae.errors import InputError

            try:  # S4's single-slice autoencoder; res_unet's default 5-slice denoiser does not fit
                load_weights(ae, weights)
            except InputError as e:
                ae = seeded()  # a failed load may have copied the tensors that did fit
                self.source += f"; {Path(weights).name} not used (not S4's single-slice autoencoder: {e})"
                logging.getLogger("mriae.evaluate.gan_quality").warning("GAN feature space: %s", self.source)
            else:
                digest = sha256_file(weights)[:12]
                self.source = f"trained ResUNetAE encoder ({Path(weights).name}, sha256 {digest})"
        self.encoder = torch.nn.Sequential(ae.stem, ae.stage2, ae.stage3).eval().requires_grad_(False)
        self.img_size = img_size

    def _encode2d(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x.float(), size=(self.img_size,) * 2, mode="bilinear", align_corners=False)
        return self.encoder(x.float()).mean(dim=(2, 3))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return self._encode2d(x)
        planes = middle_planes(x)
        return torch.cat([self._encode2d(p) for p in planes], dim=1)


class GanQuality:
    """Every ``interval`` epochs: generate ``n_samples`` from a fixed noise (seeded), compute diversity
    (``gen_msssim`` beside ``real_msssim``), fidelity (``fd``, ``mmd``, ``mmd_rbf`` against ``n_samples``
    fixed real samples) into ``engine.state.metrics``, and save the sample grid
    ``output_dir/samples/epoch_NNN.png``. It also records every epoch's metrics (with the loss means of
    ``GanLosses``, attached before it) into ``output_dir/curves.json`` and draws ``curves.png``.

    ``real_data``: a dataset of dicts with ``image`` (e.g. ``SliceDataset`` / ``VolumeDataset``).
    """

    main_process_only = True  # writes files: under torchrun only rank 0 runs it (train.distributed.main_only)

    def __init__(
        self,
        generator: torch.nn.Module,
        real_data,
        output_dir: str,
        latent_size: int = 200,
        n_samples: int = 64,
        features: AEFeatures | None = None,
        feature_weights: str | None = None,
        interval: int = 1,
        seed: int = 1234,
        kernel_size: int = 7,
        grid_samples: int = 64,
    ) -> None:
        self.generator, self.output_dir = generator, Path(output_dir)
        self.latent_size, self.interval, self.kernel_size = latent_size, interval, kernel_size
        self.features = features or AEFeatures(feature_weights)
        n_real = len(real_data)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n_real, generator=g)[: min(n_samples, n_real)]
        self.reals = torch.stack([torch.as_tensor(real_data[int(i)]["image"]).float() for i in idx])
        self.n = len(self.reals)
        self.z = torch.randn(max(self.n, grid_samples), latent_size, generator=g)
        self.grid_samples = grid_samples
        self.history: list[dict] = []
        self._real_feats: torch.Tensor | None = None
        self.real_msssim = pairwise_msssim(self.reals, kernel_size) if self.n >= 2 else float("nan")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.write)

    @torch.no_grad()
    def generate(self, device: torch.device | str) -> torch.Tensor:
        was_training = self.generator.training
        self.generator.eval()
        try:
            out = torch.cat([self.generator(c.to(device)) for c in self.z.split(32)]).float().cpu()
        finally:
            self.generator.train(was_training)
        return out

    def measure(self, fakes: torch.Tensor) -> dict[str, float]:
        fakes_m = fakes[: self.n]
        dev = next(self.features.parameters()).device
        if self._real_feats is None:
            self._real_feats = self.features(self.reals.to(dev)).cpu()
        ff = self.features(fakes_m.to(dev)).cpu()
        rf = self._real_feats
        return {
            "gen_msssim": pairwise_msssim(fakes_m.to(dev), self.kernel_size),
            "real_msssim": self.real_msssim,
            "gen_spread": float(fakes_m.float().std(0).mean()),
            "real_spread": float(self.reals.std(0).mean()),
            "fd": frechet_distance(rf, ff),
            "mmd": mmd_linear(rf, ff),
            "mmd_rbf": mmd_rbf(rf, ff),
        }

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval:
            return
        device = engine.state.device if getattr(engine.state, "device", None) is not None else "cpu"
        self.features.to(device)
        fakes = self.generate(device)
        metrics = self.measure(fakes)
        engine.state.metrics.update(metrics)
        from mriae.figures.gan import sample_grid

        sample_grid(
            fakes[: self.grid_samples],
            self.output_dir / "samples" / f"epoch_{epoch:03d}.png",
            f"fixed noise, epoch {epoch}",
        )
        rec = {"epoch": epoch, "iteration": engine.state.iteration}
        rec.update({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        self.history.append(rec)
        self.write()
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def restore(self, epoch: int) -> None:
        """Take back the curves of an earlier run of the same training up to ``epoch`` (``GanResume``)."""
        path = self.output_dir / "curves.json"
        if path.is_file():
            self.history = [e for e in json.loads(path.read_text())["epochs"] if e["epoch"] <= epoch]

    def write(self, _=None) -> None:
        from mriae.files import atomic_write_text
        from mriae.figures.gan import plot_gan_curves, sample_grid

        self.output_dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "feature_space": self.features.source,
            "n_samples": self.n,
            "msssim_kernel": self.kernel_size,
            "msssim_weights": list(MSSSIM_WEIGHTS),
            "epochs": self.history,
        }
        atomic_write_text(self.output_dir / "curves.json", json.dumps(doc, indent=2))
        if self.history:
            plot_gan_curves(self.history, self.output_dir / "curves.png")
        real_png = self.output_dir / "samples" / "real.png"
        if not real_png.is_file():
            sample_grid(self.reals[: self.grid_samples], real_png, "real samples")


def summarise(curves: dict) -> dict[str, np.ndarray]:
    """Columns of a ``curves.json`` as arrays (for scripts and tests)."""
    eps = curves["epochs"]
    keys = dict.fromkeys(k for e in eps for k in e)
    return {k: np.array([e.get(k, np.nan) for e in eps], dtype=float) for k in keys}
