"""The files of a bundle: pickles inside weights files (read with ``pickletools``, never unpickled)
and the sha256 manifest.
"""

from __future__ import annotations

import inspect
import io
import os
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

from mriae.files import atomic_write_text, sha256_file
from mriae.errors import InputError, MissingFileError
from mriae.audit.names import owner
from mriae.audit.report import AuditReport, Finding

MANIFEST = "manifest.sha256"
CACHE_DIRS = frozenset({"__pycache__"})
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyw", ".pyd", ".so", ".dylib", ".dll"})
WEIGHT_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".joblib", ".npy", ".npz"})
# files a released bundle carries for other runtimes and for installing the package: never loaded by
# mriae (its entry points read models/model.pt), so they are listed as warnings, not failures
EXPORT_SUFFIXES = frozenset({".ts", ".pt2"})
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
PICKLE_GLOBALS = frozenset(
    {("collections", "OrderedDict"), ("_codecs", "encode")}
    | {("builtins", n) for n in ("set", "frozenset", "complex", "bytearray", "slice")}
    | {
        ("torch._utils", n)
        for n in (
            "_rebuild_tensor",
            "_rebuild_tensor_v2",
            "_rebuild_tensor_v3",
            "_rebuild_parameter",
            "_rebuild_parameter_with_state",
            "_rebuild_qtensor",
            "_rebuild_sparse_tensor",
            "_rebuild_meta_tensor_no_storage",
        )
    }
    | {("torch", n) for n in ("device", "Size", "UntypedStorage")}
)
MAX_PICKLE_BYTES = 1 << 30


def _pickle_global_ok(module: str, name: str) -> bool:
    if (module, name) in PICKLE_GLOBALS:
        return True
    if module != "torch" or not name.isidentifier() or name.startswith("_"):
        return False
    import torch

    obj = getattr(torch, name, None)
    if isinstance(obj, torch.dtype):
        return True
    return inspect.isclass(obj) and name.endswith("Storage") and owner(obj).startswith("torch")


def _scan_pickle(data: bytes, start: int) -> tuple[list[tuple[str, str]], list[str], int | None, list]:
    """The globals a pickle starting at ``start`` would import, found by walking its opcodes with a
    model of the unpickler's stack (``pickletools``; nothing is unpickled). Returns (globals,
    problems, end offset or None when it did not end, opcode args of the first ops)."""
    mark, unknown = object(), object()
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    found: list[tuple[str, str]] = []
    problems: list[str] = []
    args: list[Any] = []
    stream = io.BytesIO(data)
    stream.seek(start)
    try:
        for op, arg, pos in pickletools.genops(stream):
            if len(args) < 4:
                args.append((op.name, arg))
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, qual = str(arg).partition(" ")
                found.append((module, qual))
            elif name == "STACK_GLOBAL":
                qual, module = stack[-1], stack[-2]
                if not (isinstance(module, str) and isinstance(qual, str)):
                    problems.append("STACK_GLOBAL with a name the audit cannot follow")
                else:
                    found.append((module, qual))
            elif name.startswith("EXT"):
                problems.append(f"{name} (copyreg extension registry)")
            before, after = op.stack_before, list(op.stack_after)
            n_pop = len(before)
            if pickletools.markobject in before or (name == "POP" and stack and stack[-1] is mark):
                while stack[-1] is not mark:
                    stack.pop()
                stack.pop()
                n_pop = before.index(pickletools.markobject) if pickletools.markobject in before else 0
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                after = [stack[-1]] if name == "MEMOIZE" else []
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                after = [memo[arg]]
            elif name in (
                "STRING",
                "BINSTRING",
                "SHORT_BINSTRING",
                "UNICODE",
                "SHORT_BINUNICODE",
                "BINUNICODE",
                "BINUNICODE8",
            ):
                after = [arg if isinstance(arg, str) else unknown]
            else:
                after = [mark if a is pickletools.markobject else unknown for a in after]
            if n_pop:
                del stack[-n_pop:]
            stack.extend(after)
            if name == "STOP":
                return found, problems, pos + 1, args
    except (ValueError, IndexError, KeyError, EOFError) as e:
        problems.append(f"unreadable pickle ({type(e).__name__})")
    return found, problems, None, args


def _check_pickle_bytes(
    data: bytes, member: str, rel: str, report: AuditReport, strict: bool, export: bool = False
) -> bool:
    """Checks the pickles torch.load / pickle.load would read from ``data``; False when ``data`` is
    no pickle at all (then nothing is reported unless ``strict``). In an export (``export``), the
    TorchScript classes of the archive itself (``__torch__.*``, resolved against the archive's code,
    which is warned about, never imported from Python) and TorchScript's own list and tensor
    builders (``torch.jit._pickle``) are allowed too."""
    found, problems, end, args = _scan_pickle(data, 0)
    if not args or (end is None and not found and len(args) < 2):
        if strict:
            report.fail(
                rel, member, "not a pickle or torch archive", "the audit cannot read it, torch.load would"
            )
        return False
    pickles = [(found, problems)]
    legacy = [a for _, a in args if isinstance(a, int)] == [2, TORCH_LEGACY_MAGIC]  # torch's legacy format
    for _ in range(4 if legacy and end is not None else 0):  # protocol, sys_info, object, storage keys
        found, problems, end, _ = _scan_pickle(data, end)
        pickles.append((found, problems))
        if end is None:
            break
    for found, problems in pickles:
        for module, qual in found:
            ok = _pickle_global_ok(module, qual) or (
                export and (module == "__torch__" or module.startswith("__torch__.") or module == "torch.jit._pickle")
            )
            report.item(
                "pickle", rel, member, f"{module}.{qual}", None if ok else "a pickle global that can run code"
            )
        for p in problems:
            report.fail(rel, member, p, "torch.load without weights_only would run whatever it names")
    return True


def _check_npy(stream: Any, member: str, rel: str, report: AuditReport) -> None:
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(stream)
        header = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
        _, _, dtype = header(stream)
    except Exception as e:  # noqa: BLE001
        report.fail(rel, member, "unreadable .npy header", type(e).__name__)
        return
    if dtype.hasobject:
        report.fail(rel, member, f"object array ({dtype})", "loading it with allow_pickle unpickles")


def _release_file(rel: str, suffixes: frozenset[str] | set[str], folder: str) -> bool:
    parts = rel.split("/")
    return len(parts) == 2 and parts[0] == folder and Path(parts[1]).suffix.lower() in suffixes


def audit_weights(root: Path, rel: str, report: AuditReport) -> None:
    """Weights and other pickles: torch zip archives (every ``*.pkl`` member), torch's legacy
    format, plain pickles and ``.npy``/``.npz``, all read as bytes, never unpickled.

    A released bundle's exports (``models/*.ts`` TorchScript, ``models/*.pt2`` torch.export) hold
    code that ``torch.jit.load`` / ``torch.export.load`` run, and ``wheels/*.whl`` is the package
    for ``pip install``: each is one warning (mriae never loads them; their pickles are still
    checked), where code anywhere else fails."""
    path = root / rel
    suffix = path.suffix.lower()
    if _release_file(rel, {".whl"}, "wheels"):
        report.findings.append(
            Finding("WARN", rel, "", "a Python wheel", "code that pip installs; nothing loads it from the bundle")
        )
        return
    export = _release_file(rel, EXPORT_SUFFIXES, "models")
    with open(path, "rb") as f:
        head = f.read(512)
    is_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if not (suffix in WEIGHT_SUFFIXES or is_pickle or head[:4] == b"PK\x03\x04" or head[:6] == b"\x93NUMPY"):
        return
    report.counts["weights files"] += 1
    if head[:6] == b"\x93NUMPY":
        with open(path, "rb") as f:
            _check_npy(f, "", rel, report)
    elif head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                code = [
                    i.filename for i in infos if "/code/" in f"/{i.filename}" or i.filename.endswith(".py")
                ]
                if code and export:
                    report.findings.append(
                        Finding(
                            "WARN",
                            rel,
                            code[0],
                            "an export for other runtimes",
                            "torch.jit.load / torch.export.load run the code it holds; mriae never loads it",
                        )
                    )
                elif code:
                    report.fail(
                        rel, code[0], "a TorchScript or code archive", "torch.jit.load runs the code it holds"
                    )
                for info in infos:
                    if info.filename.endswith(".pkl"):
                        if info.file_size > MAX_PICKLE_BYTES:
                            report.fail(rel, info.filename, "pickle larger than 1 GiB", "not checked")
                        else:
                            _check_pickle_bytes(z.read(info), info.filename, rel, report, strict=True, export=export)
                    elif info.filename.endswith(".npy"):
                        with z.open(info) as member:
                            _check_npy(member, info.filename, rel, report)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            report.fail(rel, "", "unreadable zip archive", type(e).__name__)
    elif head[257:262] == b"ustar":
        report.fail(rel, "", "a tar checkpoint (torch's oldest format)", "the audit cannot check its pickles")
    elif path.stat().st_size > MAX_PICKLE_BYTES:
        report.fail(rel, "", "pickle larger than 1 GiB", "not checked")
    else:
        _check_pickle_bytes(path.read_bytes(), "", rel, report, strict=suffix in WEIGHT_SUFFIXES)


# ------------------------------------------------------------------------------------- manifest
def bundle_root(bundle_dir: str | os.PathLike) -> Path:
    root = Path(bundle_dir)
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such bundle folder")
    if not (root / "configs").is_dir():
        raise InputError(f"{root}: not a bundle (no configs/ folder)")
    return root


def walk_bundle(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, symbolic links and special files) of a bundle, relative POSIX paths, sorted;
    the manifest itself and ``__pycache__`` folders are left out."""
    files: list[str] = []
    odd: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if (here / d).is_symlink():
                odd.append((here / d).relative_to(root).as_posix())
            elif d not in CACHE_DIRS:
                keep.append(d)
        dirnames[:] = keep
        for n in filenames:
            p = here / n
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            (odd if p.is_symlink() or not p.is_file() else files).append(rel)
    return sorted(files), sorted(odd)


def write_manifest(bundle_dir: str | os.PathLike) -> Path:
    """Write ``<bundle>/manifest.sha256``: ``<sha256>  <path>`` per file (the ``sha256sum`` format,
    sorted by path, relative to the bundle root), every file except the manifest and
    ``__pycache__``. The release step calls it when a bundle is packaged."""
    root = bundle_root(bundle_dir)
    files, odd = walk_bundle(root)
    if odd:
        raise InputError(
            f"{root / odd[0]}: a symbolic link or special file; a packaged bundle holds regular files only"
        )
    bad = [r for r in files if any(c in r for c in "\n\r\\")]
    if bad:
        raise InputError(f"{root / bad[0]}: a file name with a newline or backslash cannot be listed")
    text = "".join(f"{sha256_file(root / r)}  {r}\n" for r in files)
    return atomic_write_text(root / MANIFEST, text)


def check_manifest(bundle_dir: str | os.PathLike, require: bool = False) -> list[Finding]:
    """Recompute every sha256 of ``manifest.sha256``: a changed, missing or extra (unlisted) file
    fails. A bundle without a manifest gets one warning, a failure with ``require``."""
    root = bundle_root(bundle_dir)
    path = root / MANIFEST
    if path.is_symlink():
        return [Finding("FAIL", MANIFEST, "", "a symbolic link", "the manifest must be a file of the bundle")]
    if not path.is_file():
        level = "FAIL" if require else "WARN"
        why = (
            "a packaged bundle must have one"
            if require
            else "file hashes not checked; --require-manifest fails"
        )
        return [Finding(level, MANIFEST, "", "no manifest", why)]
    out: list[Finding] = []
    listed: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        rel = m.group(2) if m else ""
        parts = rel.split("/")
        if not m or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            out.append(Finding("FAIL", MANIFEST, f"line {n}", line, "not '<sha256>  <relative path>'"))
        elif rel in listed:
            out.append(Finding("FAIL", MANIFEST, f"line {n}", line, "a path listed twice"))
        else:
            listed[rel] = m.group(1)
    files, _ = walk_bundle(root)
    for rel in sorted(set(listed) | set(files)):
        if rel not in files:
            out.append(
                Finding("FAIL", rel, "", "listed in the manifest but missing", "removed after packaging")
            )
        elif rel not in listed:
            out.append(Finding("FAIL", rel, "", "not listed in the manifest", "added after packaging"))
        elif (digest := sha256_file(root / rel)) != listed[rel]:
            why = f"sha256 {digest[:12]}…, manifest {listed[rel][:12]}…"
            out.append(Finding("FAIL", rel, "", "changed after packaging", why))
    return out
