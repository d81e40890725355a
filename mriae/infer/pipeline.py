"""Inference on a user's volume by the model's own plan: transforms, the slice-stack inferer, and
the composition of the output (what the network changed, applied to the input).

``plan_transforms(meta)`` builds the preprocessing from the checkpoint's side file (``mriae.prepare.plan``):
load, canonical orientation (an exact permutation / flip), then either nothing more (the plan's
``inference_grid`` ``"native"``: the input's own grid) or the plan's resampling and pad / crop
(``"plan"``, S4), then the plan's intensity scaling. ``SliceStackInferer`` runs a 2D network on
stacks of ``2k + 1`` neighbouring slices along one or three axes of the volume, padding every
slice to the network's stride and cropping back (fully convolutional: any size). The
postprocessing (``mriae.infer.transforms.Deltad`` / ``ApplyDeltad``) maps only the CHANGE the network
made back onto the input's grid and adds it to the input, so an identity network returns the
input bit for bit, and resampling (S4's plan) costs only the change, never the input's detail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import CopyItemsd, EnsureTyped

from mriae.infer.slices import along_axis
from mriae.prepare.plan import plan_config
from mriae.prepare.preprocessing import geometric_transforms

__all__ = ["plan_transforms", "SliceStackInferer", "slicing_axes"]
logger = logging.getLogger("mriae.infer")


def plan_transforms(meta: Mapping, device: torch.device | str = "cpu", keys: str = "image") -> list:
    """The inference preprocessing of the plan in ``meta`` (``mriae.networks.checkpoint.read``): a list for a MONAI
    ``Compose`` whose geometric steps ``Invertd`` can undo. The loaded input is kept under
    ``input`` (its own grid and intensities) for ``ApplyDeltad``."""
    from mriae.infer.transforms import LoadVolumed, RobustScaled

    plan = plan_config(meta["plan"])
    return [
        LoadVolumed(keys=keys),
        CopyItemsd(keys=keys, names="input"),
        EnsureTyped(keys=keys, device=device, track_meta=True),
        *geometric_transforms(plan, keys=keys, grid=plan.inference_grid),
        RobustScaled(keys=keys, lower=plan.lower_percentile, upper=plan.upper_percentile, clip=plan.clip),
    ]


def _spacing(img: torch.Tensor) -> np.ndarray | None:
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    a = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    a = a.reshape(-1, 4, 4)[0]  # a batch of one
    return np.sqrt((a[:3, :3] ** 2).sum(0))


def slicing_axes(
    trained_axes: Sequence[int], spacing: Sequence[float] | None, anisotropy: float = 1.5
) -> list[int]:
    """Axes to slice along: a model trained on one axis runs on that axis. A model trained on all
    three runs on all three of a near-isotropic volume (voxel sizes within ``anisotropy`` of each
    other), averaged; on an anisotropic one (e.g. 0.5 x 0.5 x 5 mm) only along its coarsest axis, so
    that every 2D slice is an acquired plane with its fine in-plane spacing."""
    axes = [int(a) for a in trained_axes]
    if len(axes) == 1 or spacing is None:
        return axes[:1]
    sp = np.asarray(spacing, dtype=float)
    if sp.max() / sp.min() <= anisotropy:
        return axes
    return [int(np.argmax(sp))]


class SliceStackInferer(Inferer):
    """Run a 2D network over a volume ``(1, 1, X, Y, Z)``, slice by slice, with ``context`` neighbours
    on each side as input channels (edge slices replicated), along each axis of ``slicing_axes`` (the
    outputs averaged). Every slice is padded (reflect) to a multiple of ``multiple`` and cropped back.

    ``adapt_seconds`` > 0 or ``adapt_steps`` > 0 first fine-tunes a copy of the network on the input
    itself without clean data (``mriae.infer.adapt``) for at most that long or that many steps,
    whichever ends first; ``adapt_kwargs`` go to ``adapt_to_volume`` (``loss``: ``"noise2self"``,
    the blind-spot loss, or ``"sure"``, Stein's unbiased risk estimate; ``lr``; ...).
    ``flips`` > 1 averages the network's output over that many in-plane flips of each stack (2: none
    and left-right; 4: also up-down and both), undone on the output: a test-time ensemble of the
    flips the denoiser was trained under, ``flips`` times the network's cost.
    """

    def __init__(
        self,
        context: int = 0,
        axes: Sequence[int] = (0,),
        sw_batch_size: int = 32,
        multiple: int = 8,
        anisotropy: float = 1.5,
        adapt_seconds: float = 0.0,
        adapt_kwargs: Mapping | None = None,
        adapt_steps: int | None = None,
        progress: bool = False,
        flips: int = 1,
    ) -> None:
        super().__init__()
        self.context, self.axes = int(context), [int(a) for a in axes]
        self.sw_batch_size, self.multiple, self.anisotropy = (
            int(sw_batch_size),
            int(multiple),
            float(anisotropy),
        )
        self.adapt_seconds, self.adapt_kwargs = float(adapt_seconds or 0), dict(adapt_kwargs or {})
        self.adapt_steps = int(adapt_steps or 0)
        self.progress = progress
        if int(flips) not in (1, 2, 4):
            raise ValueError(f"flips={flips}: 1, 2 or 4")
        self.flips = int(flips)
        self.last_adaptation: dict | None = None

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[:2] != (1, 1):
            raise ValueError(f"expected one single-channel volume (1, 1, X, Y, Z), got {tuple(inputs.shape)}")
        vol = inputs[0, 0].float()
        vol = vol.as_tensor() if isinstance(vol, MetaTensor) else vol
        axes = slicing_axes(self.axes, _spacing(inputs), self.anisotropy)
        if self.adapt_seconds > 0 or self.adapt_steps > 0:
            from mriae.infer.adapt import adapt_to_volume

            kwargs = {**self.adapt_kwargs, **({"max_steps": self.adapt_steps} if self.adapt_steps else {})}
            seconds = self.adapt_seconds if self.adapt_seconds > 0 else float("inf")
            network, self.last_adaptation = adapt_to_volume(network, vol, self.context, axes, seconds, **kwargs)
        out = None
        with torch.no_grad():
            for i, a in enumerate(axes):  # running mean: outputs that agree are returned unchanged
                y = along_axis(vol, a, network, self.context, self.sw_batch_size, self.multiple, self.flips)
                out = y if out is None else out + (y - out) / (i + 1)
        return out[None, None]
