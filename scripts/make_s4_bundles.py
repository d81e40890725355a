"""Make the S4 family bundles from ``bundles/res_unet``: copy its configs, change only
``bundle_name``, ``network_def`` (and the hyperparameters that name network keys), the metadata
and the model card's overview. Re-run after changing res_unet's configs; ``tests/test_res_unet_family.py``
checks that the copies are in sync.

    python scripts/make_s4_bundles.py            # (re)writes bundles/{shallow_res_ae,skip_cae,myronenko_ae}
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s4_family import S4_BUNDLES, derive_configs  # noqa: E402  (build-time only, beside this script)


def main() -> None:
    src = REPO / "bundles" / "res_unet"
    for name, spec in S4_BUNDLES.items():
        dst = REPO / "bundles" / name
        (dst / "configs").mkdir(parents=True, exist_ok=True)
        (dst / "docs").mkdir(parents=True, exist_ok=True)
        for fname, cfg in derive_configs(src, name).items():
            if fname == "README.md":
                (dst / "docs" / fname).write_text(cfg)
            else:
                (dst / "configs" / fname).write_text(json.dumps(cfg, indent=4, ensure_ascii=False) + "\n")
        shutil.copy2(src / "configs" / "logging.conf", dst / "configs" / "logging.conf")
        shutil.copy2(src / "LICENSE", dst / "LICENSE")
        print(f"wrote {dst.relative_to(REPO)} ({spec['title']})")


if __name__ == "__main__":
    main()
