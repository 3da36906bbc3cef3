"""Two positional inputs (an image and a feature vector) from example_inputs."""

import torch
from torch import nn


class TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.feat = nn.Linear(5, 16)
        self.fuse = nn.ModuleList([nn.Linear(16, 16) for _ in range(3)])
        self.out = nn.Linear(16, 3)

    def forward(self, image, features):
        z = torch.flatten(self.conv(image), 1) + self.feat(features)
        for layer in self.fuse:
            z = z + torch.relu(layer(z))
        return self.out(z)


def build():
    return TwoInput()


def example_inputs(batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    inputs = (
        torch.randn(batch_size, 3, 8, 8, generator=g),
        torch.randn(batch_size, 5, generator=g),
    )
    return inputs, torch.arange(batch_size) % 3
