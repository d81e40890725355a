"""GAN pieces on known inputs: S1's network sizes, the gradient penalty against a hand computation,
the critic / generator update schedule, the loggable output, and the quality metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO

from mriae.train.adversarial import (
    AdversarialLoss,
    AdversarialTrainer,
    GanCheckpoint,
    GanLosses,
    GanResume,
    StopAfter,
    gradient_penalty,
)
from mriae.evaluate.gan_quality import AEFeatures, frechet_distance, mmd_linear, mmd_rbf, pairwise_msssim
from mriae.networks import GanDiscriminator, GanGenerator, count_parameters

GAN_BUNDLES = ("dcgan_2d", "wgan_gp_2d", "wgan_gp_3d")


def test_s1_networks_shapes_and_parameter_counts():
    g, d = GanGenerator(), GanDiscriminator()
    # dense 200*16384+16384, ConvT 5x5 1024->512->256->128->1 (+ biases); conv 1->128->...->1024, dense 16384->1
    assert (
        count_parameters(g, keras=False) == 3_293_184 + 13_107_712 + 3_277_056 + 819_328 + 3_201 == 20_500_481
    )
    assert count_parameters(d, keras=False) == 3_328 + 819_456 + 3_277_312 + 13_108_224 + 16_385 == 17_224_705
    x = g(torch.randn(3, 200))
    assert x.shape == (3, 1, 64, 64) and 0 < float(x.min()) and float(x.max()) < 1
    p = d(x)
    assert p.shape == (3, 1) and ((p > 0) & (p < 1)).all()  # DCGAN: probabilities
    critic = GanDiscriminator(sigmoid=False)
    critic.dense.bias.data.fill_(5.0)
    assert (critic(x) > 1).any()  # WGAN-GP: no sigmoid, unbounded
    assert g(torch.randn(2, 200, 1, 1)).shape == (2, 1, 64, 64)  # (B, nz, 1, 1) latents work too


def test_3d_networks_are_the_same_class_with_spatial_dims_3():
    g = GanGenerator(3, channels=(32, 16, 8), img_size=32)
    d = GanDiscriminator(3, channels=(8, 16, 32), img_size=32, sigmoid=False)
    v = g(torch.randn(2, 200))
    assert v.shape == (2, 1, 32, 32, 32) and d(v).shape == (2, 1)
    assert isinstance(g.deconv[0], torch.nn.ConvTranspose3d) and isinstance(d.conv[0], torch.nn.Conv3d)
    with pytest.raises(ValueError, match="divisible"):
        GanGenerator(img_size=60)


def test_3d_generator_with_batch_norm_and_4_kernels_doubles_exactly_and_the_critic_has_none():
    g = GanGenerator(3, channels=(32, 16, 8), img_size=32, kernel_size=4, norm="batch")
    d = GanDiscriminator(3, channels=(8, 16, 32), img_size=32, kernel_size=4, sigmoid=False)
    v = g(torch.randn(3, 200))
    assert v.shape == (3, 1, 32, 32, 32) and d(v).shape == (3, 1) and 0 < float(v.min()) < float(v.max()) < 1
    bn = [m.num_features for m in g.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bn == [32, 16, 8]  # after the dense layer and after each hidden transposed convolution
    assert [m.kernel_size for m in g.deconv if isinstance(m, torch.nn.ConvTranspose3d)] == [(4, 4, 4)] * 3
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in GanGenerator().modules())  # S1: none
    # batch norm makes the output vary with z from the first step (S1's plain generator barely does)
    torch.manual_seed(0)
    plain = GanGenerator(3, channels=(32, 16, 8), img_size=32).eval()
    assert v.std(0).mean() > 5 * plain(torch.randn(3, 200)).std(0).mean()


def test_a_gradient_penalty_critic_with_batch_norm_is_refused():
    from torch.utils.data import DataLoader

    g = GanGenerator(channels=(8, 4), img_size=16, latent_size=6)
    d = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(1)
    )
    kw = dict(device="cpu", max_epochs=1, train_data_loader=DataLoader([torch.zeros(1, 16, 16)]), g_network=g,
              g_optimizer=torch.optim.Adam(g.parameters()), d_network=d, latent_shape=6, loss="wasserstein")  # fmt: skip
    with pytest.raises(ValueError, match="batch norm"):
        AdversarialTrainer(**kw, d_optimizer=torch.optim.Adam(d[0].parameters()), gp_weight=10.0)
    AdversarialTrainer(
        **kw, d_optimizer=torch.optim.Adam(d[0].parameters()), gp_weight=0.0
    )  # no penalty: allowed


def test_gradient_penalty_is_per_sample_over_all_voxels_of_a_volume():
    # D(x) = sum(x^2) / 2 per sample has gradient x_hat_i: the penalty is mean_i (||x_hat_i||_2 - 1)^2 with
    # the norm over every voxel of sample i, not over the batch or one channel
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(3, 1, 4, 5, 6, generator=g), torch.rand(3, 1, 4, 5, 6, generator=g)
    eps = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1, 1, 1)
    gp, norm = gradient_penalty(lambda x: (x**2).flatten(1).sum(1) / 2, real, fake, eps=eps)
    x_hat = eps * real + (1 - eps) * fake
    per_sample = torch.sqrt((x_hat**2).sum(dim=(1, 2, 3, 4)))
    assert float(norm) == pytest.approx(float(per_sample.mean()), rel=1e-6)
    assert float(gp) == pytest.approx(float(((per_sample - 1) ** 2).mean()), rel=1e-6)


def test_gradient_penalty_of_a_linear_critic_equals_the_hand_computation():
    # D(x) = <w, x> + b has gradient w everywhere: penalty (|w| - 1)^2, its gradient 2 (|w| - 1) w / |w|
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 1)
    critic = torch.nn.Sequential(torch.nn.Flatten(), lin)
    real, fake = torch.rand(5, 1, 3, 4), torch.rand(5, 1, 3, 4)
    gp, norm = gradient_penalty(critic, real, fake)
    w = lin.weight.detach().flatten()
    assert float(norm) == pytest.approx(float(w.norm()), rel=1e-6)
    assert float(gp) == pytest.approx(float((w.norm() - 1) ** 2), rel=1e-6)
    gp.backward()
    expected = 2 * (w.norm() - 1) * w / w.norm()
    torch.testing.assert_close(lin.weight.grad.flatten(), expected, rtol=1e-5, atol=1e-7)
    # a critic with unit-norm gradient is not penalised
    lin.weight.data = w.view(1, -1) / w.norm()
    assert float(gradient_penalty(critic, real, fake)[0]) == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_taken_between_real_and_fake():
    # D(x) = sum(x^2) / 2 has gradient x: at x_hat = eps real + (1 - eps) fake with eps = 1 it is `real`
    real, fake = torch.full((2, 1, 2, 2), 0.5), torch.zeros(2, 1, 2, 2)
    eps = torch.ones(2, 1, 1, 1)
    gp, norm = gradient_penalty(lambda x: (x**2).flatten(1).sum(1) / 2, real, fake, eps=eps)
    assert float(norm) == pytest.approx(1.0) and float(gp) == pytest.approx(0.0, abs=1e-12)
    gp, norm = gradient_penalty(lambda x: (x**2).flatten(1).sum(1) / 2, real, fake, eps=eps * 0)
    assert float(norm) == 0.0 and float(gp) == pytest.approx(1.0)


def test_adversarial_losses_on_known_scores():
    bce, w = AdversarialLoss("bce"), AdversarialLoss("wasserstein")
    real, fake = torch.tensor([[0.9], [0.8]]), torch.tensor([[0.1], [0.3]])
    expected = -(np.log(0.9) + np.log(0.8)) / 2 - (np.log(0.9) + np.log(0.7)) / 2
    assert float(bce.critic(real, fake)) == pytest.approx(expected, rel=1e-6)
    assert float(bce.generator(fake)) == pytest.approx(-(np.log(0.1) + np.log(0.3)) / 2, rel=1e-6)
    assert float(w.critic(torch.tensor([3.0, 1.0]), torch.tensor([0.5, -0.5]))) == pytest.approx(-2.0)
    assert float(w.generator(torch.tensor([0.5, -1.5]))) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        AdversarialLoss("hinge")


def _trainer(n_critic, gp_weight, loss, n_batches=10, epochs=1, handlers=()):
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    data = [{"image": torch.full((1, 16, 16), i / n_batches)} for i in range(n_batches)]
    g = GanGenerator(channels=(8, 4), img_size=16, latent_size=6)
    d = GanDiscriminator(channels=(4, 8), img_size=16, sigmoid=loss == "bce")
    go = torch.optim.Adam(g.parameters(), 5e-5, betas=(0.5, 0.9))
    do = torch.optim.Adam(d.parameters(), 5e-5, betas=(0.5, 0.9))
    steps = {"g": 0, "d": 0}
    go.register_step_post_hook(lambda *a: steps.__setitem__("g", steps["g"] + 1))
    do.register_step_post_hook(lambda *a: steps.__setitem__("d", steps["d"] + 1))
    reals = []
    orig = d.forward
    d.forward = lambda x: (reals.append(float(x.detach().flatten()[0])), orig(x))[1]
    t = AdversarialTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=DataLoader(data, batch_size=1),
        g_network=g,
        g_optimizer=go,
        d_network=d,
        d_optimizer=do,
        latent_shape=6,
        loss=loss,
        n_critic=n_critic,
        gp_weight=gp_weight,
        train_handlers=list(handlers),
    )
    return t, steps, reals


def test_n_critic_critic_updates_on_fresh_real_batches_per_generator_update():
    losses = GanLosses()
    t, steps, seen = _trainer(n_critic=5, gp_weight=10.0, loss="wasserstein", handlers=[losses])
    t.run()
    assert steps == {"d": 10, "g": 2} and (t.d_updates, t.g_updates) == (10, 2)
    # every batch of the epoch reached the critic exactly once as a real batch (no batch reused)
    batches = {round(i / 10, 6) for i in range(10)}
    assert {round(v, 6) for v in seen} & batches == batches
    out = t.state.output
    from monai.handlers import from_engine

    # MONAI's default MLflow / Stats transform finds a scalar 'loss' (the generator loss)
    loss = from_engine(["loss"], first=True)(out)
    assert isinstance(loss, float) and loss == out[0]["g_loss"] and out[0]["g_step"]
    assert {"d_loss", "gp", "grad_norm", "wasserstein", "d_real", "d_fake"} <= set(out[0])
    m = t.state.metrics
    assert m["generator_updates"] == 2 and all(
        np.isfinite(m[f"train_{k}"]) for k in ("g_loss", "d_loss", "gp")
    )
    assert m["train_gp"] > 0


def test_a_stopped_and_resumed_run_continues_exactly_as_an_uninterrupted_one(tmp_path):
    """GanCheckpoint(state_path) + GanResume: networks, optimisers, update counters, epoch and random
    generators come back, so 2 epochs, a stop and 2 more give the very weights of 4 epochs in one run."""

    def run(epochs, state, handlers=()):
        ck = []
        t, _, _ = _trainer(n_critic=2, gp_weight=10.0, loss="wasserstein", n_batches=4, epochs=epochs)
        ckpt = GanCheckpoint(t.g_network, t.d_network, str(tmp_path / state / "model.pt"),
                             state_path=str(tmp_path / state / "state.pt"), state_interval=100)  # fmt: skip
        for h in (GanResume(str(tmp_path / state / "state.pt")), ckpt, *handlers):
            h.attach(t)
            ck.append(h)
        t.run()
        return t, ck

    whole, _ = run(4, "whole")
    first, (_, _, stop) = run(4, "split", [StopAfter(0.0)])  # the time is up after the first epoch
    assert stop.stopped_at == 1 and first.state.epoch == 1 and (first.g_updates, first.d_updates) == (2, 4)
    assert (tmp_path / "split" / "state.pt").is_file()  # saved when the stopped run completed
    second, (resume, _) = run(4, "split")
    assert (
        resume.resumed_epoch == 1
        and second.state.epoch == 4
        and (second.g_updates, second.d_updates) == (8, 16)
    )
    for a, b in ((whole.g_network, second.g_network), (whole.d_network, second.d_network)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="epoch_length"):  # "epoch 1" of another length is another state
        t, _, _ = _trainer(n_critic=2, gp_weight=10.0, loss="wasserstein", n_batches=3, epochs=4)
        GanResume(str(tmp_path / "split" / "state.pt")).attach(t)
        t.run()


def test_dcgan_updates_both_networks_every_batch():
    t, steps, _ = _trainer(n_critic=1, gp_weight=0.0, loss="bce", n_batches=4, epochs=2)
    t.run()
    assert steps == {"d": 8, "g": 8}
    assert "gp" not in t.state.output[0] and "wasserstein" not in t.state.output[0]


def test_pairwise_msssim_identical_is_one_and_noise_is_low():
    torch.manual_seed(0)
    img = torch.rand(1, 1, 64, 64)
    assert pairwise_msssim(img.repeat(6, 1, 1, 1)) == pytest.approx(1.0, abs=1e-5)
    assert pairwise_msssim(torch.rand(6, 1, 64, 64)) < 0.1
    vol = torch.rand(1, 1, 32, 32, 32)
    assert pairwise_msssim(vol.repeat(3, 1, 1, 1, 1)) == pytest.approx(1.0, abs=1e-5)


def test_frechet_distance_zero_on_itself_grows_with_shift_and_matches_monai():
    from monai.metrics import FIDMetric

    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g, dtype=torch.float64)
    b = torch.randn(400, 8, generator=g, dtype=torch.float64) * 1.5 + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a shift c moves only the means: FD = |c|^2 exactly
    d1, d2 = frechet_distance(a, a + 0.5), frechet_distance(a, a + 1.0)
    assert d1 == pytest.approx(8 * 0.25, rel=1e-9) and d2 == pytest.approx(8 * 1.0, rel=1e-9) and d2 > d1
    assert frechet_distance(a, b) == pytest.approx(float(FIDMetric()(b, a)), rel=1e-6)
    # fewer samples than features (singular covariances) still gives a finite, non-negative value
    few = torch.randn(10, 128, generator=g, dtype=torch.float64)
    assert frechet_distance(few, few + 0.1) == pytest.approx(128 * 0.01, rel=1e-4)
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-3)  # vs traces of about 128


def test_mmd_zero_on_same_set_and_grows_with_shift():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 16, generator=g)
    # unbiased linear-kernel MMD: about the squared distance of the means (16 for a shift of 1 in 16 dims)
    assert mmd_linear(a, a + 1.0) == pytest.approx(16.0, rel=0.05) and mmd_linear(a, a + 1.0) > mmd_linear(
        a, a + 0.5
    )
    near, far = mmd_rbf(a, a + 0.1), mmd_rbf(a, a + 2.0)
    assert abs(mmd_rbf(a, a)) < 0.05 and far > near and far > 0.5
    collapsed = a[:1].repeat(64, 1)  # a "generator" that always emits one real sample
    assert (
        mmd_rbf(a, collapsed) > 0.25 and pairwise_msssim(torch.rand(1, 1, 64, 64).repeat(4, 1, 1, 1)) > 0.99
    )


def test_feature_space_is_the_trained_res_unet_encoder_or_says_it_is_not(tmp_path):
    f = AEFeatures(str(tmp_path / "missing.pt"))
    assert f.source.startswith("random-init") and f(torch.rand(3, 1, 64, 64)).shape == (3, 128)
    assert f(torch.rand(2, 1, 32, 32, 32)).shape == (2, 384)  # three middle planes of a volume
    again = AEFeatures(None)  # the fallback is fixed (seeded), so numbers compare across runs
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(f(x), again(x))
    from mriae.networks import ResUNetAE

    s4 = tmp_path / "s4.pt"  # S4's single-slice autoencoder: its encoder is the feature space
    torch.save(ResUNetAE(spatial_dims=2, img_size=128).state_dict(), s4)
    assert AEFeatures(str(s4)).source.startswith("trained ResUNetAE encoder (s4.pt, sha256 ")
    denoiser = tmp_path / "denoiser.pt"  # res_unet's default (5 slices + noise map in): does not fit, said so
    torch.save(ResUNetAE(in_channels=5, residual=True, full_res=16, norm="none", noise_map=True).state_dict(), denoiser)
    d = AEFeatures(str(denoiser))
    assert d.source.startswith("random-init ResUNetAE encoder (seed 0); denoiser.pt not used")
    torch.testing.assert_close(d(x), again(x))  # the same fixed fallback space


@pytest.mark.parametrize("bundle", GAN_BUNDLES)
def test_bundle_metadata_and_generator_io_verify(bundle):
    from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

    cfg = REPO / "bundles" / bundle / "configs"
    verify_metadata(meta_file=str(cfg / "metadata.json"), filepath=str(REPO / "bundles" / "meta_schema.json"))
    if bundle != "wgan_gp_3d":  # the 3D check (a 28M-parameter forward) runs in test_gan_bundles
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(cfg / "metadata.json"),
            config_file=str(cfg / "inference.json"),
        )
    train = ConfigParser.load_config_file(cfg / "train.json")
    infer = ConfigParser.load_config_file(cfg / "inference.json")
    assert train["network_def"] == infer["network_def"] and train["g_channels"] == infer["g_channels"]
    assert train["betas"] == [0.5, 0.9] and train["resume"] is False and train["stop_after_s"] is None
    if (
        bundle == "wgan_gp_3d"
    ):  # a live 3D recipe; S1's 2D recipe in 3D (the former default) is configs/s1.json
        assert (train["learning_rate"], train["g_norm"], train["kernel_size"]) == (1e-4, "batch", 4)
        assert (infer["g_norm"], infer["kernel_size"]) == ("batch", 4)
        s1 = ConfigParser.load_config_file(cfg / "s1.json")
        assert (s1["learning_rate"], s1["g_norm"], s1["kernel_size"]) == (5e-5, None, 5)
        assert s1["g_channels"] == [512, 256, 128, 64] and s1["d_channels"] == [64, 128, 256, 512]
    else:  # S1's exact recipe
        assert train["learning_rate"] == 5e-5 and "g_norm" not in train
    wgan = bundle.startswith("wgan")
    assert (train["n_critic"], train["gp_weight"], train["loss_name"]) == (
        (5, 10.0, "wasserstein") if wgan else (1, 0.0, "bce")
    )
    meta = json.loads((cfg / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == train["latent_size"] == 200
