"""The clinician's HTML report (``mriae.share.report``): plan warnings, a self-contained file, correct
aspect ratios, and a real headless Chromium that renders it, loads every image and moves the sliders.

Real data: a crop of the ICBM152 2009a T1 (``template_crop``) with Gaussian noise; the 'output' is a
3x3x3 box smoothing of it. Chromium is Debian's ``chromium`` (``apt-get install -y chromium``):
without it the browser tests skip, except under CI (``CI`` set), where they fail.
``MRIAE_KEEP_SCREENSHOT=1`` copies the screenshot to docs/figures/share_report.png.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import NATIVE_PLAN, REPO, template_crop

from mriae.prepare.plan import plan_config
from mriae.share.report import DISCLAIMER, PLANES, intensity_summary, plan_warnings, write_report

PLAN = plan_config(NATIVE_PLAN).to_dict()  # the shipped denoiser's plan: 1 mm, RIA
CARD = {
    "name": "Res<b>&UNet",
    "version": "1.2<3",
    "description": "Residual U-Net denoiser for T1-weighted brain MRI.",
    "intended_use": "Research on denoising; not for diagnosis.",
    "metrics": {"PSNR (dB)": 31.234567, "SSIM": 0.91234},
}


def _data(seed=0):
    from scipy.ndimage import uniform_filter

    vol, _ = template_crop()  # RAS; as a DICOM axial series: (slices S->I, rows A->P, cols R->L)
    vol = np.ascontiguousarray(vol[::-1, ::-1, ::-1].transpose(2, 1, 0))
    rng = np.random.default_rng(seed)
    noisy = vol + rng.normal(0, 0.04 * np.percentile(vol, 99.5), vol.shape).astype(np.float32)
    out = uniform_filter(noisy, 3)
    return noisy, out, noisy - out


@pytest.fixture(scope="module")
def volumes():
    return _data()


@pytest.fixture(scope="module")
def report(volumes, tmp_path_factory):
    noisy, out, res = volumes
    warns = plan_warnings(PLAN, spacing=(1, 1, 1), axcodes="LPS", modality="MR", intensity=intensity_summary(noisy))
    path = tmp_path_factory.mktemp("report") / "report.html"
    got = write_report(path, input=noisy, output=out, residual=res, spacing=(1, 1, 1), card=CARD, warnings=warns)
    assert got == path and path.is_file()
    return path, warns


def _plane_data(text: str, name: str) -> dict:
    m = re.search(rf'<script type="application/json" id="data-{name}">(.*?)</script>', text, re.S)
    assert m, f"no data block for {name}"
    return json.loads(m.group(1))


def _decode(uri: str) -> np.ndarray:
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


# ---------------------------------------------------------------------------------- plan_warnings
def test_in_plan_gives_no_warning():
    vol, _ = template_crop()
    assert plan_warnings(PLAN, spacing=(1, 1, 1), axcodes="RIA", intensity=intensity_summary(vol), modality="MR") == []
    # a 10 % difference and lower-case axcodes: still in plan
    assert plan_warnings(PLAN, spacing=(1.1, 0.95, 1.0), axcodes="ria") == []


def test_anisotropic_spacing_is_named():
    w = plan_warnings(PLAN, spacing=(0.5, 0.5, 5.0), axcodes="RIA")
    assert w and all(isinstance(s, str) and "\n" not in s for s in w)
    text = " ".join(w)
    assert "0.5 x 0.5 x 5 mm" in text and "anisotropic" in text
    assert any("training spacing 1 x 1 x 1 mm" in s for s in w)


def test_spacing_off_by_more_than_a_quarter():
    (w,) = plan_warnings(PLAN, spacing=(1.0, 1.0, 1.3), axcodes="RIA")
    assert "axis 2" in w and "1 x 1 x 1.3 mm" in w
    # in the plan's axis order: a scan in RAS with 1.3 mm along A is 1.3 mm along the plan's axis 2 (RIA)
    (w,) = plan_warnings(PLAN, spacing=(1.0, 1.3, 1.0), axcodes="RAS")[:1]
    assert "axis 2" in w
    # anisotropic plans (S4's 1.2 x 1.875 x 1.875) do not flag their own anisotropy
    s4 = plan_config(None).to_dict()
    assert plan_warnings(s4, spacing=s4["spacing"], axcodes=s4["axcodes"]) == []


def test_orientation_modality_and_intensity_warnings():
    vol, _ = template_crop()
    (w,) = plan_warnings(PLAN, spacing=(1, 1, 1), axcodes="LPS")
    assert "LPS" in w and "RIA" in w and "own grid" in w
    (w,) = plan_warnings(PLAN, spacing=(1, 1, 1), axcodes="RIA", modality="CT")
    assert "CT" in w and "MR" in w
    (w,) = plan_warnings(PLAN, spacing=(1, 1, 1), axcodes="RIA", intensity=intensity_summary(vol - vol.mean()))
    assert "negative" in w
    (w,) = plan_warnings(PLAN, spacing=(1, 1, 1), axcodes="RIA", intensity=intensity_summary(1000 + vol * 1e-6))
    assert "dynamic range is tiny" in w
    (w,) = plan_warnings(PLAN, spacing=(1, 1, 1), axcodes="RIA", intensity=intensity_summary((vol > 100).astype(np.uint8)))
    assert "grey levels" in w
    # recorded training statistics: a scan on a 1000x other scale
    plan = dict(PLAN, extra={"intensity": intensity_summary(vol)})
    (w,) = plan_warnings(plan, spacing=(1, 1, 1), axcodes="RIA", intensity=intensity_summary(vol * 1000))
    assert "another scale" in w


def test_rules_without_their_plan_key_are_skipped():
    vol, _ = template_crop()
    bad = intensity_summary(vol - vol.mean())
    assert plan_warnings(PLAN, spacing=(0.5, 0.5, 5), axcodes="LPS", intensity=bad)  # all apply
    bare = {k: v for k, v in PLAN.items() if k not in ("spacing", "axcodes", "lower_percentile", "upper_percentile")}
    assert plan_warnings(bare, spacing=(0.5, 0.5, 5), axcodes="LPS", intensity=bad) == []
    # native plan (spacing None): no spacing comparison, but anisotropy is still flagged
    (w,) = plan_warnings(dict(PLAN, spacing=None), spacing=(0.5, 0.5, 5), axcodes="RIA")
    assert "anisotropic" in w


# ----------------------------------------------------------------------------------- write_report
class _Attrs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_is_self_contained_and_escaped(report):
    path, warns = report
    text = path.read_text(encoding="utf-8")
    p = _Attrs()
    p.feed(text)
    # no fetch of anything: ':' is not a base64 character, so this holds for the whole file
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I) and "<link" not in text.lower()
    assert not any(tag in ("iframe", "object", "embed") for tag, _ in p.tags)
    srcs = [a["src"] for tag, a in p.tags if "src" in a]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(a.get("href", "#").startswith("#") for _, a in p.tags)
    # banner, card (escaped), warnings
    assert DISCLAIMER in text and 'id="banner"' in text
    assert "Res&lt;b&gt;&amp;UNet" in text and "<b>&UNet" not in text
    assert "v1.2&lt;3" in text and "PSNR (dB)</b>: 31.23" in text and "Research on denoising" in text
    assert warns and all(html.escape(w) in text for w in warns)
    ids = {a.get("id") for _, a in p.tags}
    for name, _ in PLANES:
        assert {f"slider-{name}", f"label-{name}", *(f"img-{name}-{k}" for k in ("input", "output", "residual"))} <= ids


def test_every_slice_is_embedded(report, volumes):
    text = report[0].read_text(encoding="utf-8")
    shape = volumes[0].shape
    assert "showing" not in text  # small volume: nothing subsampled
    for name, axis in PLANES:
        d = _plane_data(text, name)
        assert d["n"] == shape[axis] and d["index"] == list(range(shape[axis]))
        for kind in ("input", "output", "residual"):
            assert len(d[kind]) == shape[axis] and len(set(d[kind])) > shape[axis] // 2
        m = re.search(rf'id="slider-{name}" min="0" max="(\d+)"', text)
        assert int(m.group(1)) == shape[axis] - 1
        assert f'id="label-{name}">slice {shape[axis] // 2 + 1} / {shape[axis]}<' in text


def test_aspect_follows_spacing_and_windows(volumes, tmp_path):
    noisy, out, _ = volumes
    n0, n1, n2 = noisy.shape  # 60 x 80 x 64
    path = write_report(tmp_path / "r.html", input=noisy, output=noisy, residual=np.zeros_like(noisy),
                        spacing=(2, 1, 1), card={"name": "m"}, warnings=[])
    text = path.read_text()
    assert "Input within the training plan" in text
    shapes = {name: _decode(_plane_data(text, name)["input"][0]).shape for name, _ in PLANES}
    assert shapes["axial"] == (n1, n2)  # across axis 0: rows x cols, 1 x 1 mm
    for name, across in (("coronal", n2), ("sagittal", n1)):  # axis 0 (2 mm) is vertical: twice as tall per voxel
        h, w = shapes[name]
        assert w == across and abs((h / n0) / (w / across) - 2) < 0.05
    d = _plane_data(text, "axial")
    k = len(d["index"]) // 2
    # one window for input and output; the residual's is symmetric around 0 (0 -> mid grey)
    assert d["input"][k] == d["output"][k]
    assert np.all(_decode(d["residual"][k]) == 128)
    img = _decode(d["input"][k])
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255 and img.std() > 20

    # a long side over 256 px is shrunk; aspect kept
    big = np.repeat(noisy, 6, axis=1)  # 60 x 480 x 64
    path = write_report(tmp_path / "b.html", input=big, output=big, residual=big * 0, spacing=(1, 0.5, 1),
                        card={}, warnings=[])
    shapes = {name: _decode(_plane_data(path.read_text(), name)["input"][0]).shape for name, _ in PLANES}
    assert max(max(s) for s in shapes.values()) <= 256
    assert abs(shapes["axial"][0] / shapes["axial"][1] - 240 / 64) < 0.1


def test_large_files_subsample_slices_and_say_so(volumes, tmp_path):
    noisy, out, res = volumes
    path = write_report(tmp_path / "s.html", input=noisy, output=out, residual=res, spacing=(1, 1, 1),
                        card={"name": "m"}, warnings=[], max_bytes=1_500_000, max_slices=24)
    text = path.read_text()
    assert path.stat().st_size < 1.3 * 1_500_000
    for name, axis in PLANES:
        d = _plane_data(text, name)
        keep = len(d["index"])
        assert 8 <= keep <= 24 and len(d["input"]) == len(d["residual"]) == keep
        assert d["index"][0] == 0 and d["index"][-1] == noisy.shape[axis] - 1
        assert f"showing {keep} of {noisy.shape[axis]} slices" in text
        m = re.search(rf'id="slider-{name}" min="0" max="(\d+)"', text)
        assert int(m.group(1)) == keep - 1


def test_whole_template_report_stays_small(tmp_path):
    import nibabel as nib
    from scipy.ndimage import uniform_filter

    from mriae.prepare.cohort import locate_template

    vol = np.asarray(nib.load(locate_template("icbm152_2009a_t1")).dataobj, dtype=np.float32)[8:189, 8:225, 4:185]
    assert vol.shape == (181, 217, 181)
    noisy = vol + np.random.default_rng(1).normal(0, 0.03 * vol.max(), vol.shape).astype(np.float32)
    out = uniform_filter(noisy, 3)
    t = time.perf_counter()
    path = write_report(tmp_path / "full.html", input=noisy, output=out, residual=noisy - out, spacing=(1, 1, 1),
                        card=CARD, warnings=[])
    dt = time.perf_counter() - t
    size = path.stat().st_size
    print(f"181x217x181: {dt:.2f} s, {size / 1e6:.2f} MB")
    assert size < 16e6  # its speed is a benchmark's business, not a test's


def test_bad_inputs_are_refused(volumes, tmp_path):
    noisy, out, res = volumes
    with pytest.raises(ValueError):
        write_report(tmp_path / "x.html", input=noisy, output=out[1:], residual=res, spacing=(1, 1, 1), card={}, warnings=[])
    with pytest.raises(ValueError):
        write_report(tmp_path / "x.html", input=noisy, output=out, residual=res, spacing=(1, 0, 1), card={}, warnings=[])
    assert not (tmp_path / "x.html").exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------- a real browser
@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "Debian chromium not installed (apt-get install -y chromium): the headless-browser checks need it"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _chromium(exe: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    # --no-sandbox: needed as root and in most containers; the page is our own local file
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _selftest(exe: str, page: Path, tmp_path: Path) -> str:
    proc = _chromium(exe, tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri() + "#selftest")
    m = re.search(r'<pre id="selftest"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert m, f"chromium gave no selftest element (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return m.group(1)


def test_browser_renders_loads_images_and_moves_sliders(chromium, report, tmp_path):
    result = _selftest(chromium, report[0], tmp_path)
    assert result.startswith("PASS"), result
    assert "9 images loaded" in result
    for name, _ in PLANES:
        assert re.search(rf"{name} slice \d+ / \d+ -&gt; slice 1 / \d+", result), result


def test_browser_selftest_catches_a_broken_image(chromium, report, tmp_path):
    # a report whose coronal output image is not a PNG: the same check must fail
    text = report[0].read_text(encoding="utf-8")
    broken = re.sub(r'(id="img-coronal-output" src=")data:image/png;base64,[^"]*', r"\1data:image/png;base64,AAAA", text)
    assert broken != text
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    result = _selftest(chromium, page, tmp_path)
    assert result.startswith("FAIL") and "img-coronal-output did not load" in result, result


def test_browser_screenshot(chromium, report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    proc = _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1400,1000",
                     "--hide-scrollbars", report[0].as_uri())
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
    assert img.shape[:2] == (1000, 1400) and img.var() > 0
    banner = img[:40].reshape(-1, 3)
    assert np.any((banner[:, 0] > 150) & (banner[:, 1] < 40) & (banner[:, 2] < 60)), "no red banner at the top"
    grey = img[200:, :].reshape(-1, 3)
    assert np.unique(grey[:, 0]).size > 64, "no greyscale images rendered"
    if os.environ.get("MRIAE_KEEP_SCREENSHOT") == "1":
        dest = REPO / "docs" / "figures" / "share_report.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)


def test_non_finite_voxels_do_not_break_the_report(volumes, tmp_path):
    noisy, out, res = (v.copy() for v in volumes)
    noisy[0, :5] = np.nan
    res[1, 0, 0] = np.inf
    assert np.isfinite(intensity_summary(noisy)["p99_5"])
    path = write_report(tmp_path / "n.html", input=noisy, output=out, residual=res, spacing=(1, 1, 1),
                        card={"name": "m"}, warnings=[])
    img = _decode(_plane_data(path.read_text(), "axial")["input"][0])
    assert img.std() > 0 and np.isnan(noisy).any()  # the caller's array is left as it was
