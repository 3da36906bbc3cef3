"""Two pre-LN / post-LN nn.TransformerEncoder classifiers on token ids from example_inputs."""

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, norm_first, vocab=50, width=16, depth=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(
            width, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 3)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def pre_ln():
    return Encoder(norm_first=True)


def post_ln():
    return Encoder(norm_first=False)


def example_inputs(batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (batch_size, 6), generator=g), torch.arange(batch_size) % 3
