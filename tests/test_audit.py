"""The bundle audit (mriae.audit): hostile bundles are refused and nothing of them runs; every bundle
of this repository passes. Hostile bundles are copies of bundles/res_unet changed in one place;
each payload would create a sentinel file, which must not exist after the audit."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mriae import audit as A
from mriae.errors import InputError

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent for p in (REPO / "bundles").glob("*/configs"))


class _Payload:
    """Unpickling this runs ``touch <path>`` (a ``__reduce__`` to ``os.system``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.path)}",))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "res_unet"
    shutil.copytree(
        REPO / "bundles" / "res_unet", dst, ignore=shutil.ignore_patterns("models", "outputs", "eval")
    )
    return dst


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a payload ran"


def edit(bundle: Path, change, name: str = "train.json") -> None:
    path = bundle / "configs" / name
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=4))


def run(bundle: Path, capsys, *args: str) -> tuple[int, list[str]]:
    rc = A.main([str(bundle), *args])
    out = capsys.readouterr().out.splitlines()
    return rc, out


def fails(out: list[str]) -> list[str]:
    return [line for line in out if line.startswith("FAIL ")]


# --------------------------------------------------------------------------- the real bundles
@pytest.mark.parametrize("root", BUNDLES, ids=lambda p: p.name)
def test_every_bundle_of_the_repository_passes(root: Path) -> None:
    report = A.audit(root)
    assert report.failures == [], [f.line() for f in report.failures]
    assert [f.text for f in report.warnings] == ["no manifest"]
    assert (
        report.counts["_target_"] >= 10 and report.counts["$"] >= 40 and report.counts["logging files"] == 1
    )
    targets = {i.text for i in report.items if i.kind == "_target_"}
    assert "mriae.train.engine.SupervisedTrainer" in targets or "mriae.train.adversarial.AdversarialTrainer" in targets


def test_command_line_on_a_clean_bundle(capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    rc, lines = run(Path("bundles/res_unet"), capsys)
    assert rc == 0
    assert lines[0] == "WARN manifest.sha256: no manifest (file hashes not checked; --require-manifest fails)"
    n_weights = len(list((REPO / "bundles/res_unet").rglob("*.pt")))  # trained weights, after the demo
    assert re.fullmatch(
        r"audit bundles/res_unet: OK, 1 warning \(\d+ config files, \d+ _target_, \d+ \$ expressions, "
        rf"1 logging file, {n_weights} weights? files?, no manifest\)",
        lines[1],
    )
    assert len(lines) == 2


def test_missing_folder_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """Through ``python -m mriae.audit`` (the entry point itself): no traceback, exit status 2."""
    res = subprocess.run(
        [sys.executable, "-m", "mriae.audit", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such bundle folder"]
    assert A.main([str(tmp_path)]) == 2  # a folder without configs/


def test_public_exceptions_are_still_defined_and_used() -> None:
    texts = "\n".join(p.read_text() for p in (REPO / "bundles").glob("*/configs/*.json"))
    for name in sorted(A.PUBLIC_EXCEPTIONS):
        module, _, attr = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), name
        assert name in texts, f"{name} is no longer used by a bundle: drop it from PUBLIC_EXCEPTIONS"


def test_every_denied_name_exists() -> None:
    """A typo in the denylist would let the real name through."""
    for name in A.DENIED:
        try:
            found = importlib.util.find_spec(name) is not None
        except Exception:  # noqa: BLE001  (torch.classes is a namespace, not a package)
            found = False
        if not found:
            module, _, attr = name.rpartition(".")
            found = hasattr(importlib.import_module(module), attr)
        assert found, name


# ------------------------------------------------------------------------- hostile configs
def _add_import(module: str):
    return lambda c: c["imports"].append(f"$import {module}")


HOSTILE_CONFIGS = {
    "os.system in an expression": (
        lambda s: (
            lambda c: (c["imports"].append("$import os"), c.update(determinism=f"$os.system('touch {s}')"))
        ),
        [
            "FAIL configs/train.json:imports#{n}: $import os (import: os is not an allowlisted package)",
            "FAIL configs/train.json:determinism: $os.system('touch {s}') (unknown name os (not imported from an allowlisted package))",
        ],
    ),
    "__import__('os').system": (
        lambda s: lambda c: c.update(determinism=f"$__import__('os').system('touch {s}')"),
        [
            "FAIL configs/train.json:determinism: $__import__('os').system('touch {s}') (dunder name __import__)"
        ],
    ),
    "$import os": (
        lambda s: _add_import("os"),
        ["FAIL configs/train.json:imports#{n}: $import os (import: os is not an allowlisted package)"],
    ),
    "_target_ subprocess.run": (
        lambda s: lambda c: c.update(network_def={"_target_": "subprocess.run", "args": ["touch", str(s)]}),
        [
            "FAIL configs/train.json:network_def#_target_: subprocess.run (subprocess is not an allowlisted package)"
        ],
    ),
    "_target_ builtins.eval": (
        lambda s: (
            lambda c: c["train"].update(
                inferer={"_target_": "builtins.eval", "source": f"__import__('os').system('touch {s}')"}
            )
        ),
        [
            "FAIL configs/train.json:train#inferer#_target_: builtins.eval (builtins is not an allowlisted package)"
        ],
    ),
    "dunder escape": (
        lambda s: lambda c: c.update(seed="$().__class__.__base__.__subclasses__()"),
        [
            "FAIL configs/train.json:seed: $().__class__.__base__.__subclasses__() (private or dunder attribute __class__)"
        ],
    ),
    "MONAI's path key": (
        lambda s: lambda c: c.update({"train#trainer#_target_": "subprocess.run"}),
        [
            "FAIL configs/train.json:train#trainer#_target_: subprocess.run (subprocess is not an allowlisted package)"
        ],
    ),
    "short name that is no MONAI component": (
        lambda s: lambda c: c["train"]["trainer"].update(_target_="eval"),
        [
            "FAIL configs/train.json:train#trainer#_target_: eval "
            "(not a MONAI component name (MONAI would look it up as a module or builtin))"
        ],
    ),
    "MONAI component that runs commands": (
        lambda s: lambda c: c.update(network_def={"_target_": "run_cmd", "cmd_list": ["touch", str(s)]}),
        ["FAIL configs/train.json:network_def#_target_: run_cmd (monai.utils.misc.run_cmd runs commands)"],
    ),
    "attribute reaching another module": (
        lambda s: lambda c: c.update(determinism=f"$torch.os.system('touch {s}')"),
        [
            "FAIL configs/train.json:determinism: $torch.os.system('touch {s}') "
            "(torch.os is the module os, outside the allowlist)"
        ],
    ),
    "merge key import": (
        lambda s: lambda c: c.update({"+imports": ["$from subprocess import run"]}),
        [
            "FAIL configs/train.json:+imports#0: $from subprocess import run (import: subprocess is not an allowlisted package)"
        ],
    ),
    "_mode_ debug": (
        lambda s: lambda c: c["corruption"].update(_mode_="debug"),
        [
            "FAIL configs/train.json:corruption#_mode_: 'debug' (_mode_ other than default or callable (debug starts pdb))"
        ],
    ),
    "macro from another file": (
        lambda s: lambda c: c.update(network_def="%/tmp/elsewhere.json#network_def"),
        [
            "FAIL configs/train.json:network_def: %/tmp/elsewhere.json#network_def "
            "(macro reads a file by a path the audit cannot check)"
        ],
    ),
    "a value referring to the imports": (
        lambda s: lambda c: c.update(mods="@imports", determinism="$@mods[0].hub.load('a/b', 'c')"),
        [
            "FAIL configs/train.json:determinism: $@mods[0].hub.load('a/b', 'c') "
            "(a reference to an imported module (@mods): use the module's name)"
        ],
    ),
    "a macro copying the imports": (
        lambda s: lambda c: c.update(mods="%imports", determinism="$@mods#0.utils.benchmark"),
        [
            "FAIL configs/train.json:determinism: $@mods#0.utils.benchmark "
            "(a reference to an imported module (@mods#0): use the module's name)"
        ],
    ),
    "weights_only false": (
        lambda s: (
            lambda c: c.update(
                resume={"_target_": "CheckpointLoader", "load_path": "x.pt", "weights_only": False}
            )
        ),
        [
            "FAIL configs/train.json:resume#weights_only: False (weights_only other than true unpickles arbitrary code)"
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_config_is_refused_and_nothing_runs(case, bundle, sentinel, capsys) -> None:
    change, expected = HOSTILE_CONFIGS[case]
    n = len(
        json.loads((bundle / "configs" / "train.json").read_text())["imports"]
    )  # index of an added import
    edit(bundle, change(sentinel))
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [e.format(s=sentinel, n=n) for e in expected]
    assert out[-1].startswith(f"audit {bundle}: FAILED, {len(expected)} failure")


HOSTILE_EXPRESSIONS = {
    "$eval('1')": "builtin eval runs a string as code",
    "$exec('1')": "builtin exec runs a string as code",
    "$open('/etc/passwd').read()": "builtin open opens any file",
    "$globals()": "builtin globals hands out the interpreter's namespace",
    "$breakpoint()": "builtin breakpoint starts a debugger",
    "$compile('1', 'x', 'eval')": "builtin compile compiles a string to code",
    "$getattr(torch, 'lo' + 'ad')": "getattr() with a name that is neither a literal nor a reference to a literal string",
    "$getattr(torch, 'load')('m.pt')": "torch.load unpickles (weights_only can be switched off)",
    "$getattr(@network, '__class__')": "private or dunder attribute __class__",
    "$getattr(torch, @device)": "getattr() with a name that is neither a literal nor a reference to a literal string",
    "$setattr(torch, 'load', None)": "setattr on a module or builtin changes what other code runs",
    "$list(map(getattr, [1], ['__class__']))": "getattr only called directly with a literal name",
    "$torch.load('m.pt', weights_only=False)": "torch.load unpickles (weights_only can be switched off)",
    "$torch.hub.load('a/b', 'c')": "torch.hub downloads and imports code",
    "$torch.utils.benchmark.Timer('import os').timeit()": "torch.utils.benchmark runs statements given as strings",
    "$monai.utils.optional_import('os')[0].system('x')": "monai.utils.module imports any module by name "
    "(optional_import, instantiate, locate)",
    "$numpy.load('x.npy', allow_pickle=True)": "numpy.load unpickles with allow_pickle",
    "$torch.load(@ckpt_path, weights_only=True)": "torch.load unpickles (weights_only can be switched off)",
    "$monai.handlers.CheckpointLoader(load_path='m.pt', load_dict={}, weights_only=False)": "weights_only other "
    "than True unpickles arbitrary code",
    "$np.lib.npyio.load('x.npy')": "numpy.lib.npyio unpickles with allow_pickle",
    "$'{0.__class__}'.format(1)": "format template '{0.__class__}' reads attributes or items",
    "$str.format('{0.__class__}', 1)": ".format on a template that is not a literal",
    "$list(map(str.format, ['{0.__class__}'], [1]))": ".format only called directly on a literal template "
    "without attribute fields",
    "$(x for x in ()).gi_frame.f_globals": "introspection attribute gi_frame",
    "$(lambda: 0).__globals__": "private or dunder attribute __globals__",
    "$@network.__dict__": "private or dunder attribute __dict__",
    "$__local_refs": "dunder name __local_refs",
    "$[x for x in ()]['__builtins__']": "dunder key '__builtins__'",
    "$(y := 1)": "NamedExpr is not allowed in an expression",
    "$b'cos\\nsystem\\n'": "bytes literal",
    "$mriae.prepare.pipeline.main(['--source', 'demo'])": "mriae.prepare.pipeline.main: a command-line entry point",
    "$mriae.data.slices.os": "mriae.data.slices.os is not a public name of mriae.data.slices (not in its __all__)",
    "$mriae.tools.bundle.BundleHandle('/elsewhere')": "mriae.tools.bundle.BundleHandle parses another bundle's config",
    "$mriae.config.bundle_config('/elsewhere')": "mriae.config.bundle_config parses another bundle's config",
    "$import subprocess": "import: subprocess is not an allowlisted package",
    "$from os import system": "import: os is not an allowlisted package",
    "$import torch; import os": "more than one statement",
    "$from monai.bundle import ConfigParser": "import: monai.bundle parses and runs other configs, downloads bundles",
    "$torch._C": "private or dunder attribute _C",
    "$getattr(torch, '_C')": "private or dunder attribute _C",
    "$os.system('x')": "unknown name os (not imported from an allowlisted package)",
    "$1 +": "not valid Python (SyntaxError)",
    "$torch": "the module torch used as a value (use its attributes)",
    "$[np][0].load('x.npy')": "the module numpy used as a value (use its attributes)",
    "$(lambda: monai.utils)().optional_import('os')": "the module monai.utils used as a value (use its attributes)",
    "$torch.ops": "the module torch.ops used as a value (use its attributes)",
    "$torch.overrides.get_overridable_functions()": "torch.overrides hands out torch's namespaces (modules) as values",
    "$@imports#0.hub.load('a/b', 'c')": "a reference to an imported module (@imports#0): use the module's name",
    "$@imports[0].hub.load('a/b', 'c')": "a reference to an imported module (@imports): use the module's name",
    "$@datalist.query('__import__(1)')": ".query() with arguments evaluates a string (DataFrame.eval / query)",
    "$getattr(@network, 'eval')": "getattr() of .eval",
}


@pytest.mark.parametrize("expression", sorted(HOSTILE_EXPRESSIONS))
def test_hostile_expression_is_refused(expression, bundle, capsys) -> None:
    edit(bundle, lambda c: c.update(determinism=expression))
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [
        f"FAIL configs/train.json:determinism: {expression} ({HOSTILE_EXPRESSIONS[expression]})"
    ]


ALLOWED_EXPRESSIONS = [
    "$torch.device('cpu')",
    "$getattr(torch, 'float32')",
    "$hasattr(@network, 'encoder')",
    "$[i * 2 for i in range(3) if i]",
    "${k: v for k, v in zip('ab', (1, 2))}",
    "$sorted(@datalist, key=lambda d: d['subject'])",
    "$'{} of {n}'.format(1, n=2)",
    '$f"{@seed:>4}"',
    "$np.arange(3).sum() if @amp else None",
    "$monai.transforms.Compose([])",
    "$import torch.nn as nn",
    "$from monai.transforms import Compose",
    "$from mriae.data.slices import SliceDataset",
]


@pytest.mark.parametrize("expression", ALLOWED_EXPRESSIONS)
def test_allowed_expression_passes(expression, bundle, capsys) -> None:
    edit(bundle, lambda c: c.update(determinism=expression))
    rc, out = run(bundle, capsys)
    assert (rc, fails(out)) == (0, [])


def test_getattr_name_from_a_reference_is_checked_through_the_reference(bundle, capsys) -> None:
    edit(bundle, lambda c: c.update(dtype_name="float16", dtype="$getattr(torch, @dtype_name)"))
    assert run(bundle, capsys)[0] == 0
    edit(bundle, lambda c: c.update(dtype_name="load"))
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [
        "FAIL configs/train.json:dtype: $getattr(torch, @dtype_name) "
        "(torch.load unpickles (weights_only can be switched off))"
    ]


def test_terminal_escapes_in_a_config_are_shown_escaped(bundle, capsys) -> None:
    edit(bundle, lambda c: c.update(determinism="$eval('1')\x1b[2K\rFAKE OK\nsecond line"))
    rc, out = run(bundle, capsys)
    assert rc == 1 and len(fails(out)) == 1
    assert "\\x1b[2K\\rFAKE OK\\nsecond line" in fails(out)[0]


def test_json_output_lists_every_target_and_expression(bundle, capsys) -> None:
    rc, out = run(bundle, capsys, "--json")
    report = json.loads("\n".join(out))["bundles"][0]
    assert rc == 0 and report["ok"]
    ids = {(i["file"], i["where"]) for i in report["items"]}
    assert ("configs/train.json", "train#trainer#_target_") in ids
    assert ("configs/train.json", "imports#0") in ids
    assert report["counts"]["_target_"] == sum(i["kind"] == "_target_" for i in report["items"])


# --------------------------------------------------------------------- files of the bundle
def test_manifest_round_trip(bundle, capsys) -> None:
    path = A.write_manifest(bundle)
    lines = path.read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == sorted(
        p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p != path
    )
    assert A.check_manifest(bundle) == []
    rc, out = run(bundle, capsys, "--require-manifest")
    assert rc == 0 and out[-1].endswith("manifest checked)")
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "--quiet", "-c", A.MANIFEST], cwd=bundle).returncode == 0


def test_write_manifest_from_the_command_line_only_for_a_passing_bundle(bundle, capsys) -> None:
    rc, out = run(bundle, capsys, "--write-manifest")
    assert rc == 0 and out[-1] == f"wrote {bundle / A.MANIFEST}"
    assert A.audit(bundle, require_manifest=True).ok
    (bundle / A.MANIFEST).unlink()
    edit(bundle, lambda c: c.update(seed="$eval('1')"))
    rc, out = run(bundle, capsys, "--write-manifest")
    assert rc == 1 and not (bundle / A.MANIFEST).exists()


def test_a_symlinked_manifest_fails(bundle, tmp_path, capsys) -> None:
    (tmp_path / "elsewhere").write_text("")
    (bundle / A.MANIFEST).symlink_to(tmp_path / "elsewhere")
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == ["FAIL manifest.sha256: a symbolic link (the manifest must be a file of the bundle)"]


def test_missing_manifest_fails_when_required(bundle, capsys) -> None:
    rc, out = run(bundle, capsys, "--require-manifest")
    assert rc == 1
    assert fails(out) == ["FAIL manifest.sha256: no manifest (a packaged bundle must have one)"]


def test_file_tampered_after_the_manifest(bundle, capsys) -> None:
    A.write_manifest(bundle)
    edit(bundle, lambda c: c.update(seed=1))  # an innocent-looking change is still a change
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert len(fails(out)) == 1
    assert fails(out)[0].startswith("FAIL configs/train.json: changed after packaging (sha256 ")


def test_file_added_or_removed_after_the_manifest(bundle, capsys) -> None:
    A.write_manifest(bundle)
    (bundle / "configs" / "extra.json").write_text("{}")
    (bundle / "docs" / "README.md").unlink()
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [
        "FAIL configs/extra.json: not listed in the manifest (added after packaging)",
        "FAIL docs/README.md: listed in the manifest but missing (removed after packaging)",
    ]


def test_pickle_payload_in_model_pt_fails_without_running(bundle, sentinel, capsys) -> None:
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(pickle.dumps(_Payload(sentinel)))
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [
        f"FAIL models/model.pt: {os.system.__module__}.system (a pickle global that can run code)"
    ]


def test_pickle_payload_inside_a_torch_archive(bundle, sentinel, capsys) -> None:
    import torch

    (bundle / "models").mkdir()
    torch.save({"w": torch.zeros(2), "x": _Payload(sentinel)}, bundle / "models" / "model.pt")
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert len(fails(out)) == 1
    assert fails(out)[0].endswith(
        f"/data.pkl: {os.system.__module__}.system (a pickle global that can run code)"
    )


def test_the_pickle_payload_is_live(tmp_path) -> None:
    """The control: unpickling the payload does run it, so the two tests above can fail."""
    flag = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(flag)))
    assert flag.exists()


def test_real_checkpoints_pass(bundle, capsys) -> None:
    import torch

    from mriae.networks import ResUNetAE

    (bundle / "models").mkdir()
    net = ResUNetAE(spatial_dims=2, img_size=32, channels=(4, 8, 16))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}  # what BestCheckpoint saves
    torch.save(state, bundle / "models" / "model.pt")
    torch.save(
        {"model": state, "epoch": 3}, bundle / "models" / "legacy.pt", _use_new_zipfile_serialization=False
    )
    rc, out = run(bundle, capsys, "--list")
    assert (rc, fails(out)) == (0, [])
    assert "ok   models/model.pt:model/data.pkl: torch._utils._rebuild_tensor_v2" in out
    assert "ok   models/legacy.pt:: torch._utils._rebuild_tensor_v2" in out
    assert "2 weights files" in out[-1]


def test_python_code_and_symlinks_in_a_bundle_fail(bundle, capsys) -> None:
    (bundle / "torch.py").write_text("import os\n")  # would shadow torch when run from the bundle folder
    (bundle / "configs" / "link.json").symlink_to("/etc/hostname")
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [
        "FAIL configs/link.json: a symbolic link or special file (it can point outside the bundle)",
        "FAIL torch.py: Python code or a native library (a bundle ships configs and weights, code lives in the package)",
    ]


def test_exports_and_the_wheel_of_a_release_warn_only_where_a_release_keeps_them(bundle, tmp_path, capsys) -> None:
    """TorchScript in models/model.ts is one warning (mriae never loads it; its pickles are still
    read); the same archive as models/model.pt, or a .ts elsewhere, fails; so does a pickle payload
    inside an export, and a wheel outside wheels/."""
    import torch

    ts = tmp_path / "net.ts"
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())).save(str(ts))
    (bundle / "models").mkdir()
    shutil.copy(ts, bundle / "models" / "model.ts")
    shutil.copy(ts, bundle / "models" / "model.pt")
    (bundle / "docs" / "net.ts").write_bytes(ts.read_bytes())
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "import os\n")
    (bundle / "wheels").mkdir()
    shutil.copy(wheel, bundle / "wheels" / wheel.name)
    shutil.copy(wheel, bundle / "models" / wheel.name)
    report = A.audit(bundle)
    failed = sorted({f.file for f in report.failures})
    assert failed == ["docs/net.ts", "models/model.pt", f"models/{wheel.name}"]
    assert sorted(f.file for f in report.warnings) == ["manifest.sha256", "models/model.ts", f"wheels/{wheel.name}"]
    assert any(i.file == "models/model.ts" and i.text.startswith("__torch__.") and i.ok for i in report.items)
    # a payload inside the export's pickle is still a failure
    with zipfile.ZipFile(ts) as src, zipfile.ZipFile(bundle / "models" / "model.ts", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, pickle.dumps(os.system) if info.filename.endswith("/data.pkl") else data)
    report = A.audit(bundle)
    assert any(f.file == "models/model.ts" and "posix.system" in f.text for f in report.failures)


# ------------------------------------------------------------------------------ logging.conf
def _logging(bundle: Path, old: str, new: str, prefix: str = "") -> None:
    path = bundle / "configs" / "logging.conf"
    text = path.read_text()
    assert old in text
    path.write_text(prefix + text.replace(old, new))


HOSTILE_LOGGING = {
    "class=subprocess.Popen": (
        ("class=StreamHandler", "class=subprocess.Popen"),
        "FAIL configs/logging.conf:handler_consoleHandler#class: subprocess.Popen (not one of logging's own handler classes)",
    ),
    "args= with a call": (
        ("args=(sys.stdout,)", "args=(__import__('os').system('touch {s}'),)"),
        "FAIL configs/logging.conf:handler_consoleHandler#args: (__import__('os').system('touch {s}'),) "
        "(not a literal (fileConfig evals it))",
    ),
    "formatter class imported by name": (
        ("[formatter_fullFormatter]\n", "[formatter_fullFormatter]\nclass=evil.Formatter\n"),
        "FAIL configs/logging.conf:formatter_fullFormatter#class: evil.Formatter (not one of logging's own formatter classes)",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LOGGING))
def test_hostile_logging_conf(case, bundle, sentinel, capsys) -> None:
    (old, new), expected = HOSTILE_LOGGING[case]
    _logging(bundle, old, new.format(s=sentinel))
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [expected.format(s=sentinel)]


def test_logging_interpolation_is_checked_after_interpolation(bundle, sentinel, capsys) -> None:
    """``[DEFAULT]`` values reach ``args=`` through ``%(name)s``: the raw text is a harmless literal,
    the text ``fileConfig`` evals is a call. MONAI 1.6.1's own check reads the raw text."""
    payload = f"x', __import__('os').system('touch {sentinel}'), '"
    _logging(
        bundle, "args=(sys.stdout,)", "args=(sys.stdout, '%(p)s')", prefix=f"[DEFAULT]\np = {payload}\n\n"
    )
    rc, out = run(bundle, capsys)
    assert rc == 1
    assert fails(out) == [
        f"FAIL configs/logging.conf:handler_consoleHandler#args: (sys.stdout, '{payload}') "
        "(not a literal (fileConfig evals it))"
    ]


# --------------------------------------------------------------------------- require_trusted
def _load_bundle(root: Path, trust: bool = False):
    """How an entry point loads a bundle: audit first, parse only what passed."""
    from monai.bundle import ConfigWorkflow

    A.require_trusted(root, trust=trust)
    workflow = ConfigWorkflow(
        config_file=str(root / "configs" / "train.json"),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=False,  # fileConfig would replace pytest's log handlers; the audit checked the file
        workflow_type="train",
    )
    workflow.initialize()
    return workflow


def test_require_trusted_refuses_a_hostile_bundle_before_it_runs(bundle, tmp_path) -> None:
    flag = tmp_path / "initialized"
    edit(bundle, lambda c: c.update(initialize=[f"$__import__('pathlib').Path({str(flag)!r}).touch()"]))
    with pytest.raises(InputError) as err:
        _load_bundle(bundle)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"{bundle}: refused, 1 audit failure, first: FAIL configs/train.json:initialize#0: "
    )
    assert "(dunder name __import__)" in msg and msg.endswith("to run it anyway pass --trust-bundle")
    assert not flag.exists()
    _load_bundle(bundle, trust=True)  # the control: trusted, the same bundle does run its code
    assert flag.exists()


def test_require_trusted_passes_a_clean_bundle(bundle) -> None:
    report = A.require_trusted(bundle)
    assert report.ok and report.counts["$"] > 40
