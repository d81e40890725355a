"""prepare never removes what it did not create: the output folder rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _prepare(inp: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "mriae.prepare",
        "--source",
        "nifti",
        "--input",
        str(inp),
        "--output",
        str(out),
    ]
    return subprocess.run(cmd + ["--workers", "1", *extra], capture_output=True, text=True, timeout=600)


def _one_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if "nvImageCodec" not in ln]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_volumes(small_cohort, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("vols")
    for f in sorted((small_cohort / "subjects").glob("demo-*.nii.gz"))[:2]:
        shutil.copy(f, src / f.name)
    return src


def test_a_foreign_folder_is_refused_and_left_untouched(two_volumes, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("two years of work")
    (out / "figures").mkdir()
    (out / "figures" / "f1.png").write_bytes(b"\x89PNG")
    before = _snapshot(out)
    for extra in ((), ("--overwrite",)):
        res = _prepare(two_volumes, out, *extra)
        assert res.returncode == 2
        line = _one_line(res)
        assert str(out) in line and "not an earlier prepare output" in line
        assert _snapshot(out) == before
    assert not list(tmp_path.glob(".results.*"))


def test_output_equal_to_input_keeps_the_source_volumes(two_volumes, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(two_volumes, src)
    before = _snapshot(src)
    for extra in ((), ("--overwrite",)):
        res = _prepare(src, src, *extra)
        assert res.returncode == 2 and "holds the input" in _one_line(res)
        assert _snapshot(src) == before
    res = _prepare(src, src.parent, "--overwrite")  # the input inside the output: refused too
    assert res.returncode == 2 and "holds the input" in _one_line(res)
    assert _snapshot(src) == before


def test_overwrite_replaces_only_an_earlier_prepare_output(two_volumes, tmp_path):
    out = tmp_path / "prep"
    assert _prepare(two_volumes, out).returncode == 0
    first = json.loads((out / "datalist.json").read_text())
    assert _prepare(two_volumes, out).returncode == 0  # same settings: reused, nothing rebuilt
    assert json.loads((out / "datalist.json").read_text())["created"] == first["created"]
    res = _prepare(two_volumes, out, "--slice-size", "96")
    assert res.returncode == 2 and "--overwrite" in _one_line(res)
    assert json.loads((out / "datalist.json").read_text()) == first
    (out / "notes.txt").write_text("mine")  # something prepare did not write
    res = _prepare(two_volumes, out, "--slice-size", "96", "--overwrite")
    assert res.returncode == 2 and "notes.txt" in _one_line(res)
    assert (out / "notes.txt").read_text() == "mine" and json.loads(
        (out / "datalist.json").read_text()
    ) == first
    (out / "notes.txt").unlink()
    res = _prepare(two_volumes, out, "--slice-size", "96", "--overwrite")
    assert res.returncode == 0, res.stderr
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["preprocessing"]["slice_size"] == 96
    assert sorted(p.name for p in out.iterdir()) == ["cache", "datalist.json"]
    assert not list(tmp_path.glob(".prep.*"))


def test_stale_temporary_folders_of_a_killed_prepare_are_cleaned(two_volumes, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = dead.stdout.strip()  # a process that has exited
    stale = tmp_path / ".prep.tmp-abc123"
    (stale / "cache").mkdir(parents=True)
    (stale / ".mriae-prepare-tmp").write_text(pid)
    alive = tmp_path / ".prep.tmp-live"
    alive.mkdir()
    (alive / ".mriae-prepare-tmp").write_text(str(os.getpid()))  # a prepare still running
    unmarked = tmp_path / ".prep.tmp-notours"
    unmarked.mkdir()
    (unmarked / "keep.txt").write_text("not written by prepare")
    assert _prepare(two_volumes, tmp_path / "prep").returncode == 0
    assert not stale.exists() and alive.exists() and (unmarked / "keep.txt").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--spacing", "0", "0", "0"], "spacing"),
        (["--spacing", "1", "1"], "--spacing"),
        (["--slice-size", "0"], "slice size"),
        (["--percentiles", "99", "1"], "percentiles"),
        (["--fractions", ".5", ".5", ".5"], "--fractions"),
        (["--axcodes", "XYZ"], "axcodes"),
        (["--min-mask-fraction", "1.5"], "mask fraction"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(two_volumes, tmp_path, capsys, args, words):
    from mriae.prepare.pipeline import main

    argv = ["--source", "nifti", "--input", str(two_volumes), "--output", str(tmp_path / "out"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_folder_without_demographics_gets_a_usable_seeded_split(two_volumes, tmp_path):
    res = _prepare(two_volumes, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "plain seeded split (no demographics)" in res.stdout
    dl = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert len(dl["training"]) == 1 and len(dl["validation"]) == 1  # two subjects: one to train, one to validate
    assert dl["split"]["method"].startswith("plain seeded split")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(two_volumes.glob("*.nii.gz"))[0], one)
    res = _prepare(one, tmp_path / "out1")
    assert res.returncode == 2 and "need at least 2" in _one_line(res)
