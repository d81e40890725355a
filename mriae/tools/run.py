"""``python -m mriae.tools.run BUNDLE_DIR RUN [MONAI ARGS...]``: run a bundle from elsewhere, audited first.

MONAI's own ``python -m monai.bundle run`` executes every ``_target_`` and ``$`` expression of the
configs it is given (GHSA-873f-pvrv-4x83): it cannot refuse a hostile bundle, because by the time a
config is parsed its code has run. This entry point audits the bundle first (``mriae.audit``:
every target and expression against the allowlist, ``logging.conf``, the pickles in its weights,
its sha256 manifest when it has one), refuses it in one line when the audit fails, and only then
hands over to ``monai.bundle run`` with the bundle's own config files:

    RUN = training    configs/train.json
          evaluating  configs/train.json + configs/evaluate.json
          inference   configs/inference.json

Everything after RUN goes to MONAI unchanged (``--input_path scan.nii.gz --output_dir out``,
any config override). ``--trust-bundle`` runs a bundle that fails the audit (a warning is logged).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RUNS", "monai_command", "main"]

RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "training": ("training", ("train.json",)),
    "evaluating": ("evaluating", ("train.json", "evaluate.json")),
    "inference": ("run", ("inference.json",)),
}


def monai_command(bundle: str | Path, run: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``monai.bundle run`` command line for ``run`` of ``bundle`` (its own config files)."""
    from mriae.errors import InputError, MissingFileError

    if run not in RUNS:
        raise InputError(f"unknown run {run!r}; choose one of {', '.join(RUNS)}")
    root = Path(bundle).resolve()
    run_id, files = RUNS[run]
    paths = [root / "configs" / f for f in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"{missing[0]}: not found (a bundle has configs/{'/'.join(files)} for {run})")
    config = str([str(p) for p in paths]) if len(paths) > 1 else str(paths[0])
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config,
            "--bundle_root", str(root), *extra]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mriae.tools.run",
        description="Audit a MONAI bundle, then run it with monai.bundle (training, evaluating or inference).",
    )
    ap.add_argument("bundle", help="the bundle folder (with configs/)")
    ap.add_argument("run", choices=list(RUNS))
    ap.add_argument("--trust-bundle", action="store_true", help="run it even when the audit fails")
    args, extra = ap.parse_known_args(argv)
    from mriae.audit import require_trusted

    cmd = monai_command(args.bundle, args.run, extra)  # before the audit: a missing config is one line too
    require_trusted(args.bundle, trust=args.trust_bundle, flag="--trust-bundle")
    os.execv(sys.executable, cmd)  # MONAI's own process from here on: its exit status is ours
    return 0  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
