"""What a dotted name in a bundle resolves to, and whether it lies on the allowlist (GHSA-873f-pvrv-4x83).

The allowlist: monai, torch, ignite, numpy, and this package's public names (``__all__``), minus
``DENIED``, the known ways inside those packages to run or load code. Names are resolved as
``pydoc.locate`` (MONAI's ``instantiate``) would, importing only modules of the allowlisted
packages; this package's names are read from its source files, never imported.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "mriae"  # this package: its public names (``__all__``) are allowed
ALLOWED_PACKAGES = ("monai", "torch", "ignite", "numpy")

# Known ways to run or load code inside the allowlisted packages, refused by prefix of the written
# or the defining (``__module__.__qualname__``) name.
DENIED: dict[str, str] = {
    "torch.load": "unpickles (weights_only can be switched off)",
    "torch.serialization": "unpickles, or widens what torch.load accepts",
    "torch.hub": "downloads and imports code",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "torch.utils.benchmark": "runs statements given as strings",
    "torch.utils.collect_env": "runs commands",
    "torch.utils.data.datapipes": "unpickles",
    "torch.utils.model_zoo": "downloads and unpickles",
    "torch.package": "imports packaged code",
    "torch.jit": "compiles or loads code",
    "torch.fx": "generates and runs code",
    "torch.export": "loads serialized programs",
    "torch.ops.load_library": "loads a native library",
    "torch.classes.load_library": "loads a native library",
    "torch.multiprocessing": "starts processes and unpickles what they send",
    "torch.backends.xeon": "launches commands",
    "torch.distributed.run": "launches scripts",
    "torch.distributed.launch": "launches scripts",
    "torch.distributed.launcher": "launches scripts",
    "torch.distributed.elastic": "launches scripts",
    "torch.distributed.checkpoint": "unpickles",
    "torch.distributed.rpc": "runs remote calls",
    "torch.distributed.nn": "generates and imports code",
    "torch.overrides": "hands out torch's namespaces (modules) as values",
    "torch.cuda.memory.CUDAPluggableAllocator": "loads a native library",
    "torch.cuda.memory.change_current_allocator": "loads a native library",
    "torch.xpu.memory": "loads a native library",
    "numpy.load": "unpickles with allow_pickle",
    "numpy.lib.format": "unpickles with allow_pickle",
    "numpy.lib.npyio": "unpickles with allow_pickle",
    "numpy.ctypeslib": "loads native libraries",
    "numpy.f2py": "compiles and imports code",
    "numpy.distutils": "compiles code",
    "numpy.testing": "builds and imports extension modules",
    "monai.bundle": "parses and runs other configs, downloads bundles",
    "monai.apps": "downloads data and code, runs external tools",
    "monai.auto3dseg": "unpickles algorithms",
    "monai.fl": "loads and runs bundles",
    "monai.utils.module": "imports any module by name (optional_import, instantiate, locate)",
    "monai.utils.misc.run_cmd": "runs commands",
    "monai.data.torchscript_utils": "loads TorchScript",
    f"{PACKAGE}.audit": "the audit itself",
    f"{PACKAGE}.config.bundle_config": "parses another bundle's config",
    f"{PACKAGE}.tools.bundle.BundleHandle": "parses another bundle's config",
    f"{PACKAGE}.compare.run.train_model": "runs another bundle in a subprocess",
    f"{PACKAGE}.compare.run.load_network": "parses another bundle's config",
    f"{PACKAGE}.compare.cli": "runs other bundles",
    f"{PACKAGE}.compare.real_scan": "runs other bundles",
    f"{PACKAGE}.tools.sweep.run_trial": "runs a bundle",
    f"{PACKAGE}.tools.sweep.run_sweep": "runs a bundle",
    f"{PACKAGE}.tools.run": "runs a bundle",
    f"{PACKAGE}.share": "packs, fetches and runs releases",
}

# Package names the bundles' configs use that their module's ``__all__`` does not list yet. Each is
# an explicit exception (tests/test_audit.py checks it is still defined and still used); the fix is
# to add it to that module's ``__all__`` and drop it here.
PUBLIC_EXCEPTIONS: frozenset[str] = frozenset()  # names bundles use that are missing from an __all__ (none)

# builtins an expression may call; getattr/hasattr/setattr only directly, with a literal name


def _denied(name: str) -> str | None:
    """The reason ``name`` (dotted) is refused although it lies in an allowlisted package."""
    parts = name.split(".")
    if parts[0] == PACKAGE and "main" in parts[1:]:
        return f"{name}: a command-line entry point"
    for prefix, why in DENIED.items():
        if name == prefix or name.startswith(prefix + "."):
            return f"{prefix} {why}"
    return None


def _root_allowed(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in ALLOWED_PACKAGES


def owner(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or getattr(getattr(obj, "__objclass__", None), "__module__", None)
    return mod if isinstance(mod, str) else ""


def _check_object(obj: Any, name: str) -> str | None:
    """Why the object reached by ``name`` lies outside the allowlist, or None."""
    if isinstance(obj, ModuleType):
        if not _root_allowed(obj.__name__):
            return f"{name} is the module {obj.__name__}, outside the allowlist"
        return _denied(obj.__name__)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        mod = owner(obj)
        if not _root_allowed(mod):
            return f"{name} is {mod or '?'}.{getattr(obj, '__qualname__', '?')}, outside the allowlist"
        return _denied(f"{mod}.{getattr(obj, '__qualname__', '')}")
    if isinstance(
        obj, (int, float, complex, str, bytes, bool, type(None), tuple, list, dict, set, frozenset)
    ):
        return None
    if not _root_allowed(type(obj).__module__):
        return f"{name} is a {type(obj).__module__}.{type(obj).__qualname__}, outside the allowlist"
    return None


@functools.lru_cache(maxsize=64)
def _public_names(module_file: str) -> frozenset[str]:
    """A module's public names read from its source (never imported): ``__all__`` (``=``, ``+=``)
    when it has one, else the top-level functions, classes and assignments without a leading ``_``."""
    tree = ast.parse(Path(module_file).read_text(encoding="utf-8"))
    declared: set[str] | None = None
    defined: set[str] = set()

    def literal(node: ast.AST) -> set[str]:
        try:
            value = ast.literal_eval(node)
        except ValueError:
            return set()
        return {v for v in value if isinstance(v, str)} if isinstance(value, (list, tuple)) else set()

    for st in tree.body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(st.name)
        elif isinstance(st, (ast.Assign, ast.AnnAssign)):
            for t in st.targets if isinstance(st, ast.Assign) else [st.target]:
                if isinstance(t, ast.Name) and t.id == "__all__" and st.value is not None:
                    declared = literal(st.value)
                elif isinstance(t, ast.Name):
                    defined.add(t.id)
        elif isinstance(st, ast.AugAssign) and isinstance(st.target, ast.Name) and st.target.id == "__all__":
            declared = (declared or set()) | literal(st.value)
    return frozenset(n for n in (defined if declared is None else declared) if not n.startswith("_"))


def resolve_package(path: tuple[str, ...]) -> tuple[str | None, bool]:
    """``mriae.<module>...<public name>[.<attribute>...]``, checked against the source files:
    (why refused or None, whether the name is a module)."""
    module_file = Path(__file__).resolve().parents[1] / "__init__.py"  # the package
    for i, part in enumerate(path[1:], 1):
        if module_file.name == "__init__.py":
            pkg = module_file.parent
            if (pkg / part / "__init__.py").is_file():
                module_file = pkg / part / "__init__.py"
                continue
            if (pkg / f"{part}.py").is_file():
                module_file = pkg / f"{part}.py"
                continue
        if part in _public_names(str(module_file)) or ".".join(path[: i + 1]) in PUBLIC_EXCEPTIONS:
            return None, False  # attributes of a public object are its API
        why = f"{'.'.join(path[: i + 1])} is not a public name of {'.'.join(path[:i])} (not in its __all__)"
        return why, False
    return None, True


def resolve(path: tuple[str, ...]) -> str | None:
    """Why the dotted name ``path`` is refused, or None when it names something in an allowlisted
    package. Resolved as ``pydoc.locate`` (which MONAI's ``instantiate`` uses) would: import the
    longest module prefix, then attributes -- but only ever importing modules of the allowlisted
    packages, and checking every step (``torch.os`` is the module ``os``: refused)."""
    return _lookup(path)[0]


def is_module(path: tuple[str, ...]) -> bool:
    """Whether an allowed dotted name is a module (or a module-like namespace such as ``torch.ops``)."""
    why, module = _lookup(path)
    return why is None and module


@functools.lru_cache(maxsize=4096)
def _lookup(path: tuple[str, ...]) -> tuple[str | None, bool]:
    name = ".".join(path)
    if not path or not all(p.isidentifier() for p in path):
        return f"{name!r} is not a dotted name", False
    private = [p for p in path if p.startswith("_")]
    if private:
        return f"private or dunder name {private[0]}", False
    if path[0] not in (*ALLOWED_PACKAGES, PACKAGE):
        return f"{path[0]} is not an allowlisted package", False
    why = _denied(name)
    if why:
        return why, False
    if path[0] == PACKAGE:
        return resolve_package(path)
    try:
        obj: Any = importlib.import_module(path[0])
    except Exception:  # noqa: BLE001
        return f"{path[0]} cannot be imported", False
    for i in range(1, len(path)):
        sub = ".".join(path[: i + 1])
        if isinstance(obj, ModuleType) and sub not in sys.modules:
            try:
                spec = importlib.util.find_spec(sub)
            except Exception:  # noqa: BLE001  (torch.classes and other namespaces that are no packages)
                spec = None
            if spec is not None:
                try:
                    importlib.import_module(sub)
                except Exception:  # noqa: BLE001
                    return f"{sub} cannot be imported", False
        try:
            obj = getattr(obj, path[i])
        except Exception:  # noqa: BLE001
            return f"{sub} does not exist", False
        why = _check_object(obj, sub)
        if why:
            return why, False
    return None, isinstance(obj, ModuleType)


@functools.lru_cache(maxsize=1)
def locator() -> Any:
    """MONAI's own ``ComponentLocator`` (short ``_target_`` names such as ``SupervisedTrainer``);
    ``import monai`` loads MONAI's submodules, as ``python -m monai.bundle`` does."""
    import monai  # noqa: F401
    from monai.bundle.config_item import ComponentLocator

    return ComponentLocator()


def check_target(target: str) -> str | None:
    """Why a ``_target_`` string is refused, or None."""
    if "." not in target:
        if not target.isidentifier():
            return "not a class or function name"
        mods = locator().get_component_module_name(target)
        if mods is None:
            return "not a MONAI component name (MONAI would look it up as a module or builtin)"
        if hasattr(builtins, target) or _top_level_module(target):
            return f"{target} is also a builtin or module name"
        for mod in [mods] if isinstance(mods, str) else mods:
            why = resolve((*mod.split("."), target))
            if why:
                return why
        return None
    return resolve(tuple(p for p in target.split(".") if p))  # pydoc.locate drops empty parts


def _top_level_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
