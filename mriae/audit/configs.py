"""A bundle's config files and ``logging.conf``, read as MONAI and ``logging.config.fileConfig`` read
them, without evaluating anything (GHSA-873f-pvrv-4x83, GHSA-wvpx-5qmp-46g3).
"""

from __future__ import annotations

import ast
import configparser
import inspect
import json
import logging
import logging.handlers
from collections import defaultdict
from pathlib import Path
from typing import Any

from mriae.audit.expressions import (
    DEFAULT_GLOBALS,
    AnyRefs,
    ExpressionChecker,
    Refused,
    import_paths,
    parse_expression,
    safe_template,
)
from mriae.audit.names import check_target, locator, resolve
from mriae.audit.report import AuditReport, one_line

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
LOGGING_SUFFIXES = (".conf", ".ini")
LOGGING_ARG_NAMES = frozenset({"sys.stdout", "sys.stderr"})
NON_ARG_KEYS = frozenset({"_requires_", "_desc_", "_disabled_", "_mode_"})  # not passed to a _target_


def _monai_strings() -> tuple[Any, Any]:
    locator()
    from monai.bundle.config_parser import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    return ConfigParser, ReferenceResolver


def _load_config(path: Path) -> Any:
    """As MONAI's ``ConfigParser.load_config_file`` reads it (``json.load`` / ``yaml.safe_load``)."""
    with open(path) as f:
        if path.suffix.lower() == ".json":
            return json.load(f)
        import yaml

        return yaml.safe_load(f)


class ConfigAudit:
    """Every ``_target_`` and ``$`` expression of a bundle's config files."""

    def __init__(self, report: AuditReport) -> None:
        self.report = report
        self.parser, self.resolver = _monai_strings()
        self.values: dict[str, list[Any]] = defaultdict(list)
        self.entries: list[tuple[str, str, str, str]] = []  # (kind, file, id, text)
        self.links: list[tuple[str, str, bool]] = []  # (id, id it takes, macro): "@id" and "%id" values

    def run(self, root: Path, files: list[str]) -> None:
        for rel in files:
            self.report.counts["config files"] += 1
            try:
                data = _load_config(root / rel)
            except (OSError, UnicodeDecodeError, ValueError, RecursionError, ImportError) as e:
                self.report.fail(
                    rel, "", "cannot be read as a config", one_line(f"{type(e).__name__}: {e}", 120)
                )
                continue
            except Exception as e:  # noqa: BLE001  (yaml.YAMLError and the like)
                self.report.fail(rel, "", "cannot be read as a config", type(e).__name__)
                continue
            try:
                self._walk(data, "", rel)
            except RecursionError:
                self.report.fail(rel, "", "nested too deeply", "cannot be read as MONAI reads it")
        aliases, imports = self._imports()
        module_ids = self._module_ids(imports)
        for kind, rel, cid, text in self.entries:
            shown = cid.replace("::", "#")
            if kind == "_target_":
                self.report.item("_target_", rel, shown, text, check_target(text))
            else:
                self.report.item(
                    "$", rel, shown, text, self._check_expression(text, cid, aliases, module_ids)
                )

    def _walk(self, node: Any, cid: str, rel: str) -> None:
        self.values[cid].append(node)
        if isinstance(node, dict):
            for k, v in node.items():
                key = self.resolver.normalize_id(str(k))
                sub = f"{cid}::{key}" if cid else key
                self._key(key.split("::")[-1].lstrip("+"), v, sub, rel)  # "+key": MONAI's merge key
                self._walk(v, sub, rel)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                self._walk(v, f"{cid}::{i}" if cid else str(i), rel)
        elif isinstance(node, str) and node.startswith(("$", "%", "@")):
            shown = cid.replace("::", "#")
            try:
                text = self.resolver.normalize_id(self.parser.resolve_relative_ids(cid, node))
            except ValueError:
                self.report.fail(rel, shown, node, "relative id out of range")
                return
            if text.startswith("%"):
                path, ids = self.parser.split_path_id(text[1:])
                if path:
                    self.report.fail(rel, shown, node, "macro reads a file by a path the audit cannot check")
                self.links.append((cid, ids, True))
            elif text.startswith("$"):
                self.entries.append(("$", rel, cid, node))
            elif self.resolver.id_matcher.fullmatch(text):  # the whole value is a reference
                self.links.append((cid, text[1:], False))

    def _key(self, last: str, value: Any, cid: str, rel: str) -> None:
        shown = cid.replace("::", "#")
        if last == "_target_":
            if not isinstance(value, str):
                self.report.item("_target_", rel, shown, repr(value), "_target_ is not a name")
            elif not value.startswith(("$", "%", "@")):  # those are checked as values
                self.entries.append(("_target_", rel, cid, value))
        elif last == "_mode_" and not (
            isinstance(value, str) and value.strip().lower() in ("default", "callable")
        ):
            self.report.fail(
                rel, shown, repr(value), "_mode_ other than default or callable (debug starts pdb)"
            )
        elif last == "_debug_" and value not in (False, None, 0) and str(value).lower() != "false":
            self.report.fail(rel, shown, repr(value), "_debug_ starts a debugger")
        elif last == "weights_only" and value is not True:
            self.report.fail(rel, shown, repr(value), "weights_only other than true unpickles arbitrary code")
        elif last == "allow_pickle" and value is not False:
            self.report.fail(
                rel, shown, repr(value), "allow_pickle other than false unpickles arbitrary code"
            )

    def _code(self, text: str, cid: str) -> str:
        """The string MONAI hands to ``eval`` (relative ids resolved, ``@id`` -> ``__local_refs``)."""
        return self.resolver.update_refs_pattern(self.parser.resolve_relative_ids(cid, text), AnyRefs())[1:]

    def _imports(self) -> tuple[dict[str, frozenset[tuple[str, ...]]], set[str]]:
        """(names the configs' ``$import`` statements bind, ids of the import items). MONAI binds
        the first name of each statement, on top of its default globals; only imports the audit
        accepts bind anything here."""
        bound: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        for alias, mod in DEFAULT_GLOBALS.items():
            bound[alias].add((mod,))
        ids = set()
        for kind, _, cid, text in self.entries:
            if kind != "$" or "import" not in text:
                continue
            try:
                stmt = parse_expression(self._code(text, cid))
            except (Refused, ValueError):
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                ids.add(cid)
                try:
                    alias, path = import_paths(stmt)[0]
                except Refused:
                    continue
                if resolve(path) is None:
                    bound[alias].add(path)
        return {k: frozenset(v) for k, v in bound.items()}, ids

    def _module_ids(self, imports: set[str]) -> frozenset[str]:
        """Ids whose value is, or holds, an imported module: an import item's value IS the module
        (``@imports#0.hub.load`` would reach ``torch.hub`` unchecked), so are the lists and
        components holding one, the values that refer to those (``@imports``) and the copies a
        macro makes (``%imports``, whose items are import items again)."""
        held: set[str] = set()
        todo = list(imports)
        while todo:
            cid = todo.pop()
            if cid in held:
                continue
            held.add(cid)
            parts = cid.split("::")
            for k in range(len(parts) - 1, 0, -1):
                if parts[k] in NON_ARG_KEYS:
                    break
                todo.append("::".join(parts[:k]))
            for src, target, macro in self.links:
                if target == cid:
                    todo.append(src)
                elif macro and cid.startswith(f"{target}::"):
                    todo.append(src + cid[len(target) :])
        return frozenset(held)

    def _literal(self, ref: str) -> list[str] | None:
        """The strings the configs give ``ref``, when each is a literal (not an expression, reference
        or macro); None otherwise."""
        found = self.values.get(self.resolver.normalize_id(ref), [])
        if found and all(isinstance(v, str) and not v.startswith(("$", "@", "%")) for v in found):
            return sorted(set(found))
        return None

    def _check_expression(self, text: str, cid: str, aliases: dict, module_ids: frozenset[str]) -> str | None:
        try:
            code = self._code(text, cid)
            tree = parse_expression(code)
            if isinstance(tree, (ast.Import, ast.ImportFrom)):
                for _, path in import_paths(tree):
                    why = resolve(path)
                    if why:
                        return f"import: {why}"
                return None
            ExpressionChecker(aliases, self._literal, module_ids).visit(tree, frozenset())
        except Refused as e:
            return str(e)
        except (ValueError, RecursionError) as e:
            return f"cannot be read as MONAI reads it ({type(e).__name__})"
        return None


# ------------------------------------------------------------------------------------ logging.conf
def _logging_class(value: str, kind: str) -> str | None:
    """Why a ``class=`` value is refused: only logging's own handler (``eval`` in logging's
    namespace) or formatter (``logging.config._resolve``, a dotted import) classes pass."""
    value = value.strip()
    base = logging.Handler if kind == "handler" else logging.Formatter
    forms = {
        "handler": ("", "logging.", "handlers.", "logging.handlers."),
        "formatter": ("logging.", "logging.handlers."),
    }
    for prefix in forms[kind]:
        if not value.startswith(prefix) or not value[len(prefix) :].isidentifier():
            continue
        name = value[len(prefix) :]
        module = logging.handlers if "handlers." in prefix else logging
        obj = getattr(module, name, None)
        if (
            inspect.isclass(obj)
            and issubclass(obj, base)
            and obj.__module__ in ("logging", "logging.handlers")
        ):
            return None
    return f"not one of logging's own {kind} classes"


def _logging_literal(value: str) -> str | None:
    """Why ``args=``/``kwargs=`` is refused: literals only, plus ``sys.stdout`` / ``sys.stderr``."""
    try:
        tree = ast.parse(value.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not a Python literal"

    def ok(n: ast.AST) -> bool:
        if isinstance(n, ast.Constant):
            return True
        if isinstance(n, (ast.Tuple, ast.List, ast.Set)):
            return all(ok(e) for e in n.elts)
        if isinstance(n, ast.Dict):
            return all(k is not None and ok(k) for k in n.keys) and all(ok(v) for v in n.values)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            return isinstance(n.operand, ast.Constant)
        return isinstance(n, ast.Attribute) and ast.unparse(n) in LOGGING_ARG_NAMES

    return None if ok(tree) else "not a literal (fileConfig evals it)"


def audit_logging(root: Path, rel: str, report: AuditReport) -> None:
    """A ``logging.conf`` read by the same ``ConfigParser`` (interpolation included) that
    ``logging.config.fileConfig`` uses, each value checked as fileConfig would then use it
    (GHSA-wvpx-5qmp-46g3: it evaluates ``class=``, ``args=``, ``kwargs=`` and ``defaults=``)."""
    report.counts["logging files"] += 1
    cp = configparser.ConfigParser()
    try:
        cp.read_string((root / rel).read_text(), source=rel)
        sections = cp.sections()
        for required in ("loggers", "handlers", "formatters"):
            if not cp.has_option(required, "keys"):
                raise configparser.NoSectionError(required)
        for kind in ("handler", "formatter"):
            for name in filter(None, (s.strip() for s in cp.get(f"{kind}s", "keys").split(","))):
                if f"{kind}_{name}" not in sections:
                    raise configparser.NoSectionError(f"{kind}_{name}")
        for sect in sections:
            kind = sect.split("_", 1)[0]
            if kind == "handler":
                klass = cp.get(sect, "class", fallback=None)
                if klass is None:
                    report.fail(rel, sect, "handler without class", "fileConfig needs one")
                else:
                    report.item("logging", rel, f"{sect}#class", klass, _logging_class(klass, kind))
                for key, default in (("args", "()"), ("kwargs", "{}")):
                    text = cp.get(sect, key, fallback=default)
                    report.item("logging", rel, f"{sect}#{key}", text, _logging_literal(text))
            elif kind == "formatter":
                klass = cp.get(sect, "class", fallback=None)
                if klass:
                    report.item("logging", rel, f"{sect}#class", klass, _logging_class(klass, kind))
                defaults = cp.get(sect, "defaults", raw=True, fallback=None)
                if defaults:
                    report.item("logging", rel, f"{sect}#defaults", defaults, _logging_literal(defaults))
                style = cp.get(sect, "style", raw=True, fallback="%")
                fmt = cp.get(sect, "format", raw=True, fallback="") or ""
                if style == "{" and not safe_template(fmt):
                    report.fail(rel, f"{sect}#format", fmt, "format fields read attributes or items")
    except (configparser.Error, OSError, UnicodeDecodeError) as e:
        report.fail(rel, "", "cannot be read as a logging configuration", one_line(e, 160))
