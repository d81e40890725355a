"""The bundle audit: no foreign code runs when a bundle is loaded.

MONAI evaluates every ``_target_`` (``pydoc.locate``) and every ``$`` expression (``eval``) of a
bundle config (GHSA-873f-pvrv-4x83; upstream chose a warning), and ``logging.config.fileConfig``
evaluates ``class=``, ``args=`` and ``kwargs=`` of ``configs/logging.conf`` (GHSA-wvpx-5qmp-46g3).
This package reads a bundle WITHOUT running any of it -- ``json`` / ``yaml.safe_load`` for the
configs, ``ast`` for the expressions, ``configparser`` + ``ast`` for the logging file,
``pickletools`` for weights files, sha256 for the manifest -- and refuses what the allowlist does
not name::

    python -m mriae.audit BUNDLE_DIR [--list] [--json] [--require-manifest] [--write-manifest]

Configs are read the way MONAI reads them: ids with ``#``/``::`` (top-level ``a#b`` keys and ``+``
merge keys included), relative ids and ``@`` references rewritten by MONAI's own string functions
before ``ast`` sees the expression (what ``eval`` would get), ``%`` macros, ``_mode_``,
``_debug_``. Entry points call ``require_trusted(bundle_dir, trust=...)`` before parsing a bundle.
What MONAI lacked: a check before evaluation (its only switch, ``MONAI_EVAL_EXPR=0``, turns all
expressions off), and its own ``logging.conf`` check reads raw values, so ``%(name)s`` interpolation
from ``[DEFAULT]`` reaches ``fileConfig``'s ``eval`` unchecked; this audit checks the interpolated
values. The allowlist, the manifest format and the hostile cases: docs/reliability.md.

Modules: ``names`` (the allowlist, dotted-name resolution), ``expressions`` (``$`` on its ``ast``),
``configs`` (config files, ``logging.conf``), ``files`` (pickles, the manifest), ``report``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from mriae.errors import InputError, UserError
from mriae.audit.configs import CONFIG_SUFFIXES, LOGGING_SUFFIXES, ConfigAudit, audit_logging
from mriae.audit.files import (
    CODE_SUFFIXES,
    MANIFEST,
    audit_weights,
    bundle_root,
    check_manifest,
    walk_bundle,
    write_manifest,
)
from mriae.audit.names import ALLOWED_PACKAGES, DENIED, PUBLIC_EXCEPTIONS
from mriae.audit.report import AuditReport, Finding, Item

__all__ = [
    "ALLOWED_PACKAGES",
    "DENIED",
    "PUBLIC_EXCEPTIONS",
    "MANIFEST",
    "Finding",
    "Item",
    "AuditReport",
    "audit",
    "require_trusted",
    "write_manifest",
    "check_manifest",
    "main",
]

logger = logging.getLogger("mriae.audit")


def audit(bundle_dir: str | os.PathLike, require_manifest: bool = False) -> AuditReport:
    """Audit one bundle folder without running any of it (module docstring). Raises
    ``MissingFileError`` / ``InputError`` when ``bundle_dir`` is not a bundle."""
    root = bundle_root(bundle_dir)
    report = AuditReport(root)
    files, odd = walk_bundle(root)
    for rel in odd:
        report.fail(rel, "", "a symbolic link or special file", "it can point outside the bundle")
    for rel in files:
        if Path(rel).suffix.lower() in CODE_SUFFIXES:
            report.fail(
                rel,
                "",
                "Python code or a native library",
                "a bundle ships configs and weights, code lives in the package",
            )
    in_configs = [r for r in files if r.startswith("configs/")]
    ConfigAudit(report).run(root, [r for r in in_configs if r.lower().endswith(CONFIG_SUFFIXES)])
    for rel in in_configs:
        if rel.lower().endswith(LOGGING_SUFFIXES):
            audit_logging(root, rel, report)
    for rel in files:
        audit_weights(root, rel, report)
    manifest = check_manifest(root, require=require_manifest)
    report.counts["manifest"] = int((root / MANIFEST).is_file())
    report.findings.extend(manifest)
    return report


def require_trusted(
    bundle_dir: str | os.PathLike,
    trust: bool = False,
    *,
    require_manifest: bool = False,
    flag: str = "--trust-bundle",
) -> AuditReport:
    """Audit ``bundle_dir`` before an entry point parses it: a failing bundle raises ``InputError``
    (one line: the first finding and ``flag``, the entry point's trust option) unless ``trust``,
    which logs a warning and goes on (GHSA-873f-pvrv-4x83, GHSA-wvpx-5qmp-46g3)."""
    report = audit(bundle_dir, require_manifest=require_manifest)
    if report.ok:
        return report
    first, n = report.failures[0], len(report.failures)
    if trust:
        logger.warning(
            "%s: running a bundle that fails the audit (%s): %s", report.bundle, flag, first.line()
        )
        return report
    raise InputError(
        f"{report.bundle}: refused, {n} audit failure{'s' * (n != 1)}, first: {first.line()}; "
        f"all: python -m mriae.audit {report.bundle}; to run it anyway pass {flag}"
    )


def _iter_lines(report: AuditReport, listing: bool) -> Iterator[str]:
    if listing:
        yield from (i.line() for i in report.items if i.ok)
    yield from (f.line() for f in report.findings)
    yield report.summary()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mriae.audit",
        description="Check a MONAI bundle before running it: every _target_ and $ expression against the "
        "allowlist, logging.conf, pickles in weights files, the sha256 manifest. Nothing of the bundle runs.",
    )
    ap.add_argument("bundle", nargs="+", help="bundle folder(s), each with configs/")
    ap.add_argument("--json", action="store_true", help="print the full report as JSON")
    ap.add_argument(
        "--list",
        action="store_true",
        help="also print every _target_, $ expression, logging value and pickle global that passed",
    )
    ap.add_argument("--require-manifest", action="store_true", help="a bundle without manifest.sha256 fails")
    ap.add_argument(
        "--write-manifest",
        action="store_true",
        help="write manifest.sha256 for each bundle that passes (release step)",
    )
    args = ap.parse_args(argv)
    try:
        reports = [
            audit(b, require_manifest=args.require_manifest and not args.write_manifest) for b in args.bundle
        ]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = [write_manifest(r.bundle) for r in reports if args.write_manifest and r.ok]
    if args.json:
        print(
            json.dumps(
                {"ok": all(r.ok for r in reports), "bundles": [r.to_json() for r in reports]}, indent=2
            )
        )
    else:
        for r in reports:
            for line in _iter_lines(r, args.list):
                print(line)
        for path in written:
            print(f"wrote {path}")
    return 0 if all(r.ok for r in reports) else 1
