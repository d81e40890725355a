#!/usr/bin/env python3
"""Bayesian hyperparameter sweep of a bundle (Optuna TPE, MedianPruner, SQLite, MLflow child runs).

    python scripts/sweep.py --bundle bundles/ae_2d --trials 20
    torchrun --nproc_per_node=4 scripts/sweep.py --bundle bundles/ae_2d --trials 20   # 4 workers, one study
    python scripts/sweep.py -h

See ``mriae/tools/sweep.py`` for the space file and what is written.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mriae.tools.sweep import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
