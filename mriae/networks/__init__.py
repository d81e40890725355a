"""Networks, one architecture family per file."""

from __future__ import annotations

from torch import nn

from mriae.networks.blocks import FullPreActResBlock, OriginalResBlock, UpBlock
from mriae.networks.cae import CAE
from mriae.networks.conv_ae import ConvAE
from mriae.networks.gan import GanDiscriminator, GanGenerator
from mriae.networks.myronenko import GreenBlock, MyronenkoAE
from mriae.networks.res_unet import ResUNetAE
from mriae.networks.skip_cae import SkipCAE
from mriae.networks.vae import SimpleAE, SimpleVAE, VAELoss

__all__ = ["ResUNetAE", "FullPreActResBlock", "OriginalResBlock", "UpBlock", "count_parameters"]


def count_parameters(net: nn.Module, keras: bool = True) -> int:
    """Number of parameters. ``keras=True`` counts as Keras' ``model.count_params()`` does, i.e. also
    the batch-norm running mean and variance (non-trainable weights there), so the figures compare
    with the seeds'; ``keras=False`` counts trainable PyTorch parameters only."""
    n = sum(p.numel() for p in net.parameters())
    if keras:
        n += sum(
            b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var"))
        )
    return n


__all__ += ["SkipCAE", "MyronenkoAE", "GreenBlock"]

__all__ += ["CAE", "ConvAE", "SimpleAE", "SimpleVAE", "VAELoss"]

__all__ += ["GanGenerator", "GanDiscriminator"]
