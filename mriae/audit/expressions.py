"""``$`` expressions of a bundle config, checked on their ``ast`` (never evaluated; GHSA-873f-pvrv-4x83).

Allowed: references, literals, operators, comparisons, conditional expressions, subscripts,
comprehensions, lambdas, calls, and attributes rooted in an allowlisted module or on values of
references; refused: dunder and private names, introspection attributes, escaping builtins,
imports outside the allowlist, ``str.format`` reading attributes, and every node not named here.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Callable

from mriae.audit.names import is_module, resolve

# the names MONAI's ConfigParser binds for every expression (``_default_globals``)
DEFAULT_GLOBALS = {"monai": "monai", "torch": "torch", "np": "numpy", "numpy": "numpy"}

SAFE_BUILTINS = frozenset(
    "abs all any bool callable chr dict divmod enumerate filter float frozenset int isinstance issubclass "
    "iter len list map max min next ord pow print range repr reversed round set slice sorted str sum tuple zip".split()
)
NAMED_ATTR_BUILTINS = frozenset({"getattr", "hasattr", "setattr"})
ESCAPES = {
    "eval": "runs a string as code",
    "exec": "runs a string as code",
    "compile": "compiles a string to code",
    "open": "opens any file",
    "globals": "hands out the interpreter's namespace",
    "locals": "hands out the interpreter's namespace",
    "vars": "hands out an object's namespace",
    "dir": "lists an object's private names",
    "breakpoint": "starts a debugger",
    "input": "reads the terminal",
    "delattr": "changes objects by name",
    "type": "builds classes",
    "object": "is the root of every class",
    "memoryview": "exposes raw memory",
    "help": "starts an interactive pager",
    "exit": "stops the interpreter",
    "quit": "stops the interpreter",
}
INTROSPECTION = re.compile(r"(f|gi|cr|ag|tb|co)_\w+")  # frames, code, generators, tracebacks
# DataFrame.eval / query evaluate a string; nn.Module.eval() takes no argument
STRING_EVAL_METHODS = frozenset({"eval", "exec", "query"})
FORMAT_METHODS = frozenset({"format", "format_map"})  # "{0.__class__}".format(x) reads attributes
REF_VAR = "__local_refs"  # what MONAI rewrites ``@id`` into inside an expression


class Refused(Exception):
    """An expression outside the rules; the message says which node and why."""


class AnyRefs(dict):
    """A references mapping that holds every id: MONAI's ``update_refs_pattern`` then rewrites each
    ``@id`` of an expression into ``__local_refs['id']`` exactly as it does before ``eval``."""

    def __contains__(self, key: object) -> bool:
        return True


_VALUE = ("value",)


class ExpressionChecker:
    """Walks an expression's ``ast`` and raises ``Refused`` at the first node outside the rules."""

    def __init__(
        self,
        aliases: dict[str, frozenset[tuple[str, ...]]],
        literal_of: Callable[[str], list[str] | None],
        module_refs: frozenset[str] = frozenset(),
    ) -> None:
        self.aliases = aliases
        self.literal_of = literal_of  # reference id -> the literal strings it holds, or None
        self.module_refs = module_refs  # ids whose value is (or holds) an imported module

    def visit(self, node: ast.AST, scope: frozenset[str]) -> tuple:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise Refused(f"{type(node).__name__} is not allowed in an expression")
        return method(node, scope)

    def value(self, node: ast.AST, scope: frozenset[str]) -> tuple:
        """``visit`` for a node whose value is used (an argument, an element, the result...): a
        module may only be the base of an attribute, never a value, or its unchecked attributes
        (``m.hub.load``) would be reached through the value."""
        kind = self.visit(node, scope)
        if kind[0] == "chain":
            for path in sorted(kind[1]):
                if is_module(path):
                    raise Refused(f"the module {'.'.join(path)} used as a value (use its attributes)")
        return kind

    def _attr_name(self, attr: str) -> None:
        if attr.startswith("_"):
            raise Refused(f"private or dunder attribute {attr}")
        if INTROSPECTION.fullmatch(attr):
            raise Refused(f"introspection attribute {attr}")

    def _extend(self, base: tuple, attr: str) -> tuple:
        if base[0] != "chain":
            return _VALUE
        paths = frozenset((*p, attr) for p in base[1])
        for p in sorted(paths):
            why = resolve(p)
            if why:
                raise Refused(why)
        return ("chain", paths)

    def _Expression(self, node: ast.Expression, scope: frozenset[str]) -> tuple:
        return self.value(node.body, scope)

    def _Constant(self, node: ast.Constant, scope: frozenset[str]) -> tuple:
        if isinstance(node.value, bytes):
            raise Refused("bytes literal")
        return _VALUE

    def _Name(self, node: ast.Name, scope: frozenset[str]) -> tuple:
        name = node.id
        if name in scope:
            return _VALUE
        if name.startswith("__"):
            raise Refused(f"dunder name {name}")
        if name in self.aliases:
            return ("chain", self.aliases[name])
        if name in SAFE_BUILTINS:
            return ("builtin", name)
        if name in NAMED_ATTR_BUILTINS:
            raise Refused(f"{name} only called directly with a literal name")
        if name in ESCAPES:
            raise Refused(f"builtin {name} {ESCAPES[name]}")
        raise Refused(f"unknown name {name} (not imported from an allowlisted package)")

    def _Attribute(self, node: ast.Attribute, scope: frozenset[str]) -> tuple:
        base = self.visit(node.value, scope)  # left to right: the first refused step is reported
        self._attr_name(node.attr)
        if node.attr in STRING_EVAL_METHODS:
            raise Refused(f".{node.attr} only called directly without arguments (DataFrame.eval / query)")
        if node.attr in FORMAT_METHODS:
            raise Refused(f".{node.attr} only called directly on a literal template without attribute fields")
        return self._extend(base, node.attr)

    def _Subscript(self, node: ast.Subscript, scope: frozenset[str]) -> tuple:
        key = node.slice
        if isinstance(node.value, ast.Name) and node.value.id == REF_VAR and REF_VAR not in scope:
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                if key.value in self.module_refs:
                    shown = key.value.replace("::", "#")
                    raise Refused(f"a reference to an imported module (@{shown}): use the module's name")
                return ("ref", key.value)
            raise Refused(f"{REF_VAR} used other than as a reference")
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith("__"):
            raise Refused(f"dunder key {key.value!r}")
        self.value(node.value, scope)
        self.value(key, scope)
        return _VALUE

    def _keyword_values(self, keywords: list[ast.keyword], scope: frozenset[str]) -> None:
        for kw in keywords:
            if kw.arg == "weights_only" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is True
            ):
                raise Refused("weights_only other than True unpickles arbitrary code")
            if kw.arg == "allow_pickle" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                raise Refused("allow_pickle other than False unpickles arbitrary code")
            self.value(kw.value, scope)

    def _Call(self, node: ast.Call, scope: frozenset[str]) -> tuple:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in FORMAT_METHODS:
            template = func.value
            if not (isinstance(template, ast.Constant) and isinstance(template.value, str)):
                raise Refused(f".{func.attr} on a template that is not a literal")
            if not safe_template(template.value):
                raise Refused(f"format template {template.value!r} reads attributes or items")
        elif isinstance(func, ast.Attribute) and func.attr in STRING_EVAL_METHODS:
            if node.args or node.keywords:
                raise Refused(f".{func.attr}() with arguments evaluates a string (DataFrame.eval / query)")
            self._extend(self.visit(func.value, scope), func.attr)  # nn.Module.eval()
        elif (
            isinstance(func, ast.Name)
            and func.id in NAMED_ATTR_BUILTINS
            and func.id not in scope
            and func.id not in self.aliases
        ):
            return self._named_attr(node, scope)
        else:
            self.visit(func, scope)
        for a in node.args:
            self.value(a, scope)
        self._keyword_values(node.keywords, scope)
        return _VALUE

    def _named_attr(self, node: ast.Call, scope: frozenset[str]) -> tuple:
        name, args = node.func.id, node.args  # type: ignore[attr-defined]
        expected = (3,) if name == "setattr" else (2,) if name == "hasattr" else (2, 3)
        if node.keywords or len(args) not in expected or any(isinstance(a, ast.Starred) for a in args):
            raise Refused(f"{name}() with unusual arguments")
        attrs = self._static_names(args[1], name)
        for attr in attrs:
            self._attr_name(attr)
            if attr in FORMAT_METHODS or attr in STRING_EVAL_METHODS:
                raise Refused(f"{name}() of .{attr}")
        base = self.visit(args[0], scope)
        for a in args[2:]:
            self.value(a, scope)
        if name == "setattr":
            if base[0] in ("chain", "builtin"):
                raise Refused("setattr on a module or builtin changes what other code runs")
            return _VALUE
        extended = [self._extend(base, attr) for attr in attrs]
        if name == "getattr" and all(e[0] == "chain" for e in extended):
            return ("chain", frozenset().union(*(e[1] for e in extended)))
        return _VALUE

    def _static_names(self, arg: ast.AST, func: str) -> list[str]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [arg.value]
        if (
            isinstance(arg, ast.Subscript)
            and isinstance(arg.value, ast.Name)
            and arg.value.id == REF_VAR
            and isinstance(arg.slice, ast.Constant)
            and isinstance(arg.slice.value, str)
        ):
            values = self.literal_of(arg.slice.value)
            if values:
                return values
        raise Refused(f"{func}() with a name that is neither a literal nor a reference to a literal string")

    def _children(self, nodes, scope: frozenset[str]) -> tuple:
        for n in nodes:
            if n is not None:
                self.value(n, scope)
        return _VALUE

    def _BinOp(self, node: ast.BinOp, scope: frozenset[str]) -> tuple:
        return self._children([node.left, node.right], scope)

    def _UnaryOp(self, node: ast.UnaryOp, scope: frozenset[str]) -> tuple:
        return self._children([node.operand], scope)

    def _BoolOp(self, node: ast.BoolOp, scope: frozenset[str]) -> tuple:
        return self._children(node.values, scope)

    def _Compare(self, node: ast.Compare, scope: frozenset[str]) -> tuple:
        return self._children([node.left, *node.comparators], scope)

    def _IfExp(self, node: ast.IfExp, scope: frozenset[str]) -> tuple:
        return self._children([node.test, node.body, node.orelse], scope)

    def _List(self, node: ast.List, scope: frozenset[str]) -> tuple:
        return self._children(node.elts, scope)

    _Tuple = _List
    _Set = _List

    def _Dict(self, node: ast.Dict, scope: frozenset[str]) -> tuple:
        for k, v in zip(node.keys, node.values):
            safe = {"weights_only": True, "allow_pickle": False}
            if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value in safe:
                if not (isinstance(v, ast.Constant) and v.value is safe[k.value]):
                    raise Refused(f"{k.value} other than {safe[k.value]} unpickles arbitrary code")
        return self._children([*node.keys, *node.values], scope)

    def _Starred(self, node: ast.Starred, scope: frozenset[str]) -> tuple:
        return self._children([node.value], scope)

    def _Slice(self, node: ast.Slice, scope: frozenset[str]) -> tuple:
        return self._children([node.lower, node.upper, node.step], scope)

    def _JoinedStr(self, node: ast.JoinedStr, scope: frozenset[str]) -> tuple:
        return self._children(node.values, scope)

    def _FormattedValue(self, node: ast.FormattedValue, scope: frozenset[str]) -> tuple:
        return self._children([node.value, node.format_spec], scope)

    def _Lambda(self, node: ast.Lambda, scope: frozenset[str]) -> tuple:
        a = node.args
        names = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None}
        for n in names:
            if n.startswith("__"):
                raise Refused(f"dunder name {n}")
        self._children([*a.defaults, *a.kw_defaults], scope)
        return self.value(node.body, scope | names)

    def _targets(self, t: ast.AST) -> set[str]:
        if isinstance(t, ast.Name) and not t.id.startswith("__"):
            return {t.id}
        if isinstance(t, (ast.Tuple, ast.List)):
            return set().union(*(self._targets(e) for e in t.elts))
        if isinstance(t, ast.Starred):
            return self._targets(t.value)
        raise Refused("a comprehension may bind plain names only")

    def _comprehension(self, generators: list[ast.comprehension], elts: list, scope: frozenset[str]) -> tuple:
        inner = set(scope)
        for i, gen in enumerate(generators):
            if gen.is_async:
                raise Refused("async comprehension")
            self.value(gen.iter, scope if i == 0 else frozenset(inner))
            inner |= self._targets(gen.target)
            self._children(gen.ifs, frozenset(inner))
        return self._children(elts, frozenset(inner))

    def _ListComp(self, node: ast.ListComp, scope: frozenset[str]) -> tuple:
        return self._comprehension(node.generators, [node.elt], scope)

    _SetComp = _ListComp
    _GeneratorExp = _ListComp

    def _DictComp(self, node: ast.DictComp, scope: frozenset[str]) -> tuple:
        return self._comprehension(node.generators, [node.key, node.value], scope)


def safe_template(template: str) -> bool:
    """A ``str.format`` template whose fields are plain positions or names (no ``.attr``/``[key]``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return False
    for _, name, spec, _ in parsed:
        if name is not None and not re.fullmatch(r"\d*|[A-Za-z]\w*", name):
            return False
        if spec and not safe_template(spec):
            return False
    return True


def import_paths(stmt: ast.Import | ast.ImportFrom) -> list[tuple[str, tuple[str, ...]]]:
    """(alias, dotted path) of each name an import statement binds, as MONAI binds them."""
    if isinstance(stmt, ast.ImportFrom):
        if stmt.level or not stmt.module:
            raise Refused("relative import")
        if any(a.name == "*" for a in stmt.names):
            raise Refused("star import")
        return [(a.asname or a.name, (*stmt.module.split("."), a.name)) for a in stmt.names]
    return [(a.asname or a.name, tuple(a.name.split("."))) for a in stmt.names]


def parse_expression(code: str) -> ast.AST:
    """The statement MONAI would import (``$import x``), or the expression it would ``eval``."""
    try:
        module = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Refused(f"not valid Python ({type(e).__name__})") from None
    if module.body and isinstance(module.body[0], (ast.Import, ast.ImportFrom)):
        if len(module.body) > 1:
            raise Refused("more than one statement")
        return module.body[0]
    try:
        return ast.parse(code, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Refused(f"not a Python expression ({type(e).__name__})") from None
