"""S4's Residual U-Net: shapes, parameter counts, options."""

import pytest
import torch

from mriae.networks import ResUNetAE, count_parameters


def test_parameter_counts_match_s4():
    net = ResUNetAE()
    assert count_parameters(net) == 483_649  # Keras' count, as reported by S4
    assert abs(count_parameters(net, keras=False) - 483_649) / 483_649 < 0.01
    assert count_parameters(ResUNetAE(skip=False)) == 460_609  # shallow residual AE, full pre-activation


@pytest.mark.parametrize("block", ["full_preact", "original"])
def test_shapes_and_range_2d(block):
    net = ResUNetAE(block=block).eval()
    x = torch.rand(2, 1, 128, 128)
    y = net(x)
    assert y.shape == x.shape and 0 < y.min() and y.max() < 1


def test_3d_and_other_sizes():
    net = ResUNetAE(spatial_dims=3, channels=(8, 16, 32)).eval()
    assert net(torch.rand(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
    net2 = ResUNetAE(img_size=64).eval()
    assert net2(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_unknown_block():
    with pytest.raises(ValueError, match="block"):
        ResUNetAE(block="bottleneck")


def test_latent_is_16x16x128():
    net = ResUNetAE().eval()
    z = net.stage3(net.stage2(net.stem(torch.rand(1, 1, 128, 128))))
    assert z.shape == (1, 128, 16, 16)


def test_l2_applies_to_conv_kernels_only():
    from mriae.train.engine import param_groups

    net = ResUNetAE()
    groups = param_groups(net, 1e-5)
    n_kernels = sum(p.numel() for p in groups[0]["params"])
    convs = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert n_kernels == sum(m.weight.numel() for m in convs)
    assert groups[0]["weight_decay"] == 2e-5 and groups[1]["weight_decay"] == 0.0
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(net, keras=False)
    assert len(param_groups(net, 0.0)) == 1


def test_the_shipped_denoiser_compiles_to_torchscript_and_matches():
    """monai.bundle ckpt_export scripts network_def: the denoiser (noise-level map, residual head)
    must compile with TorchScript and give the eager network's output."""
    import torch

    from mriae.networks import ResUNetAE

    torch.manual_seed(0)
    net = ResUNetAE(spatial_dims=2, in_channels=5, out_channels=1, channels=[8, 16, 32], block="full_preact",
                    skip=True, residual=True, full_res=4, norm="none", noise_map=True).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 5, 48, 40)
    with torch.no_grad():
        eager, ts = net(x), scripted(x)
    assert ts.shape == (2, 1, 48, 40)
    assert torch.allclose(ts, eager, atol=1e-6)
    assert (eager - x[:, 2:3]).abs().max() > 0  # the network changes its input
    # Immerkaer's mask is a buffer that moves with the network and is not saved with the weights
    assert "noise_map.mask" in dict(net.named_buffers()) and not any("mask" in k for k in net.state_dict())
    fresh = ResUNetAE(spatial_dims=2, in_channels=5, out_channels=1, channels=[8, 16, 32], block="full_preact",
                      skip=True, residual=True, full_res=4, norm="none", noise_map=True).eval()
    fresh.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), eager)
