"""Compare bundles on one split: ``python scripts/compare.py -h`` (logic in ``mriae.compare``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mriae.compare.cli import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
