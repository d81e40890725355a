"""Clinic speed and fidelity of a release: N DICOM studies in one process.

Builds N studies from the real scan (Colin27, mricron-data's ch2.nii.gz; the real-scan benchmark's
reference: scaled to [0, 1] by its 0.5th / 99.5th percentiles), each with its own seeded Gaussian
noise of the benchmark's condition (default sigma 0.03), written as an MR DICOM series (int16 with
a rescale slope). Then ``mriae.share.clinic.run_release`` runs the release on the folder in one
process (``--batch``) and the script reports volumes per second, where the time went, and, per
study, the PSNR of the denoised NIfTI and of the derived DICOM series read back, against the clean
reference, scored as ``mriae.compare.real_scan.score`` scores PSNR (head box, peak 1): the numbers of
docs/real_scans.md, reached here through DICOM in and DICOM out.

    python scripts/clinic_benchmark.py dist/res_unet_0.2.0.zip --studies 20 --out /tmp/clinic [--device cuda:0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("release")
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--condition", default="gaussian-0.03")
    ap.add_argument("--out", default="/tmp/clinic_benchmark")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="writer processes (default: by CPUs)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)

    import nibabel as nib
    import torch

    from mriae.io import load_volume
    from mriae.io.dicom import write_dicom_series
    from mriae.compare.real_scan import corrupt, find_scan, reference
    from mriae.share.clinic import run_release, summary_line

    out = Path(args.out)
    studies, results_dir = out / "studies", out / "results"
    if out.exists() and any(out.iterdir()):
        print(f"{out}: exists and is not empty", file=sys.stderr)
        return 2
    scan = find_scan()
    ref = reference(scan)

    def psnr_of(vol: np.ndarray) -> float:  # mriae.compare.real_scan.score's PSNR (head box, peak 1), without its SSIM
        o, c = np.asarray(vol, dtype=np.float64)[ref["box"]], ref["volume"].astype(np.float64)[ref["box"]]
        return float(10 * np.log10(1.0 / max(float(np.mean((o - c) ** 2)), 1e-12)))
    t0 = time.perf_counter()
    for i in range(args.studies):
        noisy = corrupt(ref["volume"], args.condition, seed=i)
        write_dicom_series(noisy, ref["affine"], studies / f"study{i:02d}" / "t1", series_description="T1 noisy",
                           image_type=("ORIGINAL", "PRIMARY", "M", "ND"))  # fmt: skip
    print(f"{args.studies} studies of {scan.name} {ref['volume'].shape} written in {time.perf_counter() - t0:.1f} s", flush=True)
    results = run_release(args.release, studies, results_dir, batch=True, device=args.device, report=not args.no_report,
                          workers=args.workers)
    line = summary_line(results)
    print(line, flush=True)
    per = []
    for r in results:
        img = nib.as_closest_canonical(nib.load(r.output / "denoised.nii.gz"))
        inp = nib.as_closest_canonical(nib.load(r.output / "input.nii.gz"))
        assert np.allclose(img.affine, nib.as_closest_canonical(nib.load(scan)).affine, atol=1e-3)
        den = np.asarray(img.dataobj, dtype=np.float32)
        back = load_volume(r.output / "denoised")  # the derived series as a PACS would hand it back
        back_img = nib.Nifti1Image(back[0].numpy().astype(np.float32), np.asarray(back.affine, dtype=float))
        den_dicom = np.asarray(nib.as_closest_canonical(back_img).dataobj, dtype=np.float32)
        s_in, s_out, s_dcm = (psnr_of(v) for v in (np.asarray(inp.dataobj, dtype=np.float32), den, den_dicom))
        per.append({"study": r.study, "input_psnr": s_in, "denoised_psnr": s_out, "dicom_psnr": s_dcm,
                    "max_abs_dicom_vs_nifti": float(np.abs(den_dicom - den).max())})  # fmt: skip
    psnr = np.array([[p["input_psnr"], p["denoised_psnr"], p["dicom_psnr"]] for p in per])
    s = results[0].seconds
    fig = {
        "release": Path(args.release).name,
        "scan": scan.name,
        "shape": list(ref["volume"].shape),
        "condition": args.condition,
        "studies": len(results),
        "device": results and json.loads((results[0].output / "run.json").read_text())["device"],
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "report": not args.no_report,
        "seconds": {k: s[k] for k in ("read_all", "build", "network_all", "total_all")}
        | {"dicom_and_report_all": s["write_all"], "writer_processes": s["writers"]},
        "volumes_per_second": len(results) / s["total_all"],
        "psnr_mean": {"input": psnr[:, 0].mean(), "denoised_nifti": psnr[:, 1].mean(), "denoised_dicom": psnr[:, 2].mean()},
        "psnr_std": {"input": psnr[:, 0].std(), "denoised_nifti": psnr[:, 1].std(), "denoised_dicom": psnr[:, 2].std()},
        "max_abs_dicom_vs_nifti": max(p["max_abs_dicom_vs_nifti"] for p in per),
        "per_study": per,
        "summary": line,
    }
    print(json.dumps({k: v for k, v in fig.items() if k != "per_study"}, indent=2, default=float))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(fig, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
