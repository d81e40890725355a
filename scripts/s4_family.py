"""The S4 model family as bundles derived from ``bundles/res_unet`` (one recipe, one data path).

Each bundle differs from res_unet only in ``bundle_name``, ``network_def``, the hyperparameters that
name network keys, its metadata and its model card's overview: ``derive_configs`` makes them, and
``scripts/make_s4_bundles.py`` writes them. Parameter counts are Keras' (BN running statistics
included, ``mriae.networks.count_parameters``) at 128x128x1.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

__all__ = ["S4_BUNDLES", "derive_configs", "model_card"]

_NET_KEYS = ("block", "skip")  # hyperparameters of res_unet that read network_def keys
_RES_UNET_ONLY = ("full_res", "norm", "noise_map")  # options only ResUNetAE has

S4_BUNDLES: dict[str, dict] = {
    "shallow_res_ae": {
        "title": "Shallow residual autoencoder",
        "network_def": {
            "_target_": "mriae.networks.ResUNetAE",
            "spatial_dims": "@spatial_dims",
            "in_channels": "$2 * @context + 1",
            "out_channels": 1,
            "channels": [32, 64, 128],
            "block": "@block",
            "skip": False,
            "img_size": "@img_size",
            "residual": "@residual",
            "full_res": "@full_res",
            "norm": "@norm",
            "noise_map": "@noise_map",
        },
        "extra": {"block": "full_preact"},
        "hyper": {"block": "@block"},
        "params": {"full_preact": 460609, "original": 460993},
        "section": "5.4.4.1",
        "description": (
            "Shallow residual autoencoder of Arnaiz (S4): stride-2 convolution, three residual blocks "
            "(full pre-activation by default, `--block original` for the original He 2015 block), a "
            "16x16x128 latent and a ConvTranspose decoder with a sigmoid head; no encoder-decoder skips."
        ),
        "diagram": (
            "128x128x1 ─ Conv32 s2 ─ RB64 s2 ─ RB64 ─ RB128 s2 ─ UP64 ─ UP32 ─ UP16 ─ Conv1 + sigmoid\n"
            "RB = full_preact: BN-ReLU-Conv(s)-BN-ReLU-Conv + shortcut | original: Conv(s)-BN-ReLU-Conv-BN"
            " + shortcut, ReLU\n(1x1 conv shortcut when the shape changes); UP = ConvT(3, s2)-BN-ReLU"
        ),
        "count_text": (
            "460,609 (full pre-activation, exactly S4's figure); 460,993 with `--block original`, "
            "which is also what the seed's own `residual_cae.py` builds (S4's text says 462,017: 0.22 % "
            "apart; S4's published code has no extra layer to account for the 1,024)"
        ),
        "reference": "He, K. et al. Identity mappings in deep residual networks. ECCV 2016.",
    },
    "skip_cae": {
        "title": "Skip-connection convolutional autoencoder",
        "network_def": {
            "_target_": "mriae.networks.SkipCAE",
            "spatial_dims": "@spatial_dims",
            "in_channels": "$2 * @context + 1",
            "out_channels": 1,
            "channels": [32, 64, 128],
            "img_size": "@img_size",
            "residual": "@residual",
        },
        "extra": {},
        "hyper": {},
        "params": {"default": 191041},
        "section": "5.4.4.3",
        "description": (
            "Skip-connection convolutional autoencoder of Arnaiz (S4): three Conv(s2)-BN-ReLU encoder "
            "blocks, a 16x16x128 latent, a ConvTranspose decoder whose first two blocks ADD the "
            "encoder's batch-norm outputs (FCN-style skips) before their ReLU, sigmoid head."
        ),
        "diagram": (
            "128x128x1 ─ [Conv32 s2-BN]─ReLU ─ [Conv64 s2-BN]─ReLU ─ Conv128 s2-BN-ReLU\n"
            "   ─ ConvT64-BN (+ BN64 out)-ReLU ─ ConvT32-BN (+ BN32 out)-ReLU ─ UP16 ─ Conv1 + sigmoid"
        ),
        "count_text": "191,041, exactly S4's figure",
        "reference": "Long, J. et al. Fully convolutional networks for semantic segmentation. CVPR 2015.",
    },
    "myronenko_ae": {
        "title": "Myronenko autoencoder",
        "network_def": {
            "_target_": "mriae.networks.MyronenkoAE",
            "spatial_dims": "@spatial_dims",
            "in_channels": "$2 * @context + 1",
            "out_channels": 1,
            "channels": [32, 64, 128],
            "blocks": [1, 2, 2],
            "dropout": "@spatial_dropout",
            "img_size": "@img_size",
            "residual": "@residual",
        },
        "extra": {"spatial_dropout": 0.1},
        "hyper": {"spatial_dropout": "@spatial_dropout"},
        "params": {"default": 991041},
        "section": "5.4.4.2",
        "description": (
            "Myronenko autoencoder of Arnaiz (S4): the encoder branch of Myronenko's BraTS 2018 network "
            "one level shallower (Conv32, spatial dropout 0.1, full pre-activation 'green' blocks with "
            "1x1-conv shortcuts, stride-2 convolutions between levels), a 16x16x128 latent and S4's "
            "ConvTranspose decoder with a sigmoid head; no encoder-decoder skips."
        ),
        "diagram": (
            "128x128x1 ─ Conv32 ─ SpatialDropout 0.1 ─ GB32 ─ Conv32 s2 ─ GB64 ─ GB64 ─ Conv64 s2\n"
            "   ─ GB128 ─ GB128 ─ Conv128 s2 ─ UP64 ─ UP32 ─ UP16 ─ Conv1 + sigmoid\n"
            "GB = BN-ReLU-Conv-BN-ReLU-Conv + 1x1 conv shortcut; UP = ConvT(3, s2)-BN-ReLU"
        ),
        "count_text": "991,041 (S4: 'about 991,000', computed from the seed's code)",
        "reference": (
            "Myronenko, A. 3D MRI brain tumor segmentation using autoencoder regularization. BrainLes 2018."
        ),
    },
}


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _with_after(d: dict, after: str, extra: dict) -> dict:
    """``d`` with ``extra``'s keys inserted right after key ``after`` (JSON configs read top-down)."""
    out = {}
    for k, v in d.items():
        out[k] = v
        if k == after:
            out.update(extra)
    return out


def derive_configs(src: str | Path, name: str) -> dict[str, dict | str]:
    """The bundle ``name``'s configs (and model card text) derived from the res_unet bundle ``src``."""
    src, spec = Path(src), S4_BUNDLES[name]
    out: dict[str, dict | str] = {}
    is_res_unet = spec["network_def"]["_target_"].endswith("ResUNetAE")
    for fname in ("train.json", "inference.json", "s4.json"):
        cfg = copy.deepcopy(_load(src / "configs" / fname))
        if fname != "s4.json":
            cfg["bundle_name"] = name
            cfg["network_def"] = copy.deepcopy(spec["network_def"])
            cfg = _with_after(cfg, "img_size", spec["extra"])
        if not is_res_unet:  # options its network does not have
            cfg = {k: v for k, v in cfg.items() if k not in _RES_UNET_ONLY}
        hyper = cfg.get("hyperparameters")
        if hyper is not None:
            drop = _NET_KEYS + (() if is_res_unet else _RES_UNET_ONLY)
            hyper = {k: v for k, v in hyper.items() if k not in drop}
            cfg["hyperparameters"] = _with_after(hyper, "channels", spec["hyper"])
        out[fname] = cfg
    out["evaluate.json"] = _load(src / "configs" / "evaluate.json")
    meta = _load(src / "configs" / "metadata.json")
    meta["name"] = name
    meta["version"] = "0.2.0"
    meta["changelog"] = {
        "0.2.0": "The default becomes a residual 2.5D denoiser trained like res_unet's; S4's recipe is configs/s4.json",
        "0.1.0": f"{spec['title']} of S4 on the mriae data path, derived from res_unet's configs",
    }
    meta["description"] = spec["description"] + (
        " Trained by default like res_unet as a residual 2.5D denoiser (5 slices in, the centre's noise "
        "predicted); S4's recipe is configs/s4.json. The data are synthetic subjects derived from the public "
        "ICBM152 templates (see docs/README.md)."
    )
    meta["references"] = [meta["references"][0], spec["reference"]]
    out["metadata.json"] = meta
    out["README.md"] = model_card(src, name)
    return out


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts[1:]}


def model_card(src: str | Path, name: str) -> str:
    """Model card: res_unet's sections, with this network's overview, commands and references."""
    spec = S4_BUNDLES[name]
    sec = _sections((Path(src) / "docs" / "README.md").read_text())
    opts = {
        "shallow_res_ae": "`block` (`full_preact` / `original`), `network_def#channels`",
        "skip_cae": "`network_def#channels`",
        "myronenko_ae": "`spatial_dropout`, `network_def#channels`, `network_def#blocks`",
    }[name]
    overview = (
        f"A 2D convolutional autoencoder of S4's family. {spec['description']} "
        f"(S4, section {spec['section']}; `mriae.networks`, 2D or 3D by `spatial_dims`).\n\n"
        f"```\n{spec['diagram']}\n```\n"
        f"Parameters in S4's layer plan, counted as Keras does (batch-norm running statistics included): "
        f"{spec['count_text']}. Config keys: {opts}, `img_size`.\n\n"
        "By default it is trained like res_unet as a residual 2.5D denoiser: 5 neighbouring slices in, the "
        "centre slice's noise predicted and subtracted (`residual`, no sigmoid), Gaussian or Rician noise "
        "of random level, the denoisers' cohort at 1 mm"
        + (
            ", with res_unet's noise-level map, full-resolution stage and no batch norm (`noise_map`, "
            "`full_res`, `norm`). "
            if spec["network_def"]["_target_"].endswith("ResUNetAE")
            else " (the noise-level map and the full-resolution stage are res_unet's; this network keeps its "
            "batch norm). "
        )
        + "**S4's exact recipe** (128x128 single slices, sigmoid reconstruction, S4's corruption) is "
        "`configs/s4.json` merged over train.json.\n\n"
    )
    b = f"bundles/{name}"
    commands = (
        "From the repository root (or from this folder with `--bundle_root .`):\n```bash\n"
        f"python -m monai.bundle run training --config_file {b}/configs/train.json\n"
        f"python -m monai.bundle run training --config_file {b}/configs/train.json --loss_name dssim --l2 1e-5\n"
        + (
            f"python -m monai.bundle run training --config_file {b}/configs/train.json --block original\n"
            if name == "shallow_res_ae"
            else ""
        )
        + f"python -m monai.bundle run evaluating --config_file \"['{b}/configs/train.json','{b}/configs/evaluate.json']\"\n"
        f"python -m monai.bundle run --config_file {b}/configs/inference.json --input_path scan.nii.gz --output_dir out/\n"
        f"python -m monai.bundle verify_metadata --meta_file {b}/configs/metadata.json --filepath bundles/meta_schema.json\n"
        f"python -m monai.bundle verify_net_in_out network_def --meta_file {b}/configs/metadata.json "
        f"--config_file {b}/configs/inference.json\n"
        "python scripts/compare.py --help      # this model beside the rest of S4's family and the baselines\n"
        "```\n\n"
    )
    performance = (
        "See the repository's `docs/results.md` (leaderboard of the S4 family and the classical baselines "
        "on one split, written by `scripts/compare.py`), with S4's IXI figures beside ours.\n\n"
    )
    refs = sec["References"].rstrip("\n") + f"\n- {spec['reference']}\n\n"
    body = {
        "Model overview": overview,
        "Performance": performance,
        "MONAI bundle commands": commands,
        "References": refs,
    }
    out = [f"# {name}: {spec['title']} for brain MRI\n\n"]
    for title, text in sec.items():
        out.append(f"## {title}\n{body.get(title, text)}")
    return "".join(out).rstrip("\n") + "\n"
