"""A deep plain tanh MLP on 32 features (no example_inputs: run it with --input-shape 32)."""

from torch import nn


def build(depth: int = 8, width: int = 16):
    layers = [nn.Linear(32, width)]
    for _ in range(depth):
        layers += [nn.Tanh(), nn.Linear(width, width)]
    return nn.Sequential(*layers, nn.Tanh(), nn.Linear(width, 4))
