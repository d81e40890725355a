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
