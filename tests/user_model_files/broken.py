"""Models that go wrong in the ways users' models do (for the bad-input tests)."""

from torch import nn


def raises():
    raise RuntimeError("CUDA is required for this model")


class FailingForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        raise ValueError("expected a dict with key 'image'")


def failing_forward():
    return FailingForward()


def embedding():
    return nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(8 * 5, 2))
