"""A bundle's configs as ``monai.bundle run`` reads them, and the ``key=value`` overrides users type on
command lines (``--set``, ``--override``, model specs): one reading of each for every tool."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from mriae.errors import InputError, MissingFileError

__all__ = ["parse_value", "parse_overrides", "bundle_files", "bundle_config"]

_WORDS = {"True": True, "False": False, "None": None}


def parse_value(text: str):
    """A command-line value: JSON when it parses (numbers, booleans, lists, objects), Python's
    ``True`` / ``False`` / ``None``, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return _WORDS.get(text, text)


def parse_overrides(items: Iterable[str], what: str = "override") -> dict:
    """``["key=value", ...]`` -> ``{key: parse_value(value)}``; an item without ``=`` is refused in one
    line naming ``what`` it was given as."""
    out = {}
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"{what} {item!r}: expected key=value")
        out[key.strip()] = parse_value(val.strip())
    return out


def bundle_files(root: str | Path, *extra: str | Path, recipe: str | None = None) -> list[str]:
    """``configs/train.json`` of the bundle at ``root``, then ``configs/<recipe>.json`` and ``extra``
    files (merged in that order); a missing one is refused in one line."""
    root = Path(root)
    files = [root / "configs" / "train.json"]
    if recipe:
        files.append(root / "configs" / f"{recipe}.json")
    files += [Path(f) for f in extra]
    if not files[0].is_file():
        raise MissingFileError(f"{files[0]}: not a bundle (no configs/train.json)")
    for f in files[1:]:
        if not f.is_file():
            raise MissingFileError(f"{f}: config file not found")
    return [str(f) for f in files]


def bundle_config(
    root: str | Path, *extra: str | Path, recipe: str | None = None, overrides: Mapping | None = None
):
    """The bundle's merged configs (``bundle_files``) in a ``monai.bundle.ConfigParser`` with
    ``overrides`` applied (``#``-separated ids as on ``monai.bundle run``'s command line)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files(bundle_files(root, *extra, recipe=recipe)))
    for k, v in dict(overrides or {}).items():
        parser[k] = v
    return parser
