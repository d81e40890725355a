"""torchrun training and sweep workers on CPU processes (gloo), as docs/distributed.md describes.

Two processes train res_unet for one epoch with configs/multi_gpu_train.json; the weights equal a
one-process train.json run with the same global batch and seed. A 2-worker sweep shares one study.
The gradient penalty through DistributedDataParallel equals the one-process penalty's gradient."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, free_port

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            "--rdzv_backend=c10d"]  # fmt: skip


def torchrun(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, f"--rdzv_endpoint=127.0.0.1:{free_port()}", *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


# ------------------------------------------------------------------ sharding, configs, handlers
def test_shards_are_disjoint_and_make_up_the_one_process_batches():
    from mriae.train.distributed import shard_indices

    order = torch.randperm(23, generator=torch.Generator().manual_seed(3))
    shards = [shard_indices(order, 2, r) for r in range(2)]
    assert [len(s) for s in shards] == [11, 11]
    seen = torch.cat(shards)
    assert len(set(seen.tolist())) == 22 and set(seen.tolist()) <= set(order.tolist())  # no slice twice
    b = 4  # per rank: batch k of both ranks together is batch k (of 2b) of one process over order[:22]
    for k in range(3):
        both = torch.cat([s[k * b : (k + 1) * b] for s in shards])
        assert sorted(both.tolist()) == sorted(order[:22][k * 2 * b : (k + 1) * 2 * b].tolist())


class _Slices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2).clone()
        self.index = [("s", i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.index)


def test_sharded_device_loader_keeps_the_one_process_batches_and_resumes_its_epoch():
    from mriae.data.slices import DeviceBatchLoader
    from mriae.train.distributed import ShardedDeviceBatchLoader

    ds = _Slices(20)
    one = [b["image"][:, 0, 0, 0].tolist() for b in DeviceBatchLoader(ds, batch_size=8, seed=5)]
    ranks = [ShardedDeviceBatchLoader(ds, batch_size=4, seed=5, num_replicas=2, rank=r) for r in range(2)]
    per_rank = [[b["image"][:, 0, 0, 0].tolist() for b in loader] for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 3
    for k in range(3):
        assert sorted(per_rank[0][k] + per_rank[1][k]) == sorted(one[k])
    assert not set(sum(per_rank[0], [])) & set(sum(per_rank[1], []))
    state = ranks[0].state_dict()
    assert state["epoch"] == 1
    nxt = [b["image"].sum().item() for b in ranks[0]]  # epoch 2
    again = ShardedDeviceBatchLoader(ds, batch_size=4, seed=5, num_replicas=2, rank=0)
    again.load_state_dict(state)
    assert [b["image"].sum().item() for b in again] == nxt
    with pytest.raises(ValueError, match="rank 2 outside"):
        ShardedDeviceBatchLoader(ds, batch_size=4, num_replicas=2, rank=2)


def test_every_trainable_bundle_has_an_up_to_date_multi_gpu_config():
    res = subprocess.run([sys.executable, "scripts/make_multi_gpu_configs.py", "--check"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    for train in sorted(REPO.glob("bundles/*/configs/train.json")):
        cfg = json.loads((train.parent / "multi_gpu_train.json").read_text())
        assert cfg["initialize"][0] == "$mriae.train.distributed.init_process_group()"
        assert cfg["finalize"] == ["$mriae.train.distributed.destroy_process_group()"]
        wrapped = [k for k in ("network", "generator", "discriminator") if k in cfg]
        assert wrapped and all(cfg[k].startswith("$mriae.train.distributed.wrap(") for k in wrapped)
        assert cfg["train#trainer#train_handlers"] == "$mriae.train.distributed.main_only(@train#handlers)"
        assert cfg["use_mlflow"] == "$mriae.train.distributed.is_main()"


def test_the_other_ranks_keep_no_writer(monkeypatch, tmp_path):
    from monai.handlers import StatsHandler, ValidationHandler

    from mriae.train.distributed import main_only
    from mriae.train.engine import History, TimeLimit

    handlers = [History(str(tmp_path)), StatsHandler(), TimeLimit(1.0), ValidationHandler(interval=1), None]
    monkeypatch.setenv("RANK", "0")
    assert main_only(handlers) == handlers[:4]
    monkeypatch.setenv("RANK", "1")
    kept = main_only(handlers)
    assert [type(h) for h in kept] == [TimeLimit, ValidationHandler]  # what decides runs on every rank


def test_outside_torchrun_the_config_says_how_to_start_it(monkeypatch):
    from mriae.train.distributed import init_process_group
    from mriae.errors import InputError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InputError, match="multi_gpu_train.json: not started by torchrun"):
        init_process_group()


# ------------------------------------------------------------------ GAN: gradient penalty under DDP
def _gp_worker(r: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from mriae.train.adversarial import gradient_penalty
    from mriae.networks import GanDiscriminator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(r))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=r, world_size=2)
    from mriae.train.distributed import wrap

    torch.manual_seed(0)
    critic = GanDiscriminator(spatial_dims=2, img_size=16, channels=(4, 8), sigmoid=False, kernel_size=3)
    single = GanDiscriminator(spatial_dims=2, img_size=16, channels=(4, 8), sigmoid=False, kernel_size=3)
    single.load_state_dict(critic.state_dict())
    g = torch.Generator().manual_seed(1)
    real, fake, eps = torch.rand(8, 1, 16, 16, generator=g), torch.rand(8, 1, 16, 16, generator=g), torch.rand(8, 1, 1, 1, generator=g)
    ddp = wrap(critic)
    mine = slice(4 * r, 4 * r + 4)  # each rank its half of the batch; DDP averages the two gradients
    gp, _ = gradient_penalty(ddp, real[mine], fake[mine], eps[mine])
    loss = ddp(fake[mine]).mean() - ddp(real[mine]).mean() + 10 * gp
    loss.backward()
    gp1, _ = gradient_penalty(single, real, fake, eps)  # one process, the whole batch
    (single(fake).mean() - single(real).mean() + 10 * gp1).backward()
    diff = max(float((p.grad - q.grad).abs().max()) for p, q in zip(critic.parameters(), single.parameters()))
    size = max(float(q.grad.abs().max()) for q in single.parameters())
    torch.save({"diff": diff, "size": size, "second_order": float(critic.parameters().__next__().grad.norm())},
               f"{out}/rank{r}.pt")  # fmt: skip
    dist.destroy_process_group()


def test_gradient_penalty_through_ddp_equals_the_one_process_gradient(tmp_path):
    import torch.multiprocessing as mp

    # forked: the children start with torch and mriae already imported (no process group exists here)
    mp.start_processes(_gp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt")
        assert res["size"] > 1e-3  # real gradients, not zeros
        assert res["diff"] <= 1e-5 * max(1.0, res["size"]), res


# ------------------------------------------------------------------ training: 2 ranks vs 1 process
# no randomness but the data order (zero-strength corruption, no augmentation or random crop), and
# SGD: Adam's first steps move every weight by about +-lr whatever its gradient's size, so the
# rounding of a near-zero gradient (a sum in another order) becomes an lr-sized difference; SGD's
# update is the averaged gradient itself, which is what must agree. A file, not command-line
# overrides: monai.bundle run drops overrides whose value is None.
EXACT = {"augmentation": None, "crop": None, "axes": [0], "corruption#noise_std": [0.0, 0.0],
         "corruption#rician_std": [0.0, 0.0], "optimizer#_target_": "torch.optim.SGD", "learning_rate": 0.05,
         "max_slices_per_subject": 4, "train#trainer#max_epochs": 1}  # fmt: skip


def _bundle(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    return root


def test_two_ranks_train_as_one_process_with_the_global_batch_and_rank_0_alone_writes(small_prepared, tmp_path):
    from mlflow.tracking import MlflowClient

    two, one = _bundle(tmp_path, "two"), _bundle(tmp_path, "one")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exact = tmp_path / "exact.json"
    exact.write_text(json.dumps(EXACT))
    common = ["--dataset_dir", str(small_prepared.parent), "--tracking_uri", uri]
    files = str([str(two / "configs" / f) for f in ("train.json", "multi_gpu_train.json")] + [str(exact)])
    res = torchrun("-m", "monai.bundle", "run", "training", "--config_file", files, "--bundle_root", str(two),
                   *common, "--batch_size", "4")  # fmt: skip
    log = res.stdout + res.stderr
    assert "rank 0 of 2" in log and "rank 1 of 2" in log and "backend gloo" in log
    from monai.bundle import run  # the one-process reference in this process (no start-up to pay)

    run("training", config_file=[str(one / "configs" / "train.json"), str(exact)], bundle_root=str(one),
        dataset_dir=str(small_prepared.parent), batch_size=8, use_mlflow=False)  # fmt: skip
    # exactly one checkpoint, one history, one MLflow run (rank 0's), no resume state left
    assert sorted(p.name for p in (two / "models").iterdir()) == ["model.json", "model.pt"]
    assert sorted(p.name for p in (two / "outputs" / "training").iterdir()) == ["curves.png", "history.json"]
    hist = json.loads((two / "outputs" / "training" / "history.json").read_text())
    assert len(hist["train_loss"]) == 1 and len(hist["validation"]) == 1
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("res_unet").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["world_size"] == "2" and runs[0].data.params["global_batch_size"] == "8"
    # the weights after one epoch: 2 ranks x 4 = 1 process x 8, same seed
    a = torch.load(two / "models" / "model.pt", weights_only=True)
    b = torch.load(one / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert diff < 1e-5, diff
    # and training moved them far more than that (the comparison can fail)
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(one / "configs" / "train.json"))
    p["bundle_root"] = str(one)
    torch.manual_seed(0)
    from monai.utils import set_determinism

    set_determinism(seed=0)
    init = p.get_parsed_content("network_def").state_dict()
    moved = max(float((b[k] - init[k]).abs().max()) for k in b if b[k].is_floating_point())
    assert moved > 100 * max(diff, 1e-6), (moved, diff)
    assert json.loads((two / "models" / "model.json").read_text())["model"]["network"]["_target_"].endswith(
        "ResUNetAE"
    )


# ------------------------------------------------------------------ sweep: 2 workers, one study
def test_two_sweep_workers_share_one_study_and_run_no_trial_twice(small_prepared, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    root = tmp_path / "cae_2d"
    shutil.copytree(REPO / "bundles/cae_2d", root, ignore=shutil.ignore_patterns("models", "eval", "outputs", "sweep"))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"key": "learning_rate", "choices": [1e-3, 5e-4, 1e-4]},
                                 "latent_size": {"key": "latent_size", "choices": [16, 32], "optional": True}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "sweep"
    torchrun("-m", "mriae.tools.sweep", "--bundle", str(root), "--trials", "4", "--out", str(out), "--space", str(space),
             "--set", f'dataset_dir="{small_prepared.parent}"', "--set", "max_slices_per_subject=4",
             "--set", "batch_size=8", "--set", "max_epochs=1", "--startup_trials", "10", "--tracking_uri", uri)  # fmt: skip
    study = optuna.load_study(study_name="cae_2d-sweep", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and len({t.number for t in done}) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL) for t in study.trials)
    rows = json.loads((out / "trials.json").read_text())
    assert sorted(r["number"] for r in rows if r["state"] == "COMPLETE") == sorted(t.number for t in done)
    assert (out / "best_overrides.json").is_file()
    # each trial its own child run of the one parent run; no trial run twice
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cae_2d").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(f"trial-{t.number:03d}" for t in done)  # one run per trial, none twice
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # both workers ran trials (each its own trial directory, written once)
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(f"{t.number:03d}" for t in done)
    assert {t.user_attrs["worker"] for t in done} == {0, 1}


# ------------------------------------------------------------------ GAN under torchrun, resumed
def test_a_gan_trains_on_two_ranks_and_both_resume_from_the_same_state(small_prepared, tmp_path):
    root = tmp_path / "wgan_gp_2d"
    shutil.copytree(REPO / "bundles/wgan_gp_2d", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    files = str([str(root / "configs" / f) for f in ("train.json", "multi_gpu_train.json")])
    small = ["--bundle_root", str(root), "--dataset_dir", str(small_prepared.parent), "--use_mlflow", "False",
             "--g_channels", "[32,16,8,4]", "--d_channels", "[4,8,16,32]", "--max_slices_per_subject", "4",
             "--batch_size", "4", "--epoch_length", "2", "--n_critic", "2", "--quality_samples", "8",
             "--grid_samples", "4"]  # fmt: skip
    torchrun("-m", "monai.bundle", "run", "training", "--config_file", files, *small, "--train#trainer#max_epochs", "1")
    first = json.loads((root / "models" / "model.json").read_text())
    assert first["epoch"] == 1 and (root / "models" / "state.pt").is_file()
    res = torchrun("-m", "monai.bundle", "run", "training", "--config_file", files, *small,
                   "--train#trainer#max_epochs", "2", "--resume", "True")  # fmt: skip
    log = res.stdout + res.stderr
    assert log.count("state.pt: epoch 1, 1 generator updates") == 2, log[-3000:]  # every rank, the same state
    meta = json.loads((root / "models" / "model.json").read_text())
    assert meta["epoch"] == 2 and meta["generator_updates"] == 2 and meta["critic_updates"] == 4
