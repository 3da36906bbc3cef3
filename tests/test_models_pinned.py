"""Zoo numerics pinned: the same seed gives the same weights, layout and outputs as before.

The numbers were taken at seed 0 before the torchvision-style block refactor (issue 12
item 5): any change in construction order, registration order (which fixes the order of
He init's draws and of the state dict) or forward arithmetic fails here.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import pytest
import torch

import gradflow as gf


class Pin(NamedTuple):
    name: str
    options: dict
    image_size: int
    parameters: int
    state_layout_sha: str
    abs_sum: float
    first_values: dict[str, list[float]]
    logits: list[list[float]]


PINNED = {
    "resnet20": Pin(
        "resnet20",
        {},
        32,
        59,
        "396ac968ce02f10c",
        14966.065133790002,
        {
            "stem.conv.weight": [-0.110679135, -0.04676494, 0.0353258438],
            "stage2.block1.conv1.weight": [-0.0290414765, -0.00854794215, -0.185053036],
            "stage3.block3.conv2.weight": [0.0380927585, -0.038317591, -0.0548097119],
            "fc.weight": [0.110966638, -0.102830365, 0.068447873],
            "fc.bias": [0.112096459, -0.0658978522, 0.117534861],
        },
        [
            [0.911614776, -1.64239681, -0.907356977, -0.571752965],
            [0.825285077, -1.57988179, -0.96101284, -0.694424927],
        ],
    ),
    "plain20": Pin(
        "plain20",
        {},
        32,
        59,
        "396ac968ce02f10c",
        14966.065133790002,
        {
            "stem.conv.weight": [-0.110679135, -0.04676494, 0.0353258438],
            "stage2.block1.conv1.weight": [-0.0290414765, -0.00854794215, -0.185053036],
            "stage3.block3.conv2.weight": [0.0380927585, -0.038317591, -0.0548097119],
            "fc.weight": [0.110966638, -0.102830365, 0.068447873],
            "fc.bias": [0.112096459, -0.0658978522, 0.117534861],
        },
        [
            [0.109036371, -0.084474206, 0.0989751667, 0.0403431356],
            [0.108325697, -0.0854387805, 0.100076206, 0.0398064852],
        ],
    ),
    "preresnet20": Pin(
        "preresnet20",
        {},
        32,
        59,
        "f9d09fbaf57f5560",
        14966.065133790002,
        {
            "stem.conv.weight": [-0.110679135, -0.04676494, 0.0353258438],
            "stage2.block1.conv1.weight": [-0.0290414765, -0.00854794215, -0.185053036],
            "stage3.block3.conv2.weight": [0.0380927585, -0.038317591, -0.0548097119],
            "fc.weight": [0.110966638, -0.102830365, 0.068447873],
            "fc.bias": [0.112096459, -0.0658978522, 0.117534861],
        },
        [
            [1.01246989, -1.18898118, -0.547074318, -0.159099683],
            [0.873432636, -1.16943157, -0.637247503, -0.255063713],
        ],
    ),
    "resnet18_B": Pin(
        "resnet18",
        {"shortcut": "B"},
        64,
        62,
        "730546832b0368d6",
        235862.11503662038,
        {
            "stem.conv.weight": [0.0241096746, 0.00752877491, 0.0466583744],
            "stage2.block1.conv1.weight": [-0.0760005191, 0.0233977269, -0.0900823027],
            "stage4.block2.conv2.weight": [0.0288654901, 0.0117322672, -0.0145874098],
            "fc.weight": [-0.0203154963, 0.0186778661, 0.0375562198],
            "fc.bias": [-0.0173277222, -0.0431646034, 0.00868439488],
            "stage2.block1.skip.conv.weight": [-0.108718976, 0.0762314051, -0.174756587],
        },
        [
            [0.739361823, 0.662243247, -0.721148372, 0.373781979],
            [0.76384747, 0.715973675, -0.572044134, 0.237797007],
        ],
    ),
    "resnet50": Pin(
        "resnet50",
        {},
        64,
        161,
        "a3432d65780df9ea",
        764318.5418523113,
        {
            "stem.conv.weight": [-0.0585507043, 0.0245902371, 0.0291172192],
            "stage2.block1.conv1.weight": [0.127982959, 0.0444700979, -0.00374070113],
            "stage4.block3.conv2.weight": [-0.000503450225, -0.000666987384, 0.00660482794],
            "fc.weight": [-0.00774907973, -0.00862435158, -0.0156279355],
            "fc.bias": [-0.0134949759, 0.0190061182, -0.0150167318],
            "stage1.block1.skip.conv.weight": [-0.00593958423, 0.144574508, -0.052658394],
        },
        [
            [-4.7764473, -10.528904, 5.5735116, -23.6766071],
            [-4.67137146, -10.0111246, 5.08557796, -22.3734512],
        ],
    ),
    "preresnet164": Pin(
        "preresnet164",
        {},
        32,
        500,
        "216591d11fd70bcf",
        152625.80604549934,
        {
            "stem.conv.weight": [0.136372, 0.0482590124, 0.170584157],
            "stage2.block1.conv1.weight": [-0.0497522689, -0.16763556, 0.469352484],
            "stage3.block18.conv2.weight": [0.0065690577, -0.121375702, 0.0886613652],
            "fc.weight": [-0.0109523758, 0.00416322798, -0.0291707218],
            "fc.bias": [8.15168023e-05, 0.0520419925, -0.0215845257],
            "stage1.block1.skip.conv.weight": [0.240192503, 0.0714951605, -0.101390034],
        },
        [
            [196502.062, -2890888.0, -4840829.0, 5461458.0],
            [30827.1875, -2869224.5, -4788760.5, 5426219.5],
        ],
    ),
    "resnet20_fixup": Pin(
        "resnet20",
        {"init": "fixup"},
        32,
        49,
        "744c5a0f86e1884f",
        2218.669888845626,
        {
            "stem.conv.weight": [-0.110679135, -0.04676494, 0.0353258438],
            "stage2.block1.conv1.weight": [-0.0096804928, -0.00284931413, -0.0616843477],
            "stage3.block3.conv2.weight": [0.0, 0.0, 0.0],
            "fc.weight": [0.0, 0.0, 0.0],
            "fc.bias": [0.0, 0.0, 0.0],
        },
        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    ),
    "resnet20_skipinit": Pin(
        "resnet20",
        {"init": "skipinit"},
        32,
        68,
        "ddcd189d59dbcaf1",
        14966.065133790002,
        {
            "stem.conv.weight": [-0.110679135, -0.04676494, 0.0353258438],
            "stage2.block1.conv1.weight": [-0.0290414765, -0.00854794215, -0.185053036],
            "stage3.block3.conv2.weight": [0.0380927585, -0.038317591, -0.0548097119],
            "fc.weight": [0.110966638, -0.102830365, 0.068447873],
            "fc.bias": [0.112096459, -0.0658978522, 0.117534861],
        },
        [
            [-0.0227353275, -0.167637691, -0.0181242973, -0.0541886389],
            [-0.0187903643, -0.172259063, -0.0071683377, -0.0656728521],
        ],
    ),
    "resnet56_C": Pin(
        "resnet56",
        {"shortcut": "C"},
        32,
        248,
        "9c531d19a95e6775",
        55393.161645909066,
        {
            "stem.conv.weight": [0.0159351807, -0.13725175, -0.0967993885],
            "stage2.block1.conv1.weight": [-0.0456644818, -0.172322273, -0.129675001],
            "stage3.block9.conv2.weight": [0.0105956001, -0.0812965184, -0.0860273689],
            "fc.weight": [-0.0128697008, -0.0424565077, 0.0454221964],
            "fc.bias": [-0.106064647, -0.0492220223, -0.0443754047],
            "stage1.block1.skip.conv.weight": [-0.163457841, 0.14920938, 0.0501594804],
        },
        [
            [427.086395, 143.182495, 606.86731, 98.7723694],
            [390.927124, 144.581329, 563.93634, 84.3687592],
        ],
    ),
}


@pytest.mark.parametrize("key", PINNED)
def test_seed_0_weights_layout_and_outputs_are_pinned(key):
    pin = PINNED[key]
    torch.manual_seed(0)
    model = gf.create_model(pin.name, **pin.options).eval()
    params = dict(model.named_parameters())
    assert len(params) == pin.parameters
    layout = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    assert hashlib.sha256(layout.encode()).hexdigest()[:16] == pin.state_layout_sha
    for name, values in pin.first_values.items():
        got = params[name].detach().flatten()[:3]
        torch.testing.assert_close(got, torch.tensor(values), rtol=1e-6, atol=1e-9)
    abs_sum = sum(p.detach().double().abs().sum().item() for p in model.parameters())
    assert abs_sum == pytest.approx(pin.abs_sum, rel=1e-6)
    size = pin.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)[:, :4]
    expected = torch.tensor(pin.logits)
    # 1e-5 of the output scale: conv sums are reordered by the thread count and the CPU's
    # kernels (resnet50: 7e-7; resnet18_B on an AMD EPYC: 1.3e-6); a wrong init moves it O(1)
    scale = max(expected.abs().max().item(), 1e-3)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5 * scale)
