"""Where subjects come from: the demo cohort, an IXI-T1 folder (+ IXI.xls), a folder of volumes (NIfTI,
FreeSurfer .mgz, NRRD, MetaImage, MINC, Philips PAR/REC), or a folder of DICOM studies. Each lister returns ``Subject`` records that
the prepare step loads with ``mriae.io.load_volume``.

DICOM subjects are named ``dicom-001``, ``dicom-002``... in an order set by a hash of the patient
id, so that no DICOM identifier reaches file names, logs or MLflow, while all series of one patient
still share one subject (and so one partition).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mriae.errors import InputError, MissingFileError

__all__ = ["Subject", "list_subjects", "read_demographics"]

# the suffixes ``mriae.io.load_volume`` reads (kept equal to ``mriae.io.volume.VOLUME_SUFFIXES`` by a test;
# spelled out here so that listing files does not import the readers). Data files (.raw, .rec) are not
# listed: their headers (.mhd, .nhdr, .par) are.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mnc", ".par")


@dataclass
class Subject:
    id: str
    path: Path
    series: str | None = None
    demographics: dict | None = None
    role: str | None = None  # "heldout" forces the test partition
    extra: dict = field(default_factory=dict)


def _is_volume(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)


def _stem(p: Path) -> str:
    name = p.name
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _col(columns, *prefixes: str) -> str | None:
    for c in columns:
        norm = str(c).strip().upper()
        if any(norm.startswith(p) for p in prefixes):
            return c
    return None


def _code(value, names: dict[str, str]) -> str | None:
    """A demographics cell as IXI's numeric code (``"1"``), a known name mapped to it, or as written."""
    text = str(value).strip()
    if text.lower() in ("", "nan", "none"):
        return None
    if text.lower() in names:
        return names[text.lower()]
    try:
        return str(int(float(text)))
    except ValueError:
        return text


def read_demographics(path: str | Path) -> dict[str, dict]:
    """Read IXI.xls (or a CSV with the same columns, or subject/sex/age/ethnicity) into
    ``{id: {"sex", "age", "ethnicity"}}``. IXI ids become ``IXI002`` style. Duplicated rows (IXI has
    some) keep the first row with an age."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: demographics file not found")
    try:
        df = pd.read_excel(path) if path.suffix.lower() in (".xls", ".xlsx") else pd.read_csv(path, dtype=str)
    except Exception as e:  # noqa: BLE001 - any parse failure is a user error here
        raise InputError(f"{path}: cannot read demographics table ({type(e).__name__}: {e})") from None
    cols = list(df.columns)
    id_col = _col(cols, "SUBJECT") or _col(cols, "IXI_ID")
    sex_col, age_col, eth_col = _col(cols, "SEX"), _col(cols, "AGE"), _col(cols, "ETHNIC")
    if id_col is None:
        raise InputError(f"{path}: no IXI_ID or subject column (columns: {cols})")
    out: dict[str, dict] = {}
    for _, row in df.iterrows():
        raw = row[id_col]
        if raw is None or (isinstance(raw, float) and not np.isfinite(raw)):
            continue
        ixi = id_col != _col(cols, "SUBJECT") and (
            isinstance(raw, (int, float, np.integer, np.floating)) or str(raw).isdigit()
        )
        sid = f"IXI{int(float(raw)):03d}" if ixi else str(raw).strip()
        age = row[age_col] if age_col is not None else None
        try:
            age = float(age) if age is not None and str(age).strip() not in ("", "nan") else None
        except ValueError:
            raise InputError(f"{path}: age {age!r} of subject {sid} is not a number") from None
        rec = {
            "sex": None
            if sex_col is None
            else _code(row[sex_col], {"m": "1", "male": "1", "f": "2", "female": "2"}),
            "age": age,
            "ethnicity": None if eth_col is None else _code(row[eth_col], {"white": "1"}),
        }
        if sid not in out or (out[sid]["age"] is None and rec["age"] is not None):
            out[sid] = rec
    return out


def list_subjects(
    source: str, input_dir: str | Path | None = None, demographics: str | Path | None = None
) -> list[Subject]:
    """List the subjects of a source: ``demo`` (input_dir = cohort dir with manifest.json), ``ixi``,
    ``volumes`` (alias ``nifti``: every file with a suffix of ``VOLUME_SUFFIXES``, recursively) or
    ``dicom``."""
    if input_dir is None:
        raise ValueError(f"source {source!r} needs an input folder")
    root = Path(input_dir)
    if not root.exists():
        raise MissingFileError(f"{root}: input folder not found")
    demo = read_demographics(demographics) if demographics else {}
    if source == "demo":
        manifest = json.loads((root / "manifest.json").read_text())
        demo = demo or read_demographics(root / "demographics.csv")
        return [
            Subject(s["id"], root / s["file"], demographics=demo.get(s["id"]), role=s.get("role"))
            for s in manifest["subjects"]
        ]
    if source == "ixi":
        subjects, seen = [], set()
        for p in sorted(root.iterdir()):
            m = re.match(r"(IXI\d{3})-", p.name)
            if not (m and _is_volume(p)):
                continue
            if m.group(1) in seen:  # IXI has duplicated volumes; keep the first
                continue
            seen.add(m.group(1))
            subjects.append(Subject(m.group(1), p, demographics=demo.get(m.group(1))))
        if not subjects:
            raise InputError(f"{root}: no IXI volumes (IXI###-*.nii.gz) found")
        return subjects
    if source in ("nifti", "volumes"):
        files = sorted(p for p in root.rglob("*") if _is_volume(p))
        if not files:
            raise InputError(f"{root}: no volumes ({', '.join(VOLUME_SUFFIXES)}) found")
        ids = [_stem(p) for p in files]
        if len(set(ids)) != len(ids):
            ids = [str(p.relative_to(root)).replace("/", "_") for p in files]
            ids = [_stem(Path(i)) for i in ids]
        if len(set(ids)) != len(ids):  # one name in several formats (scan.nrrd, scan.nii.gz): keep the suffix
            ids = [str(p.relative_to(root)).replace("/", "_").replace(".", "_") for p in files]
        return [Subject(i, p, demographics=demo.get(i)) for i, p in zip(ids, files)]
    if source == "dicom":
        return _dicom_subjects(root, demo)
    raise ValueError(f"unknown source {source!r}: use demo, ixi, volumes (or nifti) or dicom")


def _header_demographics(ds) -> dict | None:
    """Sex, age and ethnic group from a DICOM header (PatientSex M/F, PatientAge like 045Y,
    EthnicGroup), coded as IXI codes them (sex 1 male, 2 female); None when any is missing."""
    sex = {"M": "1", "F": "2"}.get(str(getattr(ds, "PatientSex", "") or "").upper())
    m = re.fullmatch(r"(\d{1,3})([DWMY])", str(getattr(ds, "PatientAge", "") or "").strip().upper())
    age = None if m is None else int(m.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[m.group(2)]
    eth = str(getattr(ds, "EthnicGroup", "") or "").strip()
    if sex is None or age is None or not eth:
        return None
    return {"sex": sex, "age": round(age, 1), "ethnicity": "1" if eth.lower() == "white" else eth}


def _dicom_subjects(root: Path, demographics: dict[str, dict] | None = None) -> list[Subject]:
    """One subject per patient (all series of a patient share it). Demographics come from the
    ``--demographics`` table, whose subject column holds the DICOM PatientID (matched by its hash:
    the id itself is never stored), or else from the headers (PatientSex, PatientAge, EthnicGroup)."""
    import pydicom

    from mriae.io import find_dicom_series

    series = find_dicom_series(root)
    if not series:
        raise InputError(f"{root}: no DICOM series found")
    table = {hashlib.sha256(str(k).encode()).hexdigest(): v for k, v in (demographics or {}).items()}
    by_patient: dict[str, list[str]] = {}
    header_demo: dict[str, dict | None] = {}
    for key, files in series.items():
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        pid = str(getattr(ds, "PatientID", "") or "")
        h = hashlib.sha256(pid.encode()).hexdigest()
        by_patient.setdefault(h, []).append(key)
        header_demo.setdefault(h, _header_demographics(ds))
    if table and not set(table) & set(by_patient):
        raise InputError(f"{root}: no PatientID of these series is in the --demographics table")
    subjects = []
    for n, h in enumerate(sorted(by_patient), start=1):
        demo = table.get(h) if table else header_demo.get(h)
        for k, key in enumerate(sorted(by_patient[h])):
            sid = f"dicom-{n:03d}" + (f"-{k + 1}" if len(by_patient[h]) > 1 else "")
            subjects.append(
                Subject(sid, root, series=key, demographics=demo, extra={"group": f"dicom-{n:03d}"})
            )
    return subjects
