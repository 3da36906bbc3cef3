"""User-style model factories (no gradflow base classes), for tests and as CLI model files.

Each factory ``name() -> (model, inputs, targets)`` builds a small seeded model written the
way users write them, with a probe batch; ``python -m gradflow analyze --model
tests/user_models.py:resnet`` style callers use the model alone (``MODELS[name]()[0]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _seeded(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class PlainMLP(nn.Module):
    """A deep plain tanh MLP: a ModuleList of Linear layers, activations in forward."""

    def __init__(self, width: int = 16, depth: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.out(x)


class PreLNBlock(nn.Module):
    """x + W2 gelu(W1 LN(x))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    """A pre-LN residual MLP: embed, a Sequential of PreLNBlocks, norm, head."""

    def __init__(self, inputs: int = 12, width: int = 16, depth: int = 4, classes: int = 4):
        super().__init__()
        self.embed = nn.Linear(inputs, width)
        self.blocks = nn.Sequential(*(PreLNBlock(width) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))))


class Encoder(nn.Module):
    """Token embedding + nn.TransformerEncoder (pre- or post-LN) + a classifier on the mean."""

    def __init__(self, norm_first: bool, vocab: int = 32, width: int = 16, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(
            width, 2, 2 * width, dropout=0.1, batch_first=True, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1 x)))) + downsample(x))."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A torchvision-style ResNet (conv1/bn1/relu/maxpool, layer1..layer3, avgpool, fc)."""

    def __init__(self, layers=(2, 2, 2), classes: int = 5) -> None:
        super().__init__()
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = self._make_layer(8, layers[0])
        self.layer2 = self._make_layer(16, layers[1], stride=2)
        self.layer3 = self._make_layer(32, layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DoubleConv(nn.Sequential):
    """(conv 3x3, BN, ReLU) x 2, as in the common PyTorch UNet."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )  # fmt: skip


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    """Up-convolution, concatenation with the skip tensor, double conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """A two-level UNet (inc, down1, down2, up1, up2, outc) with attribute submodules."""

    def __init__(self, channels: int = 3, classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.inc = DoubleConv(channels, width)
        self.down1, self.down2 = Down(width, 2 * width), Down(2 * width, 4 * width)
        self.up1, self.up2 = Up(4 * width, 2 * width), Up(2 * width, width)
        self.outc = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x = self.up1(self.down2(x2), x2)
        return self.outc(self.up2(x, x1))


class LSTMClassifier(nn.Module):
    """Linear input projection, a two-layer LSTM, a classifier on the last step."""

    def __init__(self, features: int = 6, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(features, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.proj(x))
        return self.fc(out[:, -1])


class TwoInput(nn.Module):
    """An image and a feature vector, fused: forward(image, features)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.feat = nn.Linear(5, 16)
        self.fuse = nn.ModuleList([nn.Linear(16, 16) for _ in range(3)])
        self.out = nn.Linear(16, classes)

    def forward(self, image: Tensor, features: Tensor) -> Tensor:
        z = torch.flatten(self.conv(image), 1) + self.feat(features)
        for layer in self.fuse:
            z = z + torch.relu(layer(z))
        return self.out(z)


class DictOutput(nn.Module):
    """Returns {"logits": ..., "features": ...}."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Sequential(nn.Linear(10, 16), nn.ReLU()), nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.body(x)
        return {"logits": self.head(features), "features": features}


def plain_mlp():
    g = _seeded()
    return PlainMLP(), torch.randn(6, 16, generator=g), torch.randint(0, 4, (6,), generator=g)


def residual_mlp():
    g = _seeded()
    return ResidualMLP(), torch.randn(6, 12, generator=g), torch.randint(0, 4, (6,), generator=g)


def pre_ln_encoder():
    g = _seeded()
    return Encoder(True), torch.randint(0, 32, (3, 5), generator=g), torch.tensor([0, 1, 2])


def post_ln_encoder():
    g = _seeded()
    return Encoder(False), torch.randint(0, 32, (3, 5), generator=g), torch.tensor([0, 1, 2])


def resnet():
    g = _seeded()
    return ResNet(), torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)


def unet():
    g = _seeded()
    x = torch.randn(2, 3, 8, 8, generator=g)
    return UNet(), x, torch.randint(0, 2, (2, 8, 8), generator=g)


def lstm():
    g = _seeded()
    return LSTMClassifier(), torch.randn(3, 4, 6, generator=g), torch.tensor([0, 1, 2])


def two_input():
    g = _seeded()
    inputs = (torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 5, generator=g))
    return TwoInput(), inputs, torch.tensor([0, 1, 2])


def dict_output():
    g = _seeded()
    return DictOutput(), torch.randn(4, 10, generator=g), torch.tensor([0, 1, 2, 0])


def gpt2():
    """A 2-layer GPT-2 from a config (needs transformers); inputs as a dict of kwargs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded()
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids


MODELS = {
    "plain_mlp": plain_mlp, "residual_mlp": residual_mlp, "pre_ln_encoder": pre_ln_encoder,
    "post_ln_encoder": post_ln_encoder, "resnet": resnet, "unet": unet, "lstm": lstm,
    "two_input": two_input, "dict_output": dict_output, "gpt2": gpt2,
}  # fmt: skip
