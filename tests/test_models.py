"""The zoo against the paper: parameter counts, FLOPs, structure, inits, bad names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.models import BasicBlock, Bottleneck, PreActBlock, PreActBottleneck, ZeroPadShortcut
from gradflow.models.blocks import Projection, ScalarBias


def meta_model(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return gf.create_model(name, **options)


# He et al. 2016, Table 6, and the exact counts of the standard option-A implementation.
CIFAR_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
TABLE1_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("name, params", CIFAR_PARAMS.items())
def test_cifar_parameter_counts_match_the_paper(name, params):
    assert gf.count_parameters(meta_model(name)) == params


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet110"])
def test_plain_twin_has_the_same_parameters(name):
    plain = name.replace("resnet", "plain")
    assert gf.count_parameters(meta_model(plain)) == CIFAR_PARAMS[name]
    residual_layers = [
        type(m) for m in meta_model(name).modules() if not isinstance(m, nn.Sequential)
    ]
    plain_layers = [
        type(m) for m in meta_model(plain).modules() if not isinstance(m, nn.Sequential)
    ]
    # the only difference: option-A shortcut modules (parameter-free) and identities
    extra = {ZeroPadShortcut, nn.Identity}
    assert [t for t in residual_layers if t not in extra] == plain_layers


@pytest.mark.parametrize("name, params", TORCHVISION_PARAMS.items())
def test_imagenet_option_b_matches_torchvision(name, params):
    assert gf.count_parameters(meta_model(name, shortcut="B")) == params


@pytest.mark.parametrize("depth, gflops", TABLE1_GFLOPS.items())
def test_imagenet_flops_within_5_percent_of_table1(depth, gflops):
    model = meta_model(f"resnet{depth}")  # paper default: A for 18/34, B for 50+
    macs = gf.count_macs(model, (3, 224, 224)) / 1e9
    assert macs == pytest.approx(gflops, rel=0.05)
    if depth in (18, 34):  # Table 1's plain nets: the same FLOPs (option A adds none)
        plain = gf.count_macs(meta_model(f"plain{depth}"), (3, 224, 224)) / 1e9
        assert plain == pytest.approx(gflops, rel=0.05)


def test_bottleneck_stride_placement_changes_flops_not_params():
    paper = meta_model("resnet50", stride_in="1x1")
    v15 = meta_model("resnet50", stride_in="3x3")
    assert gf.count_parameters(paper) == gf.count_parameters(v15)
    macs_paper = gf.count_macs(paper, (3, 224, 224))
    macs_v15 = gf.count_macs(v15, (3, 224, 224))
    assert macs_paper == pytest.approx(3.8e9, rel=0.05)
    assert macs_v15 > macs_paper * 1.04  # torchvision's 4.1 G


def test_cifar_resnet56_layout():
    model = gf.create_model("resnet56")
    blocks = model.blocks()
    assert len(blocks) == 27
    assert [b.stage for b in blocks] == [1] * 9 + [2] * 9 + [3] * 9
    assert [b.index for b in blocks[:9]] == list(range(1, 10))
    assert all(isinstance(b, BasicBlock) and b.kind == "residual" for b in blocks)
    # 6n+2 weighted layers: 6n 3x3 convs in blocks, the stem conv and the fc
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 56
    assert [p for p, _ in model.named_blocks()][9] == "stage2.block1"
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    widths = [b.conv2.out_channels for b in blocks]
    assert widths[0] == 16 and widths[9] == 32 and widths[18] == 64


def test_any_6n_plus_2_depth_and_cifar_prefix():
    model = gf.create_model("resnet74", num_classes=7, in_channels=1)
    assert len(model.blocks()) == 36
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    cifar50 = gf.create_model("cifar_resnet50")
    assert len(cifar50.blocks()) == 24
    assert gf.get_model_info("resnet50").family == "imagenet"


def test_preactivation_nets():
    assert isinstance(gf.create_model("preresnet20").blocks()[0], PreActBlock)
    assert gf.get_model_info("preresnet164").blocks == 54
    model = meta_model("preresnet164")
    assert all(isinstance(b, PreActBottleneck) for b in model.blocks())
    assert gf.count_parameters(model) == pytest.approx(1.7e6, rel=0.02)  # He et al. 2016b
    assert gf.count_parameters(meta_model("preresnet1001")) == pytest.approx(10.2e6, rel=0.02)


def test_forward_composes_from_stem_blocks_and_head():
    model = gf.create_model("resnet20").eval()
    x = torch.randn(3, 3, 32, 32)
    z = model.forward_stem(x)
    for block in model.blocks():
        z = block(z)
    torch.testing.assert_close(model.forward_head(z), model(x))


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "preresnet20", "preresnet164"])
def test_block_is_branch_plus_shortcut(name):
    model = gf.create_model(name, shortcut="B" if name == "resnet18" else None).eval()
    size = 64 if name == "resnet18" else 16
    z = model.forward_stem(torch.randn(2, 3, size, size))
    for block in model.blocks():
        added = block.branch(z) + block.shortcut(z)
        expected = added if block.preactivation else torch.relu(added)
        torch.testing.assert_close(block(z), expected)
        z = block(z)


def test_plain_blocks_have_no_shortcut():
    block = gf.create_model("plain20").blocks()[3]
    assert block.kind == "plain" and block.skip is None
    with pytest.raises(ValueError, match="plain"):
        block.shortcut(torch.zeros(1, 32, 8, 8))


def test_shortcut_options():
    a = gf.create_model("resnet18").blocks()
    b = gf.create_model("resnet18", shortcut="B").blocks()
    c = gf.create_model("resnet18", shortcut="C").blocks()
    assert isinstance(a[2].skip, ZeroPadShortcut) and isinstance(a[0].skip, nn.Identity)
    assert isinstance(b[2].skip, Projection) and isinstance(b[0].skip, nn.Identity)
    assert all(isinstance(block.skip, Projection) for block in c)
    assert isinstance(gf.create_model("resnet50").blocks()[0], Bottleneck)


def test_option_a_zero_pads_and_subsamples():
    shortcut = ZeroPadShortcut(2, 4, stride=2)
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    y = shortcut(x)
    assert y.shape == (1, 4, 2, 2)
    torch.testing.assert_close(y[:, :2], x[:, :, ::2, ::2])
    assert torch.all(y[:, 2:] == 0)


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_zero_gamma_post_activation_block_is_identity_on_nonnegative_input(name):
    model = gf.create_model(name, init="zero_gamma", shortcut="B" if name == "resnet50" else None)
    model.train()  # also in train mode: gamma = 0 and beta = 0 zero the branch whatever the batch
    for block in model.blocks():
        if isinstance(block.skip, nn.Identity):
            channels = block.conv1.in_channels
            x = torch.rand(4, channels, 8, 8)  # non-negative, as every post-ReLU input is
            assert torch.equal(block(x), x)
            assert torch.equal(block.branch(x), torch.zeros_like(x))
        assert torch.all(block.last_norm.weight == 0)


@pytest.mark.parametrize("name", ["preresnet20", "preresnet164"])
def test_zero_gamma_preactivation_block_is_identity_on_any_input(name):
    model = gf.create_model(name, init="zero_gamma")
    for block in model.blocks():
        if isinstance(block.skip, nn.Identity):
            x = torch.randn(4, block.conv1.in_channels, 8, 8)  # negative values too
            assert torch.equal(block(x), x)


def test_he_init_statistics():
    model = gf.create_model("resnet56")
    conv = model.blocks()[20].conv1  # 64 -> 64 channels, 3x3: fan_out = 576
    expected_std = (2 / (64 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.all(model.blocks()[20].bn2.weight == 1)


def test_skipinit_adds_zero_scalar_and_blocks_start_as_identity():
    model = gf.create_model("resnet20", init="skipinit")
    names = [n for n, _ in model.named_parameters() if n.endswith("branch_scale")]
    assert len(names) == 9
    block = model.blocks()[1]
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(block(x), x)
    assert block.branch_scale.requires_grad


def test_fixup_has_no_batchnorm_and_scaled_branches():
    model = gf.create_model("resnet20", init="fixup")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, ScalarBias) for m in model.modules())
    blocks = model.blocks()
    assert all(torch.all(b.conv2.weight == 0) for b in blocks)
    assert all(b.branch_scale.item() == 1.0 for b in blocks)
    assert torch.all(model.fc.weight == 0)
    # first conv of the branch scaled by L^(-1/(2m-2)) = 9^(-1/2) relative to He init
    he_std = (2 / (32 * 9)) ** 0.5
    assert blocks[5].conv1.weight.std().item() == pytest.approx(he_std / 3, rel=0.1)
    out = model(torch.randn(2, 3, 32, 32))
    assert torch.all(out == 0)


def test_inits_reject_plain_nets():
    with pytest.raises(ValueError, match="plain nets have no shortcut"):
        gf.create_model("plain20", init="zero_gamma")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("resnt56", {}, "did you mean resnet56"),
        ("resnet21", {}, "6n\\+2"),
        ("preresnet165", {}, "9n\\+2"),
        ("resnet20", {"shortcut": "D"}, "allowed: A, B, C"),
        ("resnet20", {"init": "xavier"}, "he, zero_gamma, skipinit, fixup"),
        ("resnet20", {"depth": 3}, "allowed: shortcut, init"),
        ("resnet20", {"num_classes": 0}, "positive integer"),
        ("plain20", {"shortcut": "B"}, "plain networks have no shortcuts"),
        ("resnet20", {"init": "fixup", "norm": "bn"}, "without normalisation"),
    ],
)
def test_bad_names_and_options_say_what_is_allowed(name, options, message):
    with pytest.raises(ValueError, match=message):
        gf.create_model(name, **options)


def test_register_decorator_and_listing():
    @gf.register("test_tiny_mlp", input_size=(1, 4, 4))
    def tiny(num_classes: int = 3) -> nn.Module:
        """A tiny MLP."""
        return nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))

    assert "test_tiny_mlp" in gf.list_models()
    assert gf.get_model_info("test_tiny_mlp").description == "A tiny MLP."
    assert gf.create_model("test_tiny_mlp", num_classes=5)[1].out_features == 5
    assert gf.list_models("imagenet") == [
        f"{p}{d}" for p in ("plain", "resnet") for d in TABLE1_GFLOPS
    ]
    for name in ["plain20", "resnet1202", "preresnet1001", "plain152"]:
        assert name in gf.list_models()


def test_response_layers_follow_figure7():
    model = gf.create_model("resnet20")
    layers = model.response_layers()
    assert layers[0] == "stem.bn" and layers[1:3] == ["stage1.block1.bn1", "stage1.block1.bn2"]
    assert len(layers) == 19  # every 3x3 conv: 6n + 1
    modules = dict(model.named_modules())
    assert all(isinstance(modules[name], nn.BatchNorm2d) for name in layers)


def test_file_factory_models(tmp_path):
    good = tmp_path / "net.py"
    good.write_text("import torch.nn as nn\ndef build(width=4):\n    return nn.Linear(3, width)\n")
    assert gf.create_model(f"{good}:build", width=6).out_features == 6
    with pytest.raises(ValueError, match="no callable 'missing'"):
        gf.create_model(f"{good}:missing")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ValueError, match="could not import"):
        gf.create_model(f"{broken}:build")
    with pytest.raises(ValueError, match="does not exist"):
        gf.create_model(f"{tmp_path / 'nope.py'}:build")


def test_torchvision_models_without_weights():
    pytest.importorskip("torchvision")
    model = gf.create_model("torchvision:resnet18")
    assert gf.count_parameters(model) == TORCHVISION_PARAMS["resnet18"]
