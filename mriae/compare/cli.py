"""Command line of the compare step (``python scripts/compare.py``); the logic is in
``mriae.compare``, ``mriae.compare.stats``, ``mriae.compare.baselines`` and ``mriae.compare.report``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mriae import repo_root
from mriae.config import bundle_config, parse_overrides
from mriae.data.corruption import CORRUPTION_SEED, SEVERITIES, conditions
from mriae.compare.baselines import make_baselines
from mriae.compare.run import (
    S4_MODELS,
    evaluate,
    load_network,
    pairwise,
    parse_spec,
    summarize,
    train_model,
)
from mriae.compare.report import grid_figure, leaderboard, leaderboard_markdown, pvalue_figure, write_results_block

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__)
    p.add_argument(
        "--models", nargs="+", default=S4_MODELS, help="bundle[:key=value,...] (default: S4 family)"
    )
    p.add_argument("--dataset-dir", default=str(repo_root() / "data" / "demo"))
    p.add_argument("--output", default=str(repo_root() / "data" / "compare"))
    p.add_argument("--epochs", type=int, help="--train#trainer#max_epochs for every bundle")
    p.add_argument("--max-slices-per-subject", type=int, help="training / validation slices per subject")
    p.add_argument("--test-max-slices-per-subject", type=int, help="test slices per subject (default all)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="for every bundle")
    p.add_argument(
        "--seed", type=int, default=CORRUPTION_SEED,
        help="seed of the corrupted test slices (the one validation and evaluate.json use) and of the bootstrap",
    )
    p.add_argument("--jobs", type=int, default=1, help="bundles trained at the same time (one process each)")
    p.add_argument("--retrain", action="store_true", help="train even when a checkpoint exists")
    p.add_argument("--in-place", action="store_true", help="use bundles/<name>/models/model.pt as trained")
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train (or reuse) the bundles, then stop (evaluate in a later run)",
    )
    p.add_argument("--kinds", nargs="+", default=list(SEVERITIES), choices=list(SEVERITIES))
    p.add_argument("--levels", nargs="+", type=int, default=[0, 1, 2], choices=[0, 1, 2])
    p.add_argument("--baselines", nargs="+", default=["identity", "gaussian", "nlm", "bm4d"])
    p.add_argument("--nlm-mode", default="2d", choices=["2d", "3d"])
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--note", default="", help="a sentence for the leaderboard's header (e.g. the budget)")
    p.add_argument("--results-md", default=str(repo_root() / "docs" / "results.md"), help="'none' to skip")
    p.add_argument(
        "--no-mlflow", action="store_true", help="no MLflow at all (bundles get --use_mlflow False)"
    )
    p.add_argument("--tracking-uri", default=None, help="default: sqlite mlruns/mlflow.db in the repo")
    p.add_argument("--experiment", default="s4_compare")
    p.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    return p


def _entry_info(spec, root: Path, net: torch.nn.Module, cli_over: dict) -> dict:
    from mriae.networks import count_parameters

    cfg = bundle_config(root, recipe=spec.recipe)
    over = {**cli_over, **spec.overrides}
    return {
        "kind": "model",
        "bundle": spec.bundle,
        "recipe": spec.recipe or "",
        "parameters": count_parameters(net),
        "loss": str(over.get("loss_name", cfg.get("loss_name"))),
        "l2": str(over.get("l2", cfg.get("l2"))) if float(over.get("l2", cfg.get("l2")) or 0) else "",
        "overrides": json.dumps(spec.overrides),
        "checkpoint": str(root / "models" / "model.pt"),
    }


def _log_mlflow(args, out: Path, entries: dict, summary, params: dict) -> str:
    import mlflow

    from mriae.train.tracking import default_tracking_uri, flatten

    mlflow.set_tracking_uri(args.tracking_uri or default_tracking_uri())
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run(run_name=f"compare-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.log_params({re.sub(r"[^\w\-. :/]", ".", k): v for k, v in flatten(params).items()})
        for f in ("leaderboard.md", "leaderboard.csv", "summary.csv", "pairwise.csv", "per_slice.csv"):
            mlflow.log_artifact(str(out / f))
        mlflow.log_artifacts(str(out / "figures"), "figures")
        for name, info in entries.items():
            with mlflow.start_run(run_name=name, nested=True):
                mlflow.log_params({re.sub(r"[^\w\-. :/]", ".", k): str(v) for k, v in info.items()})
                s = summary[summary.entry == name]
                mlflow.log_metrics({f"{r.condition}_{r.metric}": float(r["mean"]) for _, r in s.iterrows()})
        return parent.info.run_id


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from mriae.data.slices import SliceDataset
    from mriae.prepare.pipeline import ensure_datalist

    t0 = time.time()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    cli_over = parse_overrides(args.override, "--override")
    if args.epochs:
        cli_over["train#trainer#max_epochs"] = args.epochs
    if args.max_slices_per_subject:
        cli_over["max_slices_per_subject"] = args.max_slices_per_subject
    if args.batch_size:
        cli_over["batch_size"] = args.batch_size
    datalist = ensure_datalist(args.dataset_dir)
    specs = [parse_spec(m) for m in args.models]
    if not args.no_mlflow:  # create the store once, before parallel trainings open it
        from mlflow.tracking import MlflowClient

        from mriae.train.tracking import default_tracking_uri

        args.tracking_uri = args.tracking_uri or default_tracking_uri()
        MlflowClient(tracking_uri=args.tracking_uri).search_experiments()
    nets, entries = {}, {}

    def _train(spec):
        return train_model(
            spec, out, str(Path(datalist).parent), cli_over, not args.no_mlflow, args.tracking_uri,
            retrain=args.retrain, in_place=args.in_place,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each training is its own process
        trained = list(pool.map(_train, specs))
    for spec, info in zip(specs, trained):
        print(
            f"[compare] {spec.label}: {'trained' if info['trained'] else 'reused'} {info['seconds']:.0f} s",
            flush=True,
        )
    if args.train_only:
        return {"output": str(out), "trained": trained, "run_id": None}
    ds = SliceDataset(datalist, "test", max_slices_per_subject=args.test_max_slices_per_subject)
    for spec, info in zip(specs, trained):
        net = load_network(info["root"], spec.overrides, device, test_set=ds, recipe=spec.recipe)
        nets[spec.label] = net
        entries[spec.label] = {
            **_entry_info(spec, Path(info["root"]), net, cli_over),
            "train_seconds": info["seconds"],
        }
        if info.get("run_name"):
            entries[spec.label]["training_run_name"] = info["run_name"]
    baselines = make_baselines(args.baselines, nlm_mode=args.nlm_mode)
    for n, b in baselines.items():
        entries[n] = {"kind": "baseline", "note": b.note}
    subjects = [s for s, _ in ds.index]
    grid_i = next(i for i, (s, z) in enumerate(ds.index) if z == ds.middle_slices()[subjects[0]])
    conds = conditions(args.kinds, args.levels)
    t_eval = time.time()
    per_slice, grid = evaluate(
        nets, baselines, ds.images, subjects, [z for _, z in ds.index], conds, args.seed, device, grid_i
    )
    t_eval = time.time() - t_eval
    summary = summarize(per_slice, n_boot=args.n_boot, seed=args.seed)
    tests = pairwise(per_slice)
    lb = leaderboard(summary, entries)
    per_slice.to_csv(out / "per_slice.csv", index=False)
    per_slice.groupby(["entry", "condition", "subject"], sort=False).mean(numeric_only=True).drop(
        columns="slice"
    ).reset_index().to_csv(out / "per_subject.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    tests.to_csv(out / "pairwise.csv", index=False)
    lb.to_csv(out / "leaderboard.csv", index=False)
    figs = {"pvalues": out / "figures" / "pvalues.png", "grid": out / "figures" / "grid.png"}
    pvalue_figure(tests, figs["pvalues"])
    show = [
        c
        for c in conds
        if c in ("clean", "combined") or c.endswith(tuple(f"-{v[1]}" for v in SEVERITIES.values()))
    ]
    grid_figure(
        {c: grid[c] for c in show or conds}, figs["grid"], f"{subjects[grid_i]}, slice {ds.index[grid_i][1]}"
    )
    n_subj, n_sl = len(set(subjects)), len(subjects)
    shown = list(argv if argv is not None else [])
    if "--note" in shown:  # the note is printed below the command, not inside it
        del shown[shown.index("--note") : shown.index("--note") + 2]
    cmd = shlex.join(["python", "scripts/compare.py", *shown])
    header = (
        f"## S4 family compare ({time.strftime('%Y-%m-%d')})\n\n"
        f"Command: `{cmd}`; machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {device}, "
        f"torch {torch.__version__}; data `{Path(datalist).parent}`, test {n_subj} subjects / {n_sl} slices; "
        f"seed {args.seed}; {len(conds)} conditions (the same corrupted slices for every entry); 95 % CI by "
        f"bootstrapping subjects ({args.n_boot} resamples). Files: `{out}` (per_slice, per_subject, summary, "
        "pairwise and leaderboard CSVs, figures)."
    ) + (f"\n\n{args.note}" if args.note else "")
    md_figs = {}
    results_md = None if args.results_md.lower() == "none" else Path(args.results_md)
    if results_md is not None:
        fig_dir = results_md.parent / "figures"
        for k, f in figs.items():
            dst = fig_dir / f"compare_{k}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
            md_figs[k] = f"figures/compare_{k}.png"
    md = leaderboard_markdown(lb, summary, tests, header, md_figs)
    (out / "leaderboard.md").write_text(md)
    if results_md is not None:
        write_results_block(results_md, md)
    params = {"models": args.models, "overrides": cli_over, "seed": args.seed, "conditions": list(conds),
              "baselines": args.baselines, "nlm_mode": args.nlm_mode, "test_slices": n_sl, "test_subjects": n_subj,
              "datalist": str(datalist)}  # fmt: skip
    run_id = None if args.no_mlflow else _log_mlflow(args, out, entries, summary, params)
    res = {"output": str(out), "run_id": run_id, "seconds": time.time() - t0, "eval_seconds": t_eval,
           "trained": trained, "entries": list(entries)}  # fmt: skip
    (out / "compare.json").write_text(json.dumps(res, indent=2, default=str))
    print(md, flush=True)
    return res
