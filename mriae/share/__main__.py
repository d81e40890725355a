"""``python -m mriae.share pack | verify | fetch | run``: release a bundle, check it, get it from
MLflow, run it on DICOM studies.

    python -m mriae.share pack bundles/res_unet --out dist/ [--tracking-uri URI] [--alias A] [--no-register]
    python -m mriae.share verify dist/res_unet_0.2.0.zip [--input scan.nii.gz]
    python -m mriae.share fetch --model res_unet --version 3 | --alias production [--out dist/]
    python -m mriae.share run dist/res_unet_0.2.0.zip --input STUDY_DIR --output OUT [--identity research]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mriae.errors import UserError


def _pack(args) -> int:
    from mriae.share.pack import pack

    res = pack(args.bundle, args.out, exports=args.exports, trust=args.trust_bundle)
    print(f"{res.path}: {res.name} {res.version}, sha256 {res.sha256}")
    for kind, how in res.exports.items():
        print(f"  model.{kind}: {how}")
    if not args.no_register:
        from mriae.share.registry import publish

        info = publish(
            res.path,
            tracking_uri=args.tracking_uri,
            model_name=args.model_name,
            training_run=res.meta.get("run_name"),
            metrics=res.eval_metrics,
            tags=res.plan_tags(),
            alias=args.alias,
        )
        where = "the training run" if info.get("training_run_found") else "a release run (training run not on this server)"
        print(f"  registered: model {info['model_name']} version {info['version']}, logged to {where} {info['run_id']}")
    return 0


def _verify(args) -> int:
    from mriae.share.verify import verify

    checks = verify(args.release, input_path=args.input)
    for c in checks:
        print(c.line())
    bad = [c for c in checks if not c.ok]
    print(f"verify {args.release}: {'OK' if not bad else f'FAILED ({len(bad)} of {len(checks)} checks)'}")
    return 1 if bad else 0


def _fetch(args) -> int:
    from mriae.share.registry import fetch

    path = fetch(args.model, args.version, alias=args.alias, tracking_uri=args.tracking_uri, out_dir=args.out)
    print(path)
    return 0


def _run(args) -> int:
    from mriae.share.clinic import run_release, summary_line

    results = run_release(
        args.release,
        args.input,
        args.output,
        identity=args.identity,
        series_uid=args.series_uid,
        batch=args.batch,
        device=args.device,
        trust=args.trust_bundle,
        report=not args.no_report,
        workers=args.workers,
    )
    for r in results:
        print(f"{r.output}: {r.series} {'x'.join(map(str, r.shape))}" + "".join(f"\n  warning: {w}" for w in r.warnings))
    print(summary_line(results))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mriae.share", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="release a trained, evaluated bundle as a Model Zoo zip")
    p.add_argument("bundle")
    p.add_argument("--out", default="dist")
    p.add_argument("--exports", nargs="*", default=["ts", "pt2"], help="model.ts and/or model.pt2")
    p.add_argument("--tracking-uri", default=None, help="MLflow server (default: MLFLOW_TRACKING_URI or ./mlruns)")
    p.add_argument("--model-name", default=None, help="registered model name (default: the bundle's)")
    p.add_argument("--alias", default=None, help="also point this registry alias at the new version")
    p.add_argument("--no-register", action="store_true", help="write the zip only")
    p.add_argument("--trust-bundle", action="store_true")
    p.set_defaults(fn=_pack)
    p = sub.add_parser("verify", help="check a release like the Model Zoo's CI")
    p.add_argument("release", help="a release zip or an unpacked bundle folder")
    p.add_argument("--input", default=None, help="a volume to run inference on (default: a synthetic one)")
    p.set_defaults(fn=_verify)
    p = sub.add_parser("fetch", help="download a registered release from MLflow")
    p.add_argument("--model", required=True)
    p.add_argument("--version", default=None, help="a version number or 'latest' (default: latest)")
    p.add_argument("--alias", default=None)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--out", default=".")
    p.set_defaults(fn=_fetch)
    p = sub.add_parser("run", help="run a release on a DICOM study: DICOM, NIfTI and an HTML report out")
    p.add_argument("release")
    p.add_argument("--input", required=True, help="a DICOM study folder (with --batch: a folder of them)")
    p.add_argument("--output", required=True, help="a new (or empty) folder for the results")
    p.add_argument("--identity", choices=["clinic", "research"], default="clinic",
                   help="clinic: keep identifiers (files back into the study); research: PS3.15 de-identification")
    p.add_argument("--series-uid", default=None, help="the series to run on when several fit")
    p.add_argument("--batch", action="store_true", help="every sub-folder of --input is one study")
    p.add_argument("--device", default=None)
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="processes writing the studies' outputs (default: by CPUs)")
    p.add_argument("--trust-bundle", action="store_true")
    p.set_defaults(fn=_run)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except UserError as e:
        print(f"mriae.share {args.cmd}: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
