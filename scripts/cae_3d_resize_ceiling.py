"""PSNR of the resize round trip alone on the compare's test slices: what cae_3d could score at
best with a perfect network at its 160x64x64 (``OnWholeVolumes`` with an identity network).

    python scripts/cae_3d_resize_ceiling.py [DATASET_DIR]     # default data/demo; prints JSON
"""
import json
import sys

import torch

import mriae.prepare.pipeline
from mriae.compare.run import OnWholeVolumes, evaluate, summarize
from mriae.data.corruption import conditions
from mriae.data.slices import SliceDataset


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


def main(dataset_dir: str = "data/demo", size=(160, 64, 64)) -> dict:
    ds = SliceDataset(mriae.prepare.pipeline.ensure_datalist(dataset_dir), "test")
    net = OnWholeVolumes(Identity(), size, ds)
    subjects, slices = [s for s, _ in ds.index], [z for _, z in ds.index]
    per, _ = evaluate({"resize_only": net}, {}, ds.images, subjects, slices, {"clean": conditions()["clean"]}, 0,
                      torch.device("cpu"))
    s = summarize(per, n_boot=1000)
    return {r.metric: {"mean": r["mean"], "ci_low": r.ci_low, "ci_high": r.ci_high} for _, r in s.iterrows()}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:2]), indent=1))
