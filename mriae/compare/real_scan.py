"""The real-scan benchmark: denoisers on a REAL acquired scan that no model was trained or tuned on.

The demo cohort is made from population-average templates; a model that only looks good on them
has not been shown to work on a scan. Debian's ``mricron-data`` package ships one real subject,
Colin27 (``ch2.nii.gz``: T1, 1 mm, full head; ``ch2bet.nii.gz``: brain only; Holmes et al. 1998,
27 averaged acquisitions of one man, Montreal Neurological Institute; BSD-3-clause per the
package's copyright file). It is kept out of every training and tuning step of this project.

Protocol (``run``): the scan, in its own grid, is scaled to [0, 1] (``robust_scale``: 0.5th
percentile of all voxels, 99.5th of the foreground, clipped) and is the clean reference. Each
condition corrupts it once, seeded (Gaussian or Rician noise of sigma s on the [0, 1] scale, S4's
pixel dropout, blank-out of a 25-voxel cube on the head, blur, or S4's combined corruption), and
clips to [0, 1] (a stored magnitude image has no negative values). Every method gets the
corrupted volume as a user would hand it over (a NIfTI file for the bundles, which run their own
``inference.json``), and is scored against the clean reference over the head's bounding box:
PSNR (data range 1), SSIM (3D, window 7) and, for the clean input, the ratio of foreground mean
intensities. Seconds per volume: the network's own pass (``net_seconds``) and the whole bundle
pipeline with file input and output (``seconds``); the classical baselines run on the CPU.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mriae.config import parse_overrides
from mriae.data.corruption import Corruption
from mriae.errors import MissingFileError

__all__ = [
    "find_scan",
    "reference",
    "CONDITIONS",
    "corrupt",
    "score",
    "run_baseline",
    "run_bundle",
    "SCAN_HINT",
]

SCAN_HINT = (
    "apt-get download mricron-data && dpkg -x mricron-data_*.deb data/mricron "
    "(or: bash scripts/get_real_scan.sh)"
)
_OFF = {"dropout": 0.0, "noise_std": 0.0, "blankout_prob": 0.0, "blur_prob": 0.0, "renormalize": False}
CONDITIONS: dict[str, Corruption | None] = {
    "clean": None,
    "gaussian-0.01": Corruption(**{**_OFF, "noise_std": 0.01}),
    "gaussian-0.03": Corruption(**{**_OFF, "noise_std": 0.03}),
    "gaussian-0.05": Corruption(**{**_OFF, "noise_std": 0.05}),
    "gaussian-0.08": Corruption(**{**_OFF, "noise_std": 0.08}),
    "rician-0.03": Corruption(**{**_OFF, "rician_std": 0.03}),
    "rician-0.05": Corruption(**{**_OFF, "rician_std": 0.05}),
    "dropout-0.03": Corruption(**{**_OFF, "dropout": 0.03}),
    "blankout-25": Corruption(
        **{**_OFF, "blankout_prob": 1.0}, blankout_size=(25, 26), blankout_where="foreground"
    ),
    "blur-1.0": Corruption(**{**_OFF, "blur_prob": 1.0}, blur_sigma=1.0, blur_kernel_size=None),
    "combined": Corruption(),
}


def find_scan(path: str | Path | None = None, name: str = "ch2.nii.gz") -> Path:
    """The real scan: ``path``, else ``$MRIAE_REAL_SCAN``, else mricron-data's file installed
    system-wide or unpacked into ``<repo>/data/mricron``."""
    from mriae import repo_root

    cands = [Path(path)] if path else []
    if os.environ.get("MRIAE_REAL_SCAN"):
        cands.append(Path(os.environ["MRIAE_REAL_SCAN"]))
    cands += [
        Path("/usr/share/mricron/templates") / name,
        repo_root() / "data" / "mricron" / "usr" / "share" / "mricron" / "templates" / name,
    ]
    for c in cands:
        if c.is_file():
            return c
    raise MissingFileError(f"{cands[0]}: real scan not found; get Debian's mricron-data: {SCAN_HINT}")


def reference(scan: str | Path) -> dict:
    """The clean reference: ``{"volume": (X, Y, Z) float32 in [0, 1], "affine", "mask", "box"}``
    (the scan's own grid; ``box`` the head's bounding box as slices, ``mask`` its foreground)."""
    from mriae.io import load_volume
    from mriae.prepare.preprocessing import foreground_mask, robust_scale

    img = load_volume(scan)
    vol, _, _ = robust_scale(img[0], 0.5, 99.5, clip=True)
    vol = vol.numpy().astype(np.float32)
    mask = foreground_mask(vol)
    idx = np.argwhere(mask)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
    return {"volume": vol, "affine": np.asarray(img.affine, dtype=float), "mask": mask, "box": box}


def condition_seed(name: str, seed: int = 0) -> int:
    import zlib

    return seed * 1_000_003 + zlib.crc32(name.encode())


def corrupt(clean: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """The corrupted volume of condition ``name`` (seeded, CPU), clipped to [0, 1]."""
    c = CONDITIONS[name]
    if c is None:
        return clean.copy()
    g = torch.Generator().manual_seed(condition_seed(name, seed))
    x = c(torch.from_numpy(clean)[None, None], generator=g)[0, 0]
    return x.clamp_(0, 1).numpy().astype(np.float32)


def _ssim3d(a: np.ndarray, b: np.ndarray) -> float:
    from monai.metrics import SSIMMetric

    m = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=7, kernel_type="gaussian", kernel_sigma=1.5)
    t = lambda v: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None, None]  # noqa: E731
    return float(m._compute_tensor(t(a), t(b)).mean())


def score(out: np.ndarray, ref: Mapping) -> dict:
    """PSNR / SSIM over the head box, and the foreground mean ratio output / reference."""
    box, clean = ref["box"], ref["volume"]
    o, c = np.asarray(out, dtype=np.float64)[box], clean.astype(np.float64)[box]
    mse = float(np.mean((o - c) ** 2))
    fg = ref["mask"]
    return {
        "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        "ssim": _ssim3d(np.asarray(out)[box], clean[box]),
        "mean_ratio": float(
            np.asarray(out, dtype=np.float64)[fg].mean() / clean.astype(np.float64)[fg].mean()
        ),
    }


def _baseline(name: str, sigma: float | None) -> Callable[[np.ndarray], np.ndarray]:
    from mriae.compare.baselines import estimate_noise_sigma

    if name == "identity":
        return lambda v: v
    if name == "gaussian":
        from scipy.ndimage import gaussian_filter

        return lambda v: gaussian_filter(v, 0.7)
    if name == "nlm":
        from skimage.restoration import denoise_nl_means

        def nlm(v):
            s = sigma or estimate_noise_sigma(v)
            return denoise_nl_means(v, h=0.8 * s, sigma=s, fast_mode=True, patch_size=3, patch_distance=5)

        return nlm
    if name == "bm4d":
        import bm4d

        return lambda v: np.asarray(bm4d.bm4d(v, max(sigma or estimate_noise_sigma(v), 1e-4))).reshape(
            v.shape
        )
    raise ValueError(f"unknown baseline {name!r}: identity, gaussian, nlm, bm4d")


def _known_sigma(condition: str) -> float | None:
    kind, _, level = condition.partition("-")
    return float(level) if kind in ("gaussian", "rician") else None


def run_baseline(name: str, noisy: np.ndarray, condition: str) -> tuple[np.ndarray, dict]:
    """A classical baseline on the corrupted volume (the noise sigma given where the condition
    defines it: the baselines' best case; estimated otherwise)."""
    sigma = _known_sigma(condition)
    fn = _baseline(name, sigma)
    t0 = time.perf_counter()
    out = np.clip(np.asarray(fn(noisy.astype(np.float64)), dtype=np.float32), 0, 1)
    return out, {"seconds": time.perf_counter() - t0, "sigma": sigma}


def run_bundle(
    root: str | Path,
    noisy: np.ndarray,
    affine: np.ndarray,
    overrides: Mapping | None = None,
    config_files: Sequence[str] = ("inference.json",),
    device: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Run a trained bundle's own inference pipeline on ``noisy`` written as a NIfTI file, as a user
    would; returns the output volume and timings (``seconds`` of the pipeline, ``net_seconds`` of
    the network's pass inside it, ``adaptation`` when the bundle adapted itself)."""
    import nibabel as nib
    from monai.bundle import ConfigParser

    root = Path(root).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "scan.nii.gz"
        nib.save(nib.Nifti1Image(noisy.astype(np.float32), affine), src)
        parser = ConfigParser()
        parser.read_config([str(root / "configs" / f) for f in config_files])
        dev = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        known = {k: v for k, v in dict(overrides or {}).items() if k.split("#")[0] in parser.config}
        parser.update(
            {
                "bundle_root": str(root),
                "input_path": str(src),
                "output_dir": str(Path(tmp) / "out"),
                "device": f"$torch.device('{dev}')",
                **known,  # a training variant's overrides that concern inference (context, network)
            }
        )
        parser.get_parsed_content("initialize")  # plan check and weights
        evaluator = parser.get_parsed_content("evaluator")
        inferer = parser.get_parsed_content("inferer")
        timer = _Timer(inferer)
        evaluator.inferer = timer
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        evaluator.run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        out = nib.load(next((Path(tmp) / "out").glob("*_recon.nii.gz"))).get_fdata(dtype=np.float32)
    info = {"seconds": seconds, "net_seconds": timer.seconds}
    if getattr(inferer, "last_adaptation", None):
        info["adaptation"] = inferer.last_adaptation
    return np.clip(out, 0, 1), info


class _Timer:
    """Wraps an inferer and times its calls (CUDA synchronised)."""

    def __init__(self, inferer) -> None:
        self.inferer, self.seconds = inferer, 0.0

    def __call__(self, *args, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.inferer(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return out


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, results: Mapping) -> None:
    from mriae.files import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True))


def _table(results: Mapping, conditions: Sequence[str], methods: Sequence[str], key: str, fmt: str) -> str:
    head = "| method | " + " | ".join(conditions) + " |\n|---|" + "---|" * len(conditions) + "\n"
    rows = []
    for m in methods:
        cells = [fmt.format(results[m][c][key]) if c in results.get(m, {}) else "—" for c in conditions]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def report(results: Mapping, conditions: Sequence[str] | None = None) -> str:
    """Markdown tables: PSNR and SSIM per method and condition, clean-input foreground mean ratio,
    and seconds per volume."""
    methods = list(results)
    conditions = list(conditions or [c for c in CONDITIONS if any(c in results[m] for m in methods)])
    noisy = {c: v for c, v in results.get("identity", {}).items()}
    out = ["PSNR (dB) over the head's bounding box\n", _table(results, conditions, methods, "psnr", "{:.2f}")]
    out += [
        "\nSSIM (3D) over the head's bounding box\n",
        _table(results, conditions, methods, "ssim", "{:.4f}"),
    ]
    secs = []
    for m in methods:
        vals = [v for v in results[m].values() if isinstance(v, Mapping)]
        sec = np.median([v["seconds"] for v in vals]) if vals else float("nan")
        net = [v["net_seconds"] for v in vals if "net_seconds" in v]
        mean = results[m].get("clean", {}).get("mean_ratio")
        secs.append(
            f"| {m} | {sec:.3f} | "
            + (f"{np.median(net):.3f}" if net else "—")
            + " | "
            + (f"{mean:.4f}" if mean is not None else "—")
            + " |"
        )
    out += [
        "\nSeconds per volume (median over conditions; network pass alone where it applies) and the clean "
        "input's foreground mean, output / reference\n",
        "| method | seconds | network seconds | clean mean ratio |\n|---|---|---|---|\n"
        + "\n".join(secs)
        + "\n",
    ]
    if noisy:
        out.append("\n(`identity` is the corrupted input itself.)\n")
    return "".join(out)


def figure(ref: Mapping, volumes: Mapping[str, np.ndarray], path: Path, title: str = "") -> None:
    """Mid-plane (axial and sagittal) views of the volumes, the clean reference and each output's
    residual (output - clean), on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = ref["volume"]
    box = ref["box"]
    names = list(volumes)
    fig, axes = plt.subplots(4, len(names) + 1, figsize=(2.6 * (len(names) + 1), 10.4))
    mid = [(b.start + b.stop) // 2 for b in box]
    views = [lambda v: v[mid[0]].T[::-1], lambda v: v[:, :, mid[2]].T[::-1]]
    for r, view in enumerate(views):
        for c, name in enumerate(names + ["clean"]):
            v = clean if name == "clean" else volumes[name]
            axes[2 * r, c].imshow(view(v), cmap="gray", vmin=0, vmax=1)
            axes[2 * r, c].set_title(name, fontsize=8)
            if name != "clean":
                axes[2 * r + 1, c].imshow(view(v - clean), cmap="RdBu_r", vmin=-0.1, vmax=0.1)
                axes[2 * r + 1, c].set_title(f"{name} - clean", fontsize=7)
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _bundle_spec(spec: str) -> tuple[str, str, dict]:
    """``LABEL=BUNDLE_ROOT[+key=value...]`` (or a bare label: ``bundles/<label>``) -> label, root,
    overrides (values parsed as JSON where they are)."""
    label, _, rest = spec.partition("=")
    root, *over = rest.split("+") if rest else (f"bundles/{label}",)
    return label, root, parse_overrides(over, f"bundle {label}")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python scripts/real_scan.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--scan", help="the real scan (default: mricron-data's ch2.nii.gz)")
    p.add_argument(
        "--bundles",
        nargs="*",
        default=[],
        help="trained bundles as LABEL=BUNDLE_ROOT[+override=value...] (e.g. res_unet=bundles/res_unet, "
        "res_unet-adapt=bundles/res_unet+adapt_seconds=30)",
    )
    p.add_argument("--baselines", nargs="*", default=["identity", "gaussian", "nlm", "bm4d"])
    p.add_argument("--conditions", nargs="*", default=list(CONDITIONS))
    p.add_argument(
        "--out", default="docs/real_scan", help="folder for results.json, the report and the figure"
    )
    p.add_argument("--figure-condition", default="gaussian-0.05")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--trust-bundle",
        action="store_true",
        help="run a bundle even when its audit fails (python -m mriae.audit BUNDLE lists why)",
    )
    args = p.parse_args(argv)
    from mriae.audit import require_trusted
    from mriae.errors import InputError, UserError

    try:
        unknown = [c for c in args.conditions if c not in CONDITIONS]
        if unknown:
            raise InputError(f"unknown conditions {unknown}; choose from {list(CONDITIONS)}")
        bundles = [_bundle_spec(spec) for spec in args.bundles]
        for _, root, _ in bundles:  # a bundle's configs run code: audit each before anything runs
            require_trusted(root, trust=args.trust_bundle, flag="--trust-bundle")
        scan = find_scan(args.scan)
        ref = reference(scan)
        out = Path(args.out)
        results = load_results(out / "results.json")
        shown: dict[str, np.ndarray] = {}
        for cond in args.conditions:
            noisy = corrupt(ref["volume"], cond, args.seed)
            for name in args.baselines:
                vol, info = run_baseline(name, noisy, cond)
                results.setdefault(name, {})[cond] = {**score(vol, ref), **info}
                print(
                    f"{cond:14s} {name:22s} {results[name][cond]['psnr']:6.2f} dB  {info['seconds']:.2f} s",
                    flush=True,
                )
                if cond == args.figure_condition:
                    shown[name] = vol
            for label, root, overrides in bundles:
                vol, info = run_bundle(root, noisy, ref["affine"], overrides, device=args.device)
                results.setdefault(label, {})[cond] = {**score(vol, ref), **info}
                print(
                    f"{cond:14s} {label:22s} {results[label][cond]['psnr']:6.2f} dB  {info['seconds']:.2f} s",
                    flush=True,
                )
                if cond == args.figure_condition:
                    shown[label] = vol
            save_results(out / "results.json", results)
        from mriae.files import atomic_write_text

        atomic_write_text(out / "report.md", report(results))
        if shown:
            figure(
                ref,
                shown,
                out / f"real_scan_{args.figure_condition}.png",
                f"{scan.name}, {args.figure_condition}",
            )
        print(report(results))
    except UserError as e:
        print(f"real_scan: error: {e}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
