"""A self-contained HTML report for the clinician who asked for a denoising run on their scan.

``plan_warnings`` says, one plain-English line each, where the scan lies outside the preprocessing
plan stored beside the weights (spacing, anisotropy, orientation, modality, intensities).
``write_report`` writes ONE HTML file: a "research use only" banner, the model card, those warnings
and the three planes of the volume (input | output | residual side by side, a slice slider per
plane). Everything is inside the file: the images are PNG ``data:`` URIs, the script is inline,
nothing is fetched from anywhere, so it can be mailed or archived as it is. No patient identifier
is taken or written (the caller's ``title`` is the only free text besides the model card).

Array convention: ``input``, ``output`` and ``residual`` are 3-D arrays ``(slices, rows, cols)`` as
read from a DICOM series (first axis = slice); ``spacing`` is the voxel size along those axes in mm.
The planes are named for an axially acquired series: "axial" = across axis 0 (shows rows x cols),
"coronal" = across axis 1 (shows slices x cols), "sagittal" = across axis 2 (shows slices x rows).

A page opened with the fragment ``#selftest`` checks itself once loaded (every image decoded, each
slider changes its images and label) and writes ``PASS ...`` or ``FAIL ...`` into
``<pre id="selftest">``, which a headless browser's ``--dump-dom`` shows (tests drive it so).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mriae.files import atomic_write_text

__all__ = ["plan_warnings", "intensity_summary", "write_report", "PLANES", "DISCLAIMER"]

DISCLAIMER = "Research use only \u2014 not for clinical use"
# plane name, the array axis it cuts across
PLANES = (("axial", 0), ("coronal", 1), ("sagittal", 2))
_SPACING_TOL = 0.25  # relative difference to the plan's spacing that is flagged
_ANISO_RATIO = 2.0  # coarsest / finest axis above which a scan is called anisotropic
_MAX_SIDE = 256  # long side of a plane image (px)


# ----------------------------------------------------------------------------------------- warnings
def _mm(values) -> str:
    return " x ".join(f"{float(v):g}" for v in values) + " mm"


def _plan_axcodes(plan: Mapping) -> str | None:
    codes = plan.get("axcodes", plan.get("orientation"))
    return None if codes is None else str(codes).upper()


def _to_plan_order(spacing: Sequence[float], axcodes: str | None, plan_codes: str | None) -> list[float]:
    """The scan's spacing in the axis order of the plan's orientation (the model sees the scan after
    reorientation to ``plan_codes``); unchanged when either orientation is unknown or invalid."""
    sp = [float(v) for v in spacing]
    if not axcodes or not plan_codes:
        return sp
    try:
        import nibabel as nib

        ornt = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt(tuple(axcodes.upper())),
            nib.orientations.axcodes2ornt(tuple(plan_codes)),
        )
    except (ValueError, KeyError, TypeError):
        return sp
    out = [0.0] * 3
    for i, (j, _) in enumerate(ornt):
        out[int(j)] = sp[i]
    return out


def intensity_summary(volume: np.ndarray) -> dict:
    """The intensity statistics ``plan_warnings`` reads: 0.5 / 99.5 percentiles, the fraction of
    negative voxels and the dtype of ``volume`` (a 3-D array as read)."""
    v = np.asarray(volume)
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        v = v[np.isfinite(v)]
    if v.size == 0:
        v = np.zeros(1, np.float32)
    flat = v.reshape(-1)
    if flat.size > 4_000_000:  # percentiles of a strided sample: enough for a warning, 8x faster
        flat = flat[:: flat.size // 2_000_000]
    lo, hi = np.percentile(flat.astype(np.float64, copy=False), [0.5, 99.5])
    return {
        "p0_5": float(lo),
        "p99_5": float(hi),
        "min": float(v.min()),
        "max": float(v.max()),
        "negative_fraction": float(np.count_nonzero(v < 0) / max(v.size, 1)),
        "dtype": str(v.dtype),
    }


def plan_warnings(
    plan: Mapping,
    *,
    spacing: Sequence[float],
    axcodes: str,
    intensity: Mapping | None = None,
    modality: str | None = None,
) -> list[str]:
    """Plain-English warnings, one line each, where the scan lies outside the training ``plan``
    (the ``plan`` dict of the weights' ``model.json``, see ``mriae.prepare.plan``). ``spacing`` is the scan's
    voxel size in mm along its array axes, ``axcodes`` their orientation (e.g. "LPS"), ``intensity``
    the scan's ``intensity_summary`` (or any dict with some of its keys), ``modality`` its DICOM
    modality (e.g. "MR"). A rule is applied only when the plan holds what it compares with:

    * spacing (plan ``spacing``, not ``None``): any axis differs from the plan's by more than 25 %;
    * anisotropy (plan has a ``spacing`` key, ``None`` = native grid included): the coarsest axis is
      more than twice the finest while the plan's own spacing is not;
    * orientation (plan ``axcodes`` or ``orientation``): the scan's differs (informational);
    * modality (plan ``modality``, else MR since every mriae model is trained on MRI): not MR;
    * intensity (plan ``lower_percentile``/``upper_percentile`` or recorded training statistics in
      ``intensity`` / ``extra["intensity"]``): negative values, a tiny or quantised dynamic range,
      or a 99.5th percentile more than 10x away from the training data's.
    """
    warnings: list[str] = []
    plan = dict(plan or {})
    plan_codes = _plan_axcodes(plan)
    sp = [float(v) for v in spacing]
    if len(sp) != 3 or not all(np.isfinite(v) and v > 0 for v in sp):
        warnings.append(f"The voxel spacing of the scan ({spacing!r}) is not three positive millimetre values.")
        sp = []

    if sp and "spacing" in plan:
        want = plan["spacing"]
        if want is not None:
            want = [float(v) for v in want]
            have = _to_plan_order(sp, axcodes, plan_codes)
            off = [i for i in range(3) if abs(have[i] - want[i]) > _SPACING_TOL * want[i]]
            if off:
                warnings.append(
                    f"Voxel spacing {_mm(have)} differs from the training spacing {_mm(want)} by more than "
                    f"{_SPACING_TOL:.0%} on axis {', '.join(str(i) for i in off)} (in {plan_codes or 'plan'} order); "
                    "the model may denoise this scan less well."
                )
        ratio = max(sp) / min(sp)
        plan_ratio = 1.0 if want is None else max(want) / min(want)
        if ratio > _ANISO_RATIO and plan_ratio <= _ANISO_RATIO:
            warnings.append(
                f"The scan is anisotropic: voxel spacing {_mm(sp)} (coarsest axis {ratio:.3g}x the finest); "
                "the model was trained on near-isotropic voxels, so expect weaker results across the thick slices."
            )

    if plan_codes and axcodes and str(axcodes).upper() != plan_codes:
        warnings.append(
            f"The scan's orientation {str(axcodes).upper()} differs from the training orientation {plan_codes}; "
            "the model reorients it and runs on the scan's own grid, so this is informational only."
        )

    if modality is not None:
        want_mod = str(plan.get("modality") or (plan.get("extra") or {}).get("modality") or "MR").upper()
        if str(modality).strip().upper() != want_mod:
            warnings.append(
                f"The scan's modality is {str(modality).strip() or 'unknown'}, not {want_mod}: "
                "the model was trained on MR images only and its output is not meaningful here."
            )

    train = plan.get("intensity") or (plan.get("extra") or {}).get("intensity")
    has_scaling = "lower_percentile" in plan or "upper_percentile" in plan
    if intensity and (has_scaling or train):
        warnings.extend(_intensity_warnings(dict(intensity), dict(train) if train else None))
    return warnings


def _intensity_warnings(have: dict, train: dict | None) -> list[str]:
    out: list[str] = []
    neg = have.get("negative_fraction")
    lo, hi = have.get("p0_5"), have.get("p99_5")
    if (neg is not None and float(neg) > 0) or (neg is None and have.get("min") is not None and float(have["min"]) < 0):
        share = f" ({float(neg):.1%} of the voxels)" if neg is not None else ""
        out.append(
            f"The scan has negative intensities{share}; MR magnitude images have none, so it may be a "
            "phase, difference or already processed image."
        )
    elif neg is None and lo is not None and float(lo) < 0:
        out.append("The scan has negative intensities (0.5th percentile below 0); MR magnitude images have none.")
    if lo is not None and hi is not None:
        lo, hi = float(lo), float(hi)
        span = hi - lo
        dtype = str(have.get("dtype", ""))
        integer = dtype.startswith(("int", "uint"))
        if span <= 0 or span < 1e-3 * max(abs(lo), abs(hi), 1e-12):
            out.append(
                f"The scan's dynamic range is tiny (0.5th-99.5th percentile {lo:g} to {hi:g}): the image is "
                "nearly constant and the output will not be meaningful."
            )
        elif integer and span < 32:
            out.append(
                f"The scan's dynamic range is tiny: only about {span:.0f} grey levels between the 0.5th and "
                "99.5th percentile ({dtype} data); it may be a mask or label image."
            )
        if train and train.get("p99_5") and hi > 0:
            ref = float(train["p99_5"])
            if ref > 0 and not 0.1 <= hi / ref <= 10:
                out.append(
                    f"The scan's intensities (99.5th percentile {hi:g}) are on another scale than the training "
                    f"data's ({ref:g}); the model rescales them, but check the output."
                )
    return out


# ------------------------------------------------------------------------------------------ images
def _resample_axis(v: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear resampling of ``v`` along ``axis`` to ``n_out`` samples (cell-centred), with a box
    prefilter when shrinking by 1.5x or more (no aliasing of the noise)."""
    n = v.shape[axis]
    if n_out == n:
        return v
    factor = n / n_out
    if factor >= 1.5:
        from scipy.ndimage import uniform_filter1d

        v = uniform_filter1d(v, size=int(round(factor)), axis=axis, mode="nearest")
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * factor - 0.5
    x = np.clip(x, 0, n - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * v.ndim
    shape[axis] = n_out
    w = (x - i0).astype(np.float32).reshape(shape)
    return v.take(i0, axis=axis) * (1 - w) + v.take(i1, axis=axis) * w


def _to_uint8(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (v - np.float32(lo)) * np.float32(scale)
    np.clip(out, 0, 255, out=out)
    return (out + 0.5).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _plane_grid(shape, spacing, axis: int, pixel: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (row axis, col axis) of the plane across ``axis`` and their image sizes at ``pixel`` mm."""
    ra, ca = [a for a in range(3) if a != axis]
    size = tuple(max(1, int(round(shape[a] * spacing[a] / pixel))) for a in (ra, ca))
    return (ra, ca), size


def _plane_stack(vol: np.ndarray, axis: int, axes: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``vol`` resampled in the plane across ``axis``, as a stack (slice, row, col)."""
    v = vol
    for a, n in zip(axes, size):
        v = _resample_axis(v, a, n)
    return np.moveaxis(v, axis, 0)


# ------------------------------------------------------------------------------------------- report
def _card_html(card: Mapping) -> str:
    esc = html.escape
    name = esc(str(card.get("name", "unnamed model")))
    version = card.get("version")
    parts = [f'<h2 id="card-name">{name}' + (f' <span id="card-version">v{esc(str(version))}</span>' if version else "") + "</h2>"]
    rows = []
    for key, label in (("description", "Description"), ("intended_use", "Intended use")):
        if card.get(key):
            rows.append(f"<tr><th>{label}</th><td id=\"card-{key.replace('_', '-')}\">{esc(str(card[key]))}</td></tr>")
    metrics = card.get("metrics")
    if isinstance(metrics, Mapping) and metrics:
        items = []
        for k, val in metrics.items():
            shown = f"{val:.4g}" if isinstance(val, float) else str(val)
            items.append(f"<li><b>{esc(str(k))}</b>: {esc(shown)}</li>")
        rows.append(f'<tr><th>Metrics</th><td><ul id="card-metrics">{"".join(items)}</ul></td></tr>')
    if rows:
        parts.append(f"<table class=\"card\">{''.join(rows)}</table>")
    return "\n".join(parts)


def _warnings_html(warnings: Sequence[str]) -> str:
    if not warnings:
        return '<div id="warnings" class="ok"><b>Input within the training plan.</b></div>'
    items = "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
    return (
        f'<div id="warnings" class="warn"><b>{len(warnings)} warning{"s" if len(warnings) > 1 else ""}: '
        f"the input lies outside the training plan</b><ul>{items}</ul></div>"
    )


def write_report(
    path: str | Path,
    *,
    input: np.ndarray,
    output: np.ndarray,
    residual: np.ndarray,
    spacing: Sequence[float],
    card: Mapping,
    warnings: Sequence[str],
    title: str = "Denoising report",
    max_bytes: int = 15_000_000,
    max_slices: int = 96,
) -> Path:
    """Write the report to ``path`` (atomically) and return it.

    ``input``, ``output``, ``residual``: 3-D float arrays of one shape ``(slices, rows, cols)``;
    ``spacing``: mm per voxel along those axes; ``card``: the model card (``name``, ``version``,
    ``description``, ``intended_use``, optional ``metrics`` dict; what is present is shown,
    HTML-escaped); ``warnings``: ``plan_warnings``'s lines. Each plane image is resampled to square
    pixels (aspect from ``spacing``) and at most 256 px on its long side; input and output share one
    grey window (input's 0.5-99.5th percentiles), the residual a symmetric one around 0 (mid grey).
    Every slice of each plane is embedded, unless the file would exceed about ``max_bytes``: then
    each plane keeps at most ``max_slices`` evenly spaced slices (fewer if needed), and says so.
    """
    vols = [np.asarray(a, dtype=np.float32) for a in (input, output, residual)]
    vols = [v if np.isfinite(v).all() else np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for v in vols]
    shape = vols[0].shape
    if len(shape) != 3 or any(v.shape != shape for v in vols):
        raise ValueError(f"input, output and residual need one 3-D shape, got {[v.shape for v in vols]}")
    sp = [float(s) for s in spacing]
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing {spacing!r}: need three positive millimetre values")

    inp = intensity_summary(vols[0])
    lo, hi = inp["p0_5"], inp["p99_5"]
    if not hi > lo:
        lo, hi = inp["min"], inp["max"]
    res = vols[2].reshape(-1)
    if res.size > 4_000_000:
        res = res[:: res.size // 2_000_000]
    r = float(np.percentile(np.abs(res), 99.5)) or float(np.abs(vols[2]).max()) or 1.0
    windows = ((lo, hi), (lo, hi), (-r, r))

    # one square pixel size for all planes: the finest spacing, coarser when a side would pass 256 px
    extent = [shape[a] * sp[a] for a in range(3)]
    pixel = max(min(sp), max(extent) / _MAX_SIDE)

    planes = []
    for name, axis in PLANES:
        axes, size = _plane_grid(shape, sp, axis, pixel)
        stacks = [_to_uint8(_plane_stack(v, axis, axes, size), *w) for v, w in zip(vols, windows)]
        planes.append({"name": name, "axis": axis, "size": size, "stacks": stacks, "n": shape[axis]})

    # size estimate from a few slices of each plane; subsample evenly if the file would be too big
    est = 0.0
    for p in planes:
        n = p["n"]
        probe = sorted({int(n * q) for q in (0.3, 0.5, 0.7)} & set(range(n)))
        per = np.mean([sum(len(_png(s[k])) for s in p["stacks"]) for k in probe])
        p["per_slice"] = per * 4 / 3 + 120  # base64 and JSON
        est += p["per_slice"] * n
    subsampled = est > max_bytes
    for p in planes:
        n = p["n"]
        keep = n
        if subsampled:
            budget = max_bytes / len(planes)
            keep = int(max(8, min(max_slices, n, budget // p["per_slice"])))
        p["index"] = sorted({int(round(i)) for i in np.linspace(0, n - 1, keep)}) if keep < n else list(range(n))

    display = 256.0 / max(max(p["size"]) for p in planes)  # same mm per screen pixel in all planes
    sections, data_blocks = [], []
    for p in planes:
        name, idx = p["name"], p["index"]
        uris = {
            kind: [_data_uri(_png(stack[k])) for k in idx]
            for kind, stack in zip(("input", "output", "residual"), p["stacks"])
        }
        mid = len(idx) // 2
        h, w = p["size"]
        dw, dh = max(1, round(w * display)), max(1, round(h * display))
        figs = "".join(
            f'<figure><img id="img-{name}-{kind}" src="{uris[kind][mid]}" width="{dw}" height="{dh}" '
            f'alt="{name} {kind}"><figcaption>{kind.capitalize()}</figcaption></figure>'
            for kind in ("input", "output", "residual")
        )
        note = (
            f' <span class="note" id="note-{name}">(showing {len(idx)} of {p["n"]} slices, evenly spaced, '
            "to keep the file small)</span>"
            if len(idx) < p["n"]
            else ""
        )
        sections.append(
            f'<section class="plane" id="plane-{name}"><h3>{name.capitalize()} '
            f'<span class="axis">(across array axis {p["axis"]})</span>{note}</h3>'
            f'<div class="row">{figs}</div>'
            f'<div class="ctl"><input type="range" id="slider-{name}" min="0" max="{len(idx) - 1}" '
            f'value="{mid}" step="1" aria-label="{name} slice"> '
            f'<span id="label-{name}">slice {idx[mid] + 1} / {p["n"]}</span></div></section>'
        )
        blob = json.dumps({"n": p["n"], "index": idx, **uris}, separators=(",", ":")).replace("</", "<\\/")
        data_blocks.append(f'<script type="application/json" id="data-{name}">{blob}</script>')

    esc_title = html.escape(str(title))
    shape_txt = " x ".join(str(s) for s in shape)
    doc = _TEMPLATE.format(
        title=esc_title,
        disclaimer=html.escape(DISCLAIMER),
        card=_card_html(card or {}),
        warnings=_warnings_html(list(warnings or [])),
        geometry=html.escape(f"{shape_txt} voxels (slices x rows x cols), voxel spacing {_mm(sp)}"),
        windows=html.escape(
            f"input and output window {lo:.4g} to {hi:.4g} (input's 0.5-99.5th percentile); "
            f"residual window {-r:.4g} to {r:.4g} (mid grey = 0)"
        ),
        sections="\n".join(sections),
        data="\n".join(data_blocks),
        script=_SCRIPT,
        css=_CSS,
    )
    return atomic_write_text(path, doc)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 1.2em 2em;color:#1b1b1b;background:#fafafa}
#banner{background:#b00020;color:#fff;font-weight:700;font-size:1.25em;text-align:center;padding:.55em;
 margin:0 -1.2em 1em;letter-spacing:.02em}
h1{font-size:1.45em;margin:.3em 0}
h2{font-size:1.15em;margin:.2em 0}
h3{font-size:1.02em;margin:.3em 0}
.top{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.top>div{flex:1 1 30em}
table.card th{text-align:left;vertical-align:top;padding-right:1em;font-weight:600}
table.card ul{margin:0;padding-left:1.1em}
#warnings{padding:.6em .9em;border-radius:6px;margin:.4em 0}
#warnings.ok{background:#e6f4ea;border:1px solid #7cb88b}
#warnings.warn{background:#fff4e5;border:1px solid #e0a040}
#warnings ul{margin:.3em 0 0;padding-left:1.2em}
.meta{color:#555;font-size:.88em;margin:.3em 0}
.planes{display:flex;flex-wrap:wrap;gap:1em}
.plane{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4em .7em}
.plane .row{display:flex;gap:.4em}
figure{margin:0;text-align:center}
figure img{display:block;background:#000}
figcaption{font-size:.85em;color:#444}
.ctl{display:flex;align-items:center;gap:.6em;margin:.3em 0}
.ctl input{flex:1}
.axis,.note{font-weight:400;color:#666;font-size:.85em}
#selftest{display:none}
#selftest.shown{display:block;background:#eee;padding:.4em}
"""

_SCRIPT = r"""
(function(){
  "use strict";
  var PLANES = ["axial", "coronal", "sagittal"], KINDS = ["input", "output", "residual"], D = {};
  PLANES.forEach(function(p){
    D[p] = JSON.parse(document.getElementById("data-" + p).textContent);
    var s = document.getElementById("slider-" + p);
    s.addEventListener("input", function(){ show(p, parseInt(s.value, 10)); });
  });
  function show(p, k){
    var d = D[p];
    KINDS.forEach(function(kind){ document.getElementById("img-" + p + "-" + kind).src = d[kind][k]; });
    document.getElementById("label-" + p).textContent = "slice " + (d.index[k] + 1) + " / " + d.n;
  }
  function imgs(){ return Array.prototype.slice.call(document.querySelectorAll("img")); }
  function whenLoaded(done){
    var t0 = Date.now();
    (function poll(){
      var all = imgs(), ready = all.every(function(i){ return i.complete; });
      if (ready || Date.now() - t0 > 3000) { done(all); } else { setTimeout(poll, 20); }
    })();
  }
  function selftest(){
    var out = document.getElementById("selftest"), errs = [], info = [];
    out.className = "shown";
    whenLoaded(function(all){
      all.forEach(function(i){ if (!(i.complete && i.naturalWidth > 0)) errs.push("image " + i.id + " did not load"); });
      info.push(all.length + " images loaded");
      PLANES.forEach(function(p){
        var s = document.getElementById("slider-" + p), lab = document.getElementById("label-" + p);
        var before = KINDS.map(function(k){ return document.getElementById("img-" + p + "-" + k).src; });
        var label0 = lab.textContent, v0 = parseInt(s.value, 10), max = parseInt(s.max, 10);
        if (max < 1) { errs.push(p + ": only one slice"); return; }
        var v1 = v0 === 0 ? max : 0;
        s.value = String(v1);
        s.dispatchEvent(new Event("input", {bubbles: true}));
        KINDS.forEach(function(k, j){
          var now = document.getElementById("img-" + p + "-" + k).src;
          if (now === before[j]) errs.push(p + " " + k + ": src did not change");
          if (now !== D[p][k][v1]) errs.push(p + " " + k + ": src is not slice " + v1);
        });
        if (lab.textContent === label0) errs.push(p + ": label did not change");
        info.push(p + " " + label0 + " -> " + lab.textContent);
      });
      whenLoaded(function(all2){
        all2.forEach(function(i){ if (!(i.complete && i.naturalWidth > 0)) errs.push("image " + i.id + " did not load after the slider moved"); });
        out.textContent = (errs.length ? "FAIL " + errs.join("; ") : "PASS") + "\n" + info.join("\n");
      });
    });
  }
  if (location.hash === "#selftest") {
    if (document.readyState === "complete") selftest(); else window.addEventListener("load", selftest);
  }
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head><body>
<div id="banner" role="alert">{disclaimer}</div>
<h1 id="title">{title}</h1>
<div class="top">
<div id="card">{card}</div>
<div>{warnings}
<p class="meta" id="geometry">{geometry}</p>
<p class="meta" id="windows">{windows}</p>
</div>
</div>
<div class="planes">
{sections}
</div>
<p class="meta">{disclaimer}. The output of a denoising model can remove or invent detail: read the input.</p>
<pre id="selftest"></pre>
{data}
<script>{script}</script>
</body></html>
"""
