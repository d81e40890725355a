"""S3's simple autoencoder and variational autoencoder (2D brain MRI at 128x128).

Layer plan (``channels=(32, 64, 128, 256, 512)``, ``latent_size=512``)::

    5 x [Conv 4x4 s2 p1 + LeakyReLU 0.2]      128 -> 4, 512 channels -> flatten 8192
    AE:  Dense latent                          VAE: Dense mu, Dense log-variance; z = mu + sigma * eps
    Dense 8192 + LeakyReLU -> 512x4x4
    4 x [ConvT 4x4 s2 p1 + LeakyReLU 0.2], ConvT1 4x4 s2 p1 + sigmoid      -> 128x128x1

S3 names the shape (5 conv + 5 deconv, LeakyReLU, MSE for the AE, BCE + KL for the VAE) but not
the widths or kernels; these are ours. The VAE samples ``z`` in training and uses ``mu`` in eval
mode (deterministic reconstructions for evaluation). Its forward returns only the reconstruction,
so MONAI's ``SupervisedTrainer`` and the bundle tools see a plain image-to-image network; the KL
term of the last forward pass is kept in ``net.kl`` (per image, summed over latent units) and
``VAELoss`` adds it, as Keras' ``add_loss`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

__all__ = ["SimpleAE", "SimpleVAE", "VAELoss"]


class SimpleAE(nn.Module):
    """S3's autoencoder; ``variational=True`` (or ``SimpleVAE``) makes it S3's VAE.

    Args:
        spatial_dims: 2 (S3) or 3.
        in_channels: image channels.
        img_size: input size, divisible by ``2 ** len(channels)``.
        latent_size: latent width (S3's sweep: 512, 1024, 2048).
        channels: encoder widths; the decoder mirrors them.
        variational: reparameterised Gaussian latent.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        img_size: int = 128,
        latent_size: int = 512,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        negative_slope: float = 0.2,
        variational: bool = False,
    ) -> None:
        super().__init__()
        f = 2 ** len(channels)
        if img_size % f:
            raise ValueError(f"img_size {img_size} must be divisible by {f}")
        conv, convt = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        self.variational, self.latent_size = variational, latent_size
        enc, prev = [], in_channels
        for ch in channels:
            enc.append(nn.Sequential(conv(prev, ch, 4, stride=2, padding=1), nn.LeakyReLU(negative_slope)))
            prev = ch
        self.encoder = nn.Sequential(*enc)
        self.bottom = (channels[-1], *(img_size // f,) * spatial_dims)
        flat = channels[-1] * (img_size // f) ** spatial_dims
        self.fc_mu = nn.Linear(flat, latent_size)
        self.fc_logvar = nn.Linear(flat, latent_size) if variational else None
        self.from_latent = nn.Sequential(nn.Linear(latent_size, flat), nn.LeakyReLU(negative_slope))
        outs = [*reversed(channels[:-1]), in_channels]
        dec, prev = [], channels[-1]
        for i, ch in enumerate(outs):
            act = nn.Sigmoid() if i == len(outs) - 1 else nn.LeakyReLU(negative_slope)
            dec.append(nn.Sequential(convt(prev, ch, 4, stride=2, padding=1), act))
            prev = ch
        self.decoder = nn.Sequential(*dec)
        self.kl: torch.Tensor | None = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mu, logvar)``; ``logvar`` is None for the plain AE."""
        h = torch.flatten(self.encoder(x), 1)
        return self.fc_mu(h), (self.fc_logvar(h) if self.fc_logvar is not None else None)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(z.shape[0], *self.bottom))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(x)
        if logvar is None:
            return self.decode(mu)
        logvar = logvar.clamp(-30.0, 20.0)
        # KL(q(z|x) || N(0, I)) per image, summed over latent units
        self.kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z)


class SimpleVAE(SimpleAE):
    """S3's VAE (``SimpleAE`` with ``variational=True``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["variational"] = True
        super().__init__(*args, **kwargs)


class VAELoss(nn.Module):
    """S3's VAE loss, BCE + beta * KL, both per pixel: ``mean BCE + beta * mean(KL) / n_pixels``.

    This is the usual per-image ``sum BCE + beta * KL`` divided by the number of pixels, so learning
    rates compare with the MSE-trained AE. Reads the KL of the last forward pass from ``network``.
    """

    def __init__(self, network: nn.Module, beta: float = 1.0) -> None:
        super().__init__()
        self.network, self.beta = [network], float(beta)  # a list: not registered as a submodule

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy(pred.float().clamp(1e-6, 1 - 1e-6), target.float())
        net = getattr(self.network[0], "module", self.network[0])
        if net.kl is None:
            return bce
        n_pix = target[0].numel()
        return bce + self.beta * net.kl.float().mean() / n_pix
