#!/usr/bin/env python
"""Throughput benchmark of the res_unet training data path, inference and prepare (issue: speed).

    python scripts/benchmark.py --out bench.json                 # everything this machine can run
    python scripts/benchmark.py --only pure,ours,standard --batch-size 256 --amp --channels-last

Measured in ONE process on one device, so the figures are ratios of each other:
- pure:     the same network and batch size stepping on inputs already on the device (upper bound);
- ours:     the bundle's real training path built from train.json (device-resident slices sampled by
            index, all four corruptions batched on the device, loss, optimiser step, the bundle's
            trainer, mriae.train.engine.SupervisedTrainer); ours_monai: the same with MONAI's own
            SupervisedTrainer decollating every batch (the bundles' trainer before);
- standard: a standard MONAI pipeline: per-sample dictionary transforms for slicing and corruption
            (MONAI RandGaussianNoised / RandCoarseDropoutd / RandGaussianSmoothd + pixel dropout),
            DataLoader with worker processes, the same network and trainer;
- infer:    a 256x256x150 IXI-like volume through inference.json's pipeline, slice-wise, on the
            input grid; file read and write reported separately;
- prepare:  volumes per second of the prepare step (2 worker processes);
- adapt:    milliseconds per step of the self-supervised adaptation (SURE, ``mriae.infer.adapt``) on that
            volume with noise of sigma 0.03, for each ``--adapt-points`` batch x crop, eager and (on a
            CUDA device) replayed from a CUDA graph, in turn.
Each figure is the median of ``--repeats`` timed runs after a warm-up; pure and ours are timed in
turn and their ratio is the median of the ratios of neighbouring runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
INFER = REPO / "bundles" / "res_unet" / "configs" / "inference.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(fn, repeats: int) -> tuple[float, list[float]]:
    rates = [fn() for _ in range(repeats)]
    return statistics.median(rates), rates


def bundle_parser(args, **overrides):
    from mriae.config import bundle_config

    p = bundle_config(REPO / "bundles" / args.bundle)
    p["bundle_root"] = str(REPO / "bundles" / args.bundle)
    p["dataset_dir"] = args.dataset_dir
    p["use_mlflow"] = False
    p["batch_size"] = args.batch_size
    for key in ("amp", "channels_last", "compile", "compile_mode", "prefetch", "cuda_graph"):  # the bundle's speed options, where it has them
        if key in p.config:
            p[key] = getattr(args, key)
        elif getattr(args, key):
            raise SystemExit(f"bundle {args.bundle} has no '{key}' option")
    p["train#handlers"] = ["@train#history"]  # no validation, progress bar or tracking inside the timing
    p["output_dir"] = tempfile.mkdtemp()
    for k, v in overrides.items():
        p[k] = v
    return p


def time_trainer(trainer, device, iters: int, warmup: int) -> float:
    """Items per second over ``iters`` iterations after ``warmup``, counting each batch's real size
    (an epoch's last batch may be smaller). The clock stops at the last of them (after a device
    synchronisation), before the run's completion handlers (the history's figure and JSON, written
    once per run, are not part of the iteration rate; neither is the pure step's set-up)."""
    from ignite.engine import Events

    marks = {"n": 0}

    def count(engine):
        it = engine.state.iteration
        if it == warmup:
            sync(device)
            marks["t0"] = time.perf_counter()
        elif it > warmup:
            batch = engine.state.batch  # a list of items where the trainer decollates
            marks["n"] += len(batch) if isinstance(batch, list) else int(batch["image"].shape[0])
        if it >= warmup + iters:
            sync(device)
            marks["t1"] = time.perf_counter()
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, count)
    trainer.state.max_epochs = 10_000
    trainer.run()
    sync(device)
    return marks["n"] / (marks["t1"] - marks["t0"])


class _Tiled:
    """Stands in for the dataset of a tiled loader: only its length is read."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


# MONAI's own trainer as the bundles used it before mriae.train.engine.SupervisedTrainer (--only ours_monai)
MONAI_TRAINER = {"train#trainer#_target_": "SupervisedTrainer", "train#trainer#decollate": True}


def build_ours(args, **overrides):
    p = bundle_parser(args, **overrides)
    device = p.get_parsed_content("device")
    trainer = p.get_parsed_content("train#trainer")
    ds = trainer.data_loader.dataset
    if args.repeat > 1:  # tile the demo slices to an IXI-sized epoch (46k slices)
        loader = trainer.data_loader
        g = loader._gather
        if hasattr(g, "items"):  # slice stacks: tile the index table, the volumes stay
            g.items = g.items.repeat(args.repeat, 1)
        else:
            g.images = g.images.repeat(args.repeat, *[1] * (g.images.ndim - 1))
        loader.dataset = _Tiled(len(ds) * args.repeat)
    return trainer, device, p


def pure_step(args):
    """One training step of the bundle's own network, optimiser, loss and inferer (autocast when the
    bundle's ``amp`` is on) on a fixed batch already on the device, shaped like the real batches."""
    p = bundle_parser(args)
    device = p.get_parsed_content("device")
    net, opt, loss_fn, inferer = (
        p.get_parsed_content(k) for k in ("network", "optimizer", "loss", "train#inferer")
    )
    ds = p.get_parsed_content("train#dataset")
    shape = (args.batch_size, *ds[0]["image"].shape)  # no loader needed
    if getattr(ds, "crop", None):  # slice stacks cropped at random: the batches are crops
        shape = (*shape[:-2], ds.crop, ds.crop)
    x = torch.rand(shape, device=device)
    if args.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.rand((shape[0], 1, *shape[2:]), device=device)  # the (centre) clean slice
    step_net = torch.compile(net, dynamic=False, mode=args.compile_mode) if args.compile else net
    net.train()

    def step(inputs=x, target=y):
        opt.zero_grad(set_to_none=True)
        loss_fn(inferer(inputs, step_net), target).backward()
        opt.step()

    return step, device, shape[0]


def pure_runner(args, fed: bool = False):
    """A callable timing ``args.iters`` pure steps (items per second), after a warm-up: on one fixed
    batch, or with ``fed`` on the batches of the bundle's own training loader (gather, augmentation,
    corruption; its CUDA graph where the bundle has one), which with pure and ours splits ours' cost
    into the data path's and the trainer's."""
    step, device, b = pure_step(args)
    if fed:
        loader = build_ours(args)[0].data_loader

        def batches():
            while True:
                for batch in loader:
                    yield batch["image"], batch["label"]

        source = batches()
    else:
        source = None

    def one() -> int:
        if source is None:
            step()
            return b
        x, y = next(source)
        step(x, y)
        return int(x.shape[0])

    for _ in range(args.warmup):
        one()

    def run():
        sync(device)
        t = time.perf_counter()
        n = sum(one() for _ in range(args.iters))
        sync(device)
        return n / (time.perf_counter() - t)

    return run


def bench_pure(args) -> tuple[float, list[float]]:
    return median_rate(pure_runner(args), args.repeats)


def bench_pure_and_ours(args, variants=({},), pure_loader: bool = False):
    """Pure and ours (one run per bundle-override dict of ``variants``) timed in turn,
    ``args.repeats`` times each: a slower spell of the machine (a busy neighbour, a clock change)
    then hits all alike, and each ratio compares neighbours. With ``pure_loader`` the pure step fed
    by the bundle's loader is timed in the same turns (returned third, else None)."""
    run_pure = pure_runner(args)
    run_fed = pure_runner(args, fed=True) if pure_loader else None
    pure, ours, fed = [], [[] for _ in variants], []
    for _ in range(args.repeats):
        pure.append(run_pure())
        if run_fed is not None:
            fed.append(run_fed())
        for runs, over in zip(ours, variants):
            runs.append(time_ours(args, **over))
    return pure, ours, (fed if pure_loader else None)


def time_ours(args, **overrides) -> float:
    """Items per second of one freshly built bundle trainer (``args.iters`` after ``args.warmup``)."""
    trainer, device, _ = build_ours(args, **overrides)
    return time_trainer(trainer, device, args.iters, args.warmup)


def bench_ours(args):
    rates = [time_ours(args) for _ in range(args.repeats)]
    return statistics.median(rates), rates


def standard_pipeline(args, device, workers: int):
    """A standard MONAI pipeline: per-sample dict transforms on the CPU, DataLoader with workers."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.transforms import (
        Compose,
        CopyItemsd,
        Lambdad,
        RandCoarseDropoutd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        ScaleIntensityd,
    )

    from mriae.data.slices import SliceDataset
    from mriae.prepare.pipeline import ensure_datalist

    datalist = ensure_datalist(args.dataset_dir)
    ds = SliceDataset(datalist, "training")
    cache = {r["subject"]: np.load(Path(datalist).parent / r["image"]) for r in ds.records}
    items = [{"subject": s, "slice": z} for s, z in ds.index] * args.repeat

    def pixel_dropout(x):
        rate = np.random.uniform(0, 0.05)
        return x * (np.random.rand(*x.shape) >= rate) / (1 - rate)

    transform = Compose([
        Lambdad("subject", lambda s: None, overwrite=False),
        lambda d: {"label": torch.from_numpy(cache[d["subject"]][d["slice"]].astype(np.float32))[None]},
        CopyItemsd("label", names="image"),
        Lambdad("image", pixel_dropout),
        RandGaussianNoised("image", prob=1.0, std=0.04, sample_std=True),
        RandCoarseDropoutd("image", holes=1, spatial_size=10, max_spatial_size=39, fill_value=0, prob=0.2),
        RandGaussianSmoothd("image", sigma_x=(0.6, 0.6), sigma_y=(0.6, 0.6), prob=0.1),
        ScaleIntensityd("image"),
    ])
    loader = DataLoader(Dataset(items, transform), batch_size=args.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False, drop_last=True)
    p = bundle_parser(args)  # the same network, optimiser, loss and autocast inferer as ours
    trainer = SupervisedTrainer(
        device=device, max_epochs=1, train_data_loader=loader, network=p.get_parsed_content("network"),
        optimizer=p.get_parsed_content("optimizer"), loss_function=p.get_parsed_content("loss"),
        inferer=p.get_parsed_content("train#inferer"), decollate=False, optim_set_to_none=True,
    )
    return trainer


def bench_standard(args, device, workers: int):
    rates = []
    for _ in range(args.repeats):
        trainer = standard_pipeline(args, device, workers)
        rates.append(time_trainer(trainer, device, args.iters_standard, min(args.warmup, 5)))
    return statistics.median(rates), rates


def ixi_like_volume(path: Path) -> None:
    """A 256x256x150 volume on IXI's grid (0.94 x 0.94 x 1.2 mm, PSR) resampled from the 2009a template."""
    import nibabel as nib
    from scipy.ndimage import affine_transform

    from mriae.prepare.cohort import locate_template

    src = nib.load(locate_template("icbm152_2009a_t1"))
    ax = nib.orientations.axcodes2ornt(("P", "S", "R"))
    zooms = np.array([0.9375, 0.9375, 1.2])
    shape = (256, 256, 150)
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for i, (axis, flip) in enumerate(ax):
        aff[int(axis), i] = flip * zooms[i]
    centre = src.affine @ np.r_[(np.array(src.shape) - 1) / 2, 1]
    aff[:3, 3] = centre[:3] - aff[:3, :3] @ ((np.array(shape) - 1) / 2)
    m = np.linalg.inv(src.affine) @ aff
    data = affine_transform(src.get_fdata(dtype=np.float32), m[:3, :3], m[:3, 3], output_shape=shape, order=1)
    nib.save(nib.Nifti1Image((data * 4).astype(np.int16), aff), str(path))


def bench_infer(args, device, threads: int | None = None) -> dict:
    from monai.bundle import ConfigParser

    import mriae.train.engine

    if threads:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp())
    vol = tmp / "ixi_like.nii.gz"
    ixi_like_volume(vol)
    p = ConfigParser()
    p.read_config(str(INFER))
    p["bundle_root"] = str(REPO / "bundles" / "res_unet")
    p["device"] = f"$torch.device('{device}')"
    p["input_path"] = str(vol)
    p["output_dir"] = str(tmp / "out")
    net = p.get_parsed_content("network")
    ckpt = Path(p.get_parsed_content("ckpt_path"))
    if ckpt.is_file():
        mriae.networks.checkpoint.load_weights(net, ckpt)
    net.eval()
    pre, inferer, post = (p.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
    load, rest_pre = pre.transforms[0], pre.transforms[1:]
    from monai.transforms import Compose, SaveImaged

    from mriae.io import SaveLikeInputd

    writers = (SaveImaged, SaveLikeInputd)
    save = [t for t in post.transforms if isinstance(t, writers)]
    compute_post = Compose([t for t in post.transforms if not isinstance(t, writers)])
    times = {"read": [], "compute": [], "write": []}
    for i in range(args.warmup_infer + args.repeats):
        t0 = time.perf_counter()
        d = load({"image": str(vol)})
        t1 = time.perf_counter()
        for t in rest_pre:
            d = t(d)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            d["pred"] = inferer(d["image"][None], net)[0].float()
        d = compute_post(d)
        sync(device)
        t2 = time.perf_counter()
        for s in save:
            d = s(d)
        t3 = time.perf_counter()
        if i >= args.warmup_infer:
            times["read"].append(t1 - t0)
            times["compute"].append(t2 - t1)
            times["write"].append(t3 - t2)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["shape"] = [256, 256, 150]
    out["checkpoint"] = ckpt.is_file()
    return out


def bench_adapt(args, device) -> dict:
    """Milliseconds per SURE adaptation step of inference.json's network on a noisy IXI-sized volume,
    per batch x crop, eager and graphed (CUDA only), each the median of ``--repeats`` runs in turn."""
    from monai.bundle import ConfigParser

    from mriae.infer.adapt import adapt_to_volume

    tmp = Path(tempfile.mkdtemp())
    ixi_like_volume(tmp / "v.nii.gz")
    import nibabel as nib

    v = torch.from_numpy(nib.load(str(tmp / "v.nii.gz")).get_fdata(dtype=np.float32)).to(device)
    v = (v / torch.quantile(v[v > 0][::97], 0.995)).clamp(0, 1)
    g = torch.Generator(device=device).manual_seed(0)
    noisy = (v + 0.03 * torch.randn(v.shape, generator=g, device=device)).clamp(0, 1)
    p = ConfigParser()
    p.read_config(str(INFER))
    p["device"] = f"$torch.device('{device}')"
    net = p.get_parsed_content("network").eval()
    context = int(p["context"])
    modes = [False, True] if device.type == "cuda" else [False]
    out: dict = {"steps": args.adapt_steps, "shape": [256, 256, 150]}
    variants = args.adapt_variants or []
    for point in args.adapt_points.split(","):
        b, c = (int(x) for x in point.split("x"))
        runs: dict = {str(m): [] for m in modes}
        for _ in range(args.repeats):
            for m in modes:
                _, rec = adapt_to_volume(net, noisy, context, (0, 1, 2), float("inf"), batch_size=b, crop=c,
                                         max_steps=args.adapt_steps, sigma=0.03, cuda_graph=m)
                sync(device)
                runs[str(m)].append(1000 * rec["seconds"] / rec["steps"])
                assert rec["cuda_graph"] == m, rec
        out[point] = {("graph" if m else "eager") + "_ms_per_step": statistics.median(runs[str(m)]) for m in modes}
        out[point]["runs"] = runs
        if len(modes) == 2:
            out[point]["eager_over_graph"] = out[point]["eager_ms_per_step"] / out[point]["graph_ms_per_step"]
        if variants:  # other adaptation options, graphed where the device allows, each against the others in turn
            times: dict = {json.dumps(v, sort_keys=True): [] for v in variants}
            for _ in range(args.repeats):
                for v in variants:
                    kw = dict(v)
                    model = net
                    if kw.pop("channels_last", False):
                        model = copy.deepcopy(net).to(memory_format=torch.channels_last)
                    _, rec = adapt_to_volume(model, noisy, context, (0, 1, 2), float("inf"), batch_size=b, crop=c,
                                             max_steps=args.adapt_steps, sigma=0.03, cuda_graph=modes[-1], **kw)
                    sync(device)
                    times[json.dumps(v, sort_keys=True)].append(1000 * rec["seconds"] / rec["steps"])
            out[point]["variants_ms_per_step"] = {k: statistics.median(t) for k, t in times.items()}
            out[point]["variant_runs"] = times
    return out


def bench_prepare(args) -> dict:
    from mriae.prepare.pipeline import prepare
    from mriae.prepare.preprocessing import PreprocessConfig
    from mriae.prepare.sources import list_subjects

    cohort = Path(args.dataset_dir) / "cohort"
    subjects = list_subjects("demo", cohort)
    out = Path(tempfile.mkdtemp()) / "p"
    t = time.perf_counter()
    prepare(subjects, out, PreprocessConfig(), workers=2)
    dt = time.perf_counter() - t
    return {"volumes": len(subjects), "seconds": dt, "volumes_per_s": len(subjects) / dt}


def _json_list(text: str) -> list:
    """``--adapt-variants``: a JSON list of objects, or a one-line argparse error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise argparse.ArgumentTypeError("a JSON list of objects, e.g. '[{\"anchor\": \"crop\"}]'")
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmark.json")
    ap.add_argument("--only", default="pure,ours,standard,infer,prepare",
                    help="comma list of pure, ours, ours_monai (with pure and ours: ours with MONAI's own decollating trainer), pure_loader (with pure and ours: the pure step fed by the bundle's loader), ours_graph (ours again with --cuda-graph toggled), standard, infer, prepare")
    ap.add_argument("--dataset-dir", default=str(REPO / "data" / "demo"))
    ap.add_argument("--bundle", default="res_unet", help="bundle whose training path is measured (res_unet, cae_3d, ...)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode for pure and ours, e.g. reduce-overhead")
    ap.add_argument("--prefetch", type=int, default=0, help="batches the loader prepares ahead in a thread")
    ap.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                    help="the loader's gather + corruption as one CUDA graph (default: on with CUDA, as the bundles)")
    ap.add_argument("--adapt-steps", type=int, default=200, help="SURE steps per timed adaptation (--only adapt)")
    ap.add_argument("--adapt-points", default="8x96,32x160", help="batch x crop of the adaptation steps timed")
    ap.add_argument("--adapt-variants", default=None, type=_json_list,
                    help='JSON list of adapt_to_volume keyword sets to time too at each point (graphed on CUDA), e.g. '
                         '\'[{"anchor": "crop"}, {"anchor": "volume"}]\'; "channels_last": true runs the network in '
                         'that memory format')
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--iters-standard", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--warmup-infer", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=24, help="tile the demo training slices (24 -> IXI-sized epoch)")
    ap.add_argument("--workers", default=str(min(8, os.cpu_count() or 1)),
                    help="DataLoader workers of the standard pipeline; a comma list measures each (e.g. 2,4,8,16)")
    ap.add_argument("--cpu-threads-infer", type=int, default=2,
                    help="threads of the CPU inference figure taken beside a GPU's (0: none)")
    ap.add_argument("--profile", help="write a torch.profiler table of the 'ours' loop to this file")
    ap.add_argument("--host-profile", help="write cProfile tables (host time by function) of pure and ours to this file")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if args.cuda_graph is None:
        args.cuda_graph = torch.cuda.is_available()
    if (args.cuda_graph or "ours_graph" in only) and not torch.cuda.is_available():
        raise SystemExit("--cuda-graph / --only ours_graph need a CUDA device")
    if args.bundle != "res_unet" and only & {"standard", "infer"}:
        raise SystemExit("--only standard / infer measure res_unet; use --only pure,ours with --bundle " + args.bundle)
    from mriae.prepare.pipeline import ensure_datalist
    from mriae.train.engine import seed_everything

    seed_everything(0)
    from mriae.config import bundle_config

    train = bundle_config(REPO / "bundles" / args.bundle)
    ensure_datalist(args.dataset_dir, train.get("plan"))  # the data at the bundle's own plan
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
                 "torch": torch.__version__, "bundle": args.bundle,
                 "unit": "volumes" if args.bundle.endswith("3d") else "slices", "batch_size": args.batch_size, "amp_bf16": args.amp,
                 "channels_last": args.channels_last, "compile": args.compile, "compile_mode": args.compile_mode,
                 "prefetch": args.prefetch, "cuda_graph": args.cuda_graph}
    if {"pure", "ours"} <= only:  # in turn, ratio of neighbours
        names = ["ours"] + (["ours_monai"] if "ours_monai" in only else [])
        res["pure_runs"], runs, fed = bench_pure_and_ours(
            args, [{}, MONAI_TRAINER][: len(names)], pure_loader="pure_loader" in only
        )
        res["pure_slices_per_s"] = statistics.median(res["pure_runs"])
        if fed is not None:
            res["pure_loader_runs"] = fed
            res["pure_loader_slices_per_s"] = statistics.median(fed)
            res["pure_loader_over_pure"] = statistics.median(f / p for f, p in zip(fed, res["pure_runs"]))
        for name, r in zip(names, runs):
            res[f"{name}_runs"] = r
            res[f"{name}_slices_per_s"] = statistics.median(r)
            res[f"{name}_over_pure_runs"] = [o / p for o, p in zip(r, res["pure_runs"])]
            res[f"{name}_over_pure"] = statistics.median(res[f"{name}_over_pure_runs"])
    elif "pure" in only:
        res["pure_slices_per_s"], res["pure_runs"] = bench_pure(args)
    elif "ours" in only:
        res["ours_slices_per_s"], res["ours_runs"] = bench_ours(args)
    if "ours_graph" in only:  # the same, with the loader's CUDA graph toggled: both in this one process
        import copy

        other = copy.copy(args)
        other.cuda_graph = not args.cuda_graph
        res["ours_toggled_cuda_graph"] = other.cuda_graph
        res["ours_toggled_slices_per_s"], res["ours_toggled_runs"] = bench_ours(other)
    if "standard" in only:
        res["standard"] = {}
        for w in (int(v) for v in str(args.workers).split(",")):
            rate, runs = bench_standard(args, device, w)
            res["standard"][str(w)] = {"slices_per_s": rate, "runs": runs}
            if "ours" in only:
                res["standard"][str(w)]["ours_over_standard"] = res["ours_slices_per_s"] / rate
    if "pure" in only and "ours_graph" in only:
        res["ours_toggled_over_pure"] = res["ours_toggled_slices_per_s"] / res["pure_slices_per_s"]
    if "infer" in only:
        res["infer"] = {device.type: bench_infer(args, device)}
        if device.type == "cuda" and args.cpu_threads_infer > 0:
            res["infer"]["cpu"] = bench_infer(args, torch.device("cpu"), threads=args.cpu_threads_infer)
    if "prepare" in only:
        res["prepare"] = bench_prepare(args)
    if "adapt" in only:
        res["adapt"] = bench_adapt(args, device)
    if args.profile:  # what the GPU (or CPU) does in the pure step and in ours, same iterations
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        step, _, _ = pure_step(args)
        for _ in range(10):
            step()
        sync(device)
        with profile(activities=acts) as prof_pure:
            for _ in range(30):
                step()
            sync(device)
        trainer, dev, _ = build_ours(args)
        with profile(activities=acts) as prof_ours:
            time_trainer(trainer, dev, 30, 10)  # 40 iterations, the first 10 are warm-up
        Path(args.profile).write_text(
            "# pure step, 30 iterations\n" + prof_pure.key_averages().table(sort_by=key, row_limit=40)
            + "\n\n# ours (bundle trainer), 40 iterations (10 warm-up)\n"
            + prof_ours.key_averages().table(sort_by=key, row_limit=40)
        )
    if args.host_profile:  # where the host's time goes: the step is bound by it on a fast GPU
        Path(args.host_profile).write_text(host_profile(args))
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


def host_profile(args, iters: int = 100) -> str:
    """cProfile tables (by own time) of ``iters`` pure steps and of ``iters`` iterations of ours."""
    import cProfile
    import io
    import pstats

    def table(prof, title):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(45)
        return f"# {title}\n" + out.getvalue()

    step, device, _ = pure_step(args)
    for _ in range(args.warmup):
        step()
    sync(device)
    prof_pure = cProfile.Profile()
    prof_pure.enable()
    for _ in range(iters):
        step()
    sync(device)
    prof_pure.disable()
    from ignite.engine import Events

    trainer, dev, _ = build_ours(args)
    prof_ours = cProfile.Profile()
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.warmup), lambda _: prof_ours.enable())
    time_trainer(trainer, dev, iters, args.warmup)
    prof_ours.disable()
    return table(prof_pure, f"pure step, {iters} steps") + "\n\n" + table(prof_ours, f"ours, {iters} iterations")


if __name__ == "__main__":
    sys.exit(main())
