"""mriae: the shared library behind the MRI autoencoder / GAN MONAI bundles.

Sub-packages by pipeline stage, earliest first (a stage imports only earlier ones; docs/architecture.md):
``io`` (NIfTI, MGZ, DICOM readers and writers), ``prepare`` (sources, preprocessing, split, demo cohort,
datalist), ``data`` (slice and volume datasets, the device loader, corruption), ``networks`` (one file per
architecture family, checkpoints with their plan), ``figures``, ``train`` (Ignite engine, losses,
adversarial trainers, MLflow tracking, resume), ``evaluate`` (metrics, GAN quality), ``infer``
(inference on a user's scan), ``compare`` (leaderboard, statistics, baselines, real-scan benchmark),
``tools`` (bundle handle, latent check, VAE tools, visualisation, sweep, audited run) and ``share``
(release zip, registry, clinic run). ``errors``, ``files`` and ``audit`` serve every stage.
"""

import logging as _logging
from pathlib import Path as _Path

from mriae.errors import install_excepthook as _install_excepthook

__version__ = "0.1.0"
__all__ = ["repo_root", "default_data_dir", "find_bundle_root", "__version__"]

_install_excepthook()
# MONAI's DICOM reader warns on every construction that the optional GPU decoder (nvImageCodec) is
# absent, once per file and worker: noise on every CPU machine; the CPU decoders are used either way
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)


def repo_root() -> _Path:
    """The checkout (or install prefix) that holds ``bundles/`` next to this package."""
    return _Path(__file__).resolve().parents[1]


def default_data_dir() -> str:
    """Where prepared data lives unless a config says otherwise: ``<repo>/data``."""
    return str(repo_root() / "data")


def find_bundle_root(name: str) -> str:
    """A bundle's root folder: ``.`` when run from inside the bundle (Model Zoo habit),
    ``bundles/<name>`` when run from the repo root, else the copy next to this package."""
    import json

    meta = _Path("configs/metadata.json")
    if meta.is_file():
        try:
            if json.loads(meta.read_text()).get("name") == name:
                return "."
        except ValueError:
            pass
    for cand in (_Path("bundles") / name, repo_root() / "bundles" / name):
        if (cand / "configs").is_dir():
            return str(cand)
    raise FileNotFoundError(
        f"bundle '{name}' not found (looked in ./configs, ./bundles/{name}, {repo_root()})"
    )
