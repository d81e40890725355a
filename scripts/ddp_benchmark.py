#!/usr/bin/env python3
"""Training steps per second of a bundle's network under DistributedDataParallel (docs/distributed.md).

    torchrun --nproc_per_node=1 scripts/ddp_benchmark.py --bundle bundles/res_unet --batch 8
    torchrun --nproc_per_node=2 scripts/ddp_benchmark.py --bundle bundles/res_unet --batch 8

Each rank trains the bundle's network (its train.json ``network_def``) with Adam on random batches of
``--batch`` per rank, already on its device (what the device-resident loader gives), for
``--steps`` steps after ``--warmup``; rank 0 prints one JSON line: steps/s, slices/s over all
ranks, the time of one all-reduce of a gradient-sized buffer, the parameter count. NCCL on GPUs,
gloo on CPUs (mriae.train.distributed chooses).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="bundles/res_unet")
    ap.add_argument("--batch", type=int, default=8, help="per-rank batch")
    ap.add_argument("--size", type=int, default=128, help="slice side")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    import torch
    import torch.distributed as dist
    from monai.bundle import ConfigParser

    from mriae import distributed as D

    D.init_process_group()
    dev = D.device()
    p = ConfigParser()
    p.read_config(str(Path(a.bundle) / "configs" / "train.json"))
    p["bundle_root"] = str(Path(a.bundle).resolve())
    torch.manual_seed(0)
    net = D.wrap(p.get_parsed_content("network_def").to(dev))
    inner = getattr(net, "module", net)
    n_params = sum(q.numel() for q in inner.parameters())
    c_in = int(p.get_parsed_content("network_def#in_channels"))
    g = torch.Generator(device=dev).manual_seed(D.rank())
    x = torch.rand(a.batch, c_in, a.size, a.size, generator=g, device=dev)
    y = x[:, c_in // 2 : c_in // 2 + 1].clone()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = torch.nn.MSELoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(a.warmup):
        step()
    sync()
    D.barrier()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    buf = torch.zeros(n_params, device=dev)
    allreduce_ms = None
    if D.world_size() > 1:
        for _ in range(3):
            dist.all_reduce(buf)
        sync()
        t1 = time.perf_counter()
        for _ in range(10):
            dist.all_reduce(buf)
        sync()
        allreduce_ms = (time.perf_counter() - t1) / 10 * 1e3
    if D.is_main():
        print(json.dumps({
            "ranks": D.world_size(), "backend": D.choose_backend(), "device": str(dev),
            "per_rank_batch": a.batch, "global_batch": a.batch * D.world_size(), "size": a.size,
            "parameters": n_params, "steps_per_s": round(a.steps / elapsed, 3),
            "slices_per_s": round(a.steps * a.batch * D.world_size() / elapsed, 2),
            "allreduce_ms": None if allreduce_ms is None else round(allreduce_ms, 2),
            "torch_threads": torch.get_num_threads(),
        }), flush=True)  # fmt: skip
    D.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
