"""A model that returns a dict, with its own loss beside the factory."""

import torch
from torch import nn


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Sequential(nn.Linear(10, 16), nn.ReLU()),
            nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
            nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
        )
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        features = self.body(x)
        return {"logits": self.head(features), "features": features}


def build():
    return DictOutput()


def example_inputs(batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 10, generator=g)


def loss(output, targets):
    return output["logits"].logsumexp(1).mean()
