"""Losses of S4: MSE, or DSSIM = (1 - SSIM) / 2 (window 11, sigma 1.5, k1 0.01, k2 0.03, range 1).

MONAI's ``SSIMLoss`` computes 1 - SSIM with those settings; DSSIM is half of it.
"""

from __future__ import annotations

import torch
from monai.losses import SSIMLoss
from torch import nn

from mriae.errors import InputError

__all__ = ["DSSIMLoss", "get_loss", "LOSSES"]


class DSSIMLoss(nn.Module):
    """Structural dissimilarity (1 - SSIM) / 2 for images in [0, 1], 2D or 3D."""

    def __init__(self, spatial_dims: int = 2, win_size: int = 11, sigma: float = 1.5) -> None:
        super().__init__()
        self.ssim = SSIMLoss(
            spatial_dims=spatial_dims,
            data_range=1.0,
            kernel_type="gaussian",
            win_size=win_size,
            kernel_sigma=sigma,
            k1=0.01,
            k2=0.03,
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ssim(pred.float(), target.float()) / 2


LOSSES = {"mse": lambda spatial_dims=2: nn.MSELoss(), "dssim": DSSIMLoss}


def get_loss(name: str, spatial_dims: int = 2) -> nn.Module:
    """``"mse"`` or ``"dssim"`` (one config override: ``--loss_name dssim``)."""
    key = str(name).lower()
    if key not in LOSSES:
        raise InputError(f"loss {name!r} is not one of {sorted(LOSSES)}")
    return LOSSES[key](spatial_dims=spatial_dims)
