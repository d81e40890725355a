"""What the audit found: findings (one line each), items, and the report of one bundle."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def one_line(text: object, limit: int = 240) -> str:
    """``text`` on one printable line (newlines and terminal escapes shown escaped), shortened."""
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


@dataclass(frozen=True)
class Finding:
    """One failure (``FAIL``) or warning (``WARN``) of the audit."""

    level: str
    file: str  # path relative to the bundle root
    where: str  # config id, ``section#key`` or archive member; "" for the file itself
    text: str  # the expression, target or what is wrong with the file
    why: str

    def line(self) -> str:
        loc = f"{self.file}:{self.where}" if self.where else self.file
        return f"{self.level} {one_line(loc)}: {one_line(self.text)} ({one_line(self.why)})"


@dataclass(frozen=True)
class Item:
    """One thing the audit read that would run: a ``_target_``, a ``$`` expression, a logging
    ``class=``/``args=``/``kwargs=``, a global named in a pickle."""

    kind: str  # "_target_", "$", "logging", "pickle"
    file: str
    where: str
    text: str
    ok: bool
    why: str = ""

    def line(self) -> str:
        return (
            f"{'ok  ' if self.ok else 'FAIL'} {one_line(f'{self.file}:{self.where}')}: {one_line(self.text)}"
        )


@dataclass
class AuditReport:
    """What ``audit`` found in one bundle; ``ok`` when nothing failed (warnings allowed)."""

    bundle: Path
    items: list[Item] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "FAIL"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "WARN"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, file: str, where: str, text: str, why: str) -> None:
        self.findings.append(Finding("FAIL", file, where, text, why))

    def item(self, kind: str, file: str, where: str, text: str, why: str | None) -> None:
        self.items.append(Item(kind, file, where, text, why is None, why or ""))
        self.counts[kind] += 1
        if why is not None:
            self.fail(file, where, text, why)

    def summary(self) -> str:
        c = self.counts
        seen = ", ".join(
            [
                _count(c["config files"], "config file"),
                f"{c['_target_']} _target_",
                _count(c["$"], "$ expression"),
                _count(c["logging files"], "logging file"),
                _count(c["weights files"], "weights file"),
                "manifest checked" if c["manifest"] else "no manifest",
            ]
        )
        verdict = "OK" if self.ok else f"FAILED, {_count(len(self.failures), 'failure')}"
        warn = f", {_count(len(self.warnings), 'warning')}" if self.warnings else ""
        return f"audit {self.bundle}: {verdict}{warn} ({seen})"

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "ok": self.ok,
            "counts": dict(self.counts),
            "findings": [f.__dict__ | {"line": f.line()} for f in self.findings],
            "items": [i.__dict__ for i in self.items],
        }
