"""The S4 family's networks and bundles: Keras parameter counts, 2D / 3D shapes, L2 on kernels only,
spatial dropout, metadata and network shapes that verify, configs in sync with res_unet's."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import REPO
from monai.bundle import ConfigParser

from mriae.train.engine import param_groups
from mriae.networks import MyronenkoAE, ResUNetAE, SkipCAE, count_parameters


def _build_tool():  # scripts/s4_family.py is build-time tooling, outside the runtime package
    spec = importlib.util.spec_from_file_location("s4_family", REPO / "scripts" / "s4_family.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_S4 = _build_tool()
S4_BUNDLES, derive_configs = _S4.S4_BUNDLES, _S4.derive_configs
BUNDLES = ["res_unet", *S4_BUNDLES]


@pytest.mark.parametrize(
    "make, spec",
    [
        (lambda: ResUNetAE(skip=False), 460_609),
        (lambda: ResUNetAE(skip=False, block="original"), 462_017),
        (lambda: SkipCAE(), 191_041),
        (lambda: MyronenkoAE(), 991_000),
    ],
)
def test_keras_parameter_counts_within_one_percent_of_s4(make, spec):
    n = count_parameters(make())
    assert abs(n - spec) / spec < 0.01, n


def test_exact_counts():
    assert count_parameters(SkipCAE()) == 191_041  # S4's figure exactly
    assert count_parameters(MyronenkoAE()) == 991_041  # the seed code's layer plan, computed
    assert count_parameters(ResUNetAE(skip=False)) == 460_609


@pytest.mark.parametrize(
    "cls", [SkipCAE, MyronenkoAE, lambda **k: ResUNetAE(skip=False, block="original", **k)]
)
@pytest.mark.parametrize("dims, size", [(2, (2, 1, 128, 128)), (3, (1, 1, 16, 24, 32))])
def test_shapes_2d_3d_and_sigmoid_range(cls, dims, size):
    net = cls(spatial_dims=dims).eval()
    with torch.no_grad():
        y = net(torch.rand(size))
    assert y.shape == size and float(y.min()) > 0 and float(y.max()) < 1


def test_skip_cae_adds_encoder_features_into_the_decoder():
    net = SkipCAE().eval()
    assert net.up1.up.out_channels == net.enc2[0].out_channels == 64  # addition needs equal widths
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ref = net(x)
        net.enc3[0].weight.zero_()
        net.enc3[0].bias.zero_()
        cut = net(x)
    # with the latent path silenced the output still depends on the input, through the skips
    assert not torch.allclose(ref, cut)
    with torch.no_grad():
        assert not torch.allclose(net(x), net(torch.rand(1, 1, 64, 64)))


def test_myronenko_spatial_dropout_drops_whole_channels_in_training_only():
    net = MyronenkoAE(dropout=0.5)
    drop = net.encoder[1]
    assert isinstance(drop, torch.nn.Dropout2d) and isinstance(
        MyronenkoAE(spatial_dims=3).encoder[1], torch.nn.Dropout3d
    )
    feats = torch.ones(4, 32, 8, 8)
    drop.train()
    y = drop(feats)
    per_channel = y.flatten(2)
    assert torch.all(
        (per_channel == 0).all(-1) | (per_channel == 2).all(-1)
    )  # a channel is all kept or all gone
    assert 0 < float((per_channel == 0).all(-1).float().mean()) < 1
    net.eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    # every green block has a 1x1 conv shortcut, even without a width change (the seed's code)
    gb = [m for m in net.encoder if type(m).__name__ == "GreenBlock"]
    assert len(gb) == 5 and all(b.shortcut.kernel_size == (1, 1) for b in gb)


@pytest.mark.parametrize("net", [SkipCAE(), MyronenkoAE(), ResUNetAE(skip=False, block="original")])
def test_l2_on_convolution_kernels_only(net):
    groups = param_groups(net, 1e-5)
    kernels = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == pytest.approx(2e-5) and groups[1]["weight_decay"] == 0.0
    convs = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert kernels == {id(m.weight) for m in convs}  # every Conv and ConvTranspose kernel, nothing else
    n_all = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == n_all
    assert param_groups(net, 0.0)[0].get("weight_decay", 0) == 0


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_and_network_shapes_verify(name):
    from monai.bundle import verify_metadata, verify_net_in_out

    b = REPO / "bundles" / name
    verify_metadata(
        meta_file=str(b / "configs/metadata.json"), filepath=str(REPO / "bundles/meta_schema.json")
    )
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(b / "configs/metadata.json"),
        config_file=str(b / "configs/inference.json"),
    )
    meta = json.loads((b / "configs/metadata.json").read_text())
    assert meta["name"] == name
    card = (b / "docs/README.md").read_text()
    for section in ("## Model overview", "## Data", "## Training configuration", "## Input", "## Output",
                    "## Performance", "## MONAI bundle commands", "## References", "## License"):  # fmt: skip
        assert section in card, (name, section)


@pytest.mark.parametrize("name", list(S4_BUNDLES))
def test_bundles_are_res_unet_configs_with_another_network(name):
    src, b = REPO / "bundles" / "res_unet", REPO / "bundles" / name
    derived = derive_configs(src, name)
    for fname in ("train.json", "inference.json", "evaluate.json", "metadata.json"):
        on_disk = json.loads((b / "configs" / fname).read_text())
        assert on_disk == derived[fname], f"{name}/{fname} out of sync: run python scripts/make_s4_bundles.py"
    train = ConfigParser.load_config_file(b / "configs/train.json")
    ref = ConfigParser.load_config_file(src / "configs/train.json")
    changed = {k for k in set(train) | set(ref) if train.get(k) != ref.get(k)}
    allowed = {"bundle_name", "network_def", "hyperparameters", "block", "spatial_dropout"}
    if train["network_def"]["_target_"] != "mriae.networks.ResUNetAE":  # options only ResUNetAE has
        allowed |= {"full_res", "norm", "noise_map"}
    assert changed <= allowed
    infer = ConfigParser.load_config_file(b / "configs/inference.json")
    assert infer["network_def"] == train["network_def"]
    # S4's exact recipe (configs/s4.json over train.json) has S4's parameter counts; the overrides users
    # give: loss, L2, and the block type of the shallow AE
    p = ConfigParser(ConfigParser.load_config_files([b / "configs/train.json", b / "configs/s4.json"]))
    p["loss_name"], p["l2"] = "dssim", 1e-5
    if name == "shallow_res_ae":
        p["block"] = "original"
    net = p.get_parsed_content("network_def", instantiate=True)
    assert (
        count_parameters(net)
        == {"shallow_res_ae": 460_993, "skip_cae": 191_041, "myronenko_ae": 991_041}[name]
    )
    assert type(p.get_parsed_content("loss", instantiate=True)).__name__ == "DSSIMLoss"
    groups = p.get_parsed_content("optimizer", instantiate=True).param_groups
    assert [g["weight_decay"] for g in groups] == [pytest.approx(2e-5), 0.0]
    assert p.get_parsed_content("hyperparameters#parameters_keras_count") == count_parameters(net)
