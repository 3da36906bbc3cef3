"""Pre-LN vs post-LN transformers at initialisation (Xiong et al. 2020): gradients and spectra.

Xiong et al., "On Layer Normalization in the Transformer Architecture" (ICML 2020): at
initialisation the gradient of the parameters near the output of a post-LN transformer
(LayerNorm after each residual addition) is large, which is why it needs a learning-rate
warm-up, while in a pre-LN transformer (LayerNorm at the start of each branch, one final
LayerNorm) the per-layer gradient norm does not depend on the layer. Their Theorem 1 bounds
the gradient of the last FFN weight W^{2,L}: O(d sqrt(ln d)) for post-LN, independent of the
depth L, against O(d sqrt(ln d / L)) for pre-LN. Here: causal language models of equal size
(nn.TransformerEncoder, ``norm_first`` True or False, Xavier init as in the paper) on
synthetic tokens of a seeded Markov chain, per-layer parameter-gradient norms at several
depths and seeds (``gf.record``), the structure gradflow finds (``gf.structure``) and block
and cumulative Jacobian spectra (``gf.block_spectra``: I+J_F and J_F of pre-LN layers, J_H of
post-LN layers, prod from the embedding output). Nothing is trained.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

import gradflow as gf
from gradflow.state import preserved_rng
from gradflow.structure import COLUMNS as STRUCTURE_COLUMNS

from .common import Experiment, parse_args
from .transformer_ln_report import write_transformer_report

VARIANTS = {"pre-LN": True, "post-LN": False}  # name -> norm_first
PARAMETERS = {  # what Xiong et al. call each weight -> its path inside a layer
    "W^2 (FFN out)": "linear2.weight",
    "W^1 (FFN in)": "linear1.weight",
    "W^QKV": "self_attn.in_proj_weight",
    "W^O": "self_attn.out_proj.weight",
}


@dataclass(frozen=True)
class Size:
    """Model and measurement sizes of one scale."""

    depths: tuple[int, ...]
    width: int
    heads: int
    vocab: int
    seq_len: int
    batch: int  # sequences per gradient measurement
    seeds: int  # initialisations per (variant, depth) for the gradients
    k: int  # singular values per spectrum (largest)
    max_matvecs: int
    spectra_depths: int  # blocks at which block and cumulative spectra are taken


SIZES = {
    "smoke": Size((2, 4), 16, 2, 16, 8, 4, 1, 2, 16, 2),
    "small": Size((6, 12, 24), 64, 4, 64, 16, 16, 4, 4, 48, 5),
    "full": Size((6, 12, 24, 48), 256, 8, 256, 64, 32, 8, 8, 96, 7),
}


class CausalLM(nn.Module):
    """Token + sinusoidal position embedding, nn.TransformerEncoder with a causal mask, head.

    ``norm_first=True``: pre-LN, x + F(LN(x)) per sublayer and a final LayerNorm;
    ``False``: post-LN, LN(x + F(x)) per sublayer (Vaswani et al.; Xiong et al.'s Post-LN).
    Xavier-uniform weights and zero biases for every linear map, N(0, 1) token embeddings.
    """

    def __init__(self, size: Size, depth: int, norm_first: bool) -> None:
        super().__init__()
        width = size.width
        self.embed = nn.Embedding(size.vocab, width)
        layer = nn.TransformerEncoderLayer(
            width, size.heads, 4 * width, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        final = nn.LayerNorm(width) if norm_first else None
        self.encoder = nn.TransformerEncoder(layer, depth, final, enable_nested_tensor=False)
        self.head = nn.Linear(width, size.vocab)
        self.register_buffer("positions", _sinusoids(size.seq_len, width))
        mask = nn.Transformer.generate_square_subsequent_mask(size.seq_len)
        self.register_buffer("mask", mask)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.MultiheadAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        hidden = self.embed(tokens) + self.positions[:length]
        mask = self.mask[:length, :length]
        return self.head(self.encoder(hidden, mask=mask, is_causal=True))


def _sinusoids(length: int, width: int) -> Tensor:
    angle = torch.arange(length)[:, None] * torch.exp(
        -math.log(1e4) * torch.arange(0, width, 2) / width
    )
    table = torch.zeros(length, width)
    table[:, 0::2], table[:, 1::2] = angle.sin(), angle.cos()
    return table


def markov_tokens(count: int, length: int, vocab: int, seed: int) -> Tensor:
    """``count`` sequences of a seeded Markov chain: each token has 4 likely successors."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, vocab, generator=generator)
    favoured = torch.randint(0, vocab, (vocab, 4), generator=generator)
    logits.scatter_add_(1, favoured, torch.full((vocab, 4), 4.0))
    transition = logits.softmax(1)
    tokens = torch.empty(count, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab, (count,), generator=generator)
    for t in range(1, length):
        tokens[:, t] = torch.multinomial(transition[tokens[:, t - 1]], 1, generator=generator)[:, 0]
    return tokens


def build(size: Size, variant: str, depth: int, seed: int) -> CausalLM:
    """The model of (variant, depth) initialised from ``seed`` (the global RNG restored)."""
    with preserved_rng():
        torch.manual_seed(seed)
        return CausalLM(size, depth, VARIANTS[variant])


# ----------------------------------------------------------------------------- measurements
def gradients(size: Size, tokens: Tensor, seed: int) -> pd.DataFrame:
    """Per-layer ||dL/dW||_F of PARAMETERS and ||dL/dz|| at every layer output (gf.record)."""
    frames = []
    for variant in VARIANTS:
        for depth in size.depths:
            for offset in range(size.seeds):
                model = build(size, variant, depth, seed + offset)
                frame = gf.record(model, tokens, tokens, loss_fn="lm", label=variant)
                frames.append(_per_layer(frame, variant, depth, seed + offset))
    return pd.concat(frames, ignore_index=True)


def _per_layer(frame: pd.DataFrame, variant: str, depth: int, seed: int) -> pd.DataFrame:
    """Rows (variant, layers, seed, layer, quantity, parameter, value) of one record frame."""
    prefix = frame["layer"].str.extract(r"^encoder\.layers\.(\d+)\.?(.*)$")
    rows = frame.assign(layer_index=pd.to_numeric(prefix[0]) + 1, rest=prefix[1]).dropna(
        subset=["layer_index"]
    )
    names = {path: name for name, path in PARAMETERS.items()}
    grads = rows[(rows.quantity == "param_grad_norm") & rows.rest.isin(list(names))]
    grads = grads.assign(parameter=grads.rest.map(names))
    stream = rows[(rows.quantity == "activation_grad_norm") & (rows.rest == "")]
    stream = stream.assign(parameter="layer output z_l")
    out = pd.concat([grads, stream], ignore_index=True)
    return pd.DataFrame(
        {
            "variant": variant,
            "layers": depth,
            "seed": seed,
            "layer": out.layer_index.astype(int),
            "quantity": out.quantity,
            "parameter": out.parameter,
            "value": out.value,
        }
    )


def spectra_depths(depth: int, count: int) -> list[int]:
    """``count`` block numbers spread evenly over 1..depth, always with 1 and depth."""
    return sorted({round(d) for d in np.linspace(1, depth, min(count, depth))})


def structures_and_spectra(size: Size, tokens: Tensor, seed: int, log) -> tuple[pd.DataFrame, ...]:
    """gf.structure tables and gf.block_spectra frames of every (variant, depth), seed ``seed``."""
    tables, frames, timings = [], [], []
    for variant in VARIANTS:
        for depth in size.depths:
            model = build(size, variant, depth, seed)
            started = time.perf_counter()
            table = gf.structure(model, tokens).frame()
            tables.append(table.assign(variant=variant, layers=depth))
            log(f"{variant} L={depth}: block spectra")
            spectra = gf.block_spectra(
                model, tokens, k=size.k, depths=spectra_depths(depth, size.spectra_depths),
                samples=1, which="largest", max_matvecs=size.max_matvecs,
                model_name=f"{variant} L={depth}", seed=seed,
            )  # fmt: skip
            frames.append(spectra.assign(variant=variant, layers=depth))
            seconds = time.perf_counter() - started
            timings.append({"variant": variant, "layers": depth, "seconds": round(seconds, 1)})
    columns = ["variant", "layers", *STRUCTURE_COLUMNS]
    structure = pd.concat(tables, ignore_index=True)[columns]
    return structure, pd.concat(frames, ignore_index=True), pd.DataFrame(timings)


# ----------------------------------------------------------------------------- summaries
def last_layer_table(grads: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, L): mean over seeds of ||dL/dW^{2,l}|| at the first and the last layer,
    their ratio, and the log-log slope of the last layer's norm against L (Theorem 1)."""
    w2 = grads[(grads.parameter == "W^2 (FFN out)")]
    mean = w2.groupby(["variant", "layers", "layer"], sort=False).value.mean().reset_index()
    rows = []
    for (variant, depth), part in mean.groupby(["variant", "layers"], sort=False):
        by_layer = part.set_index("layer").value
        rows.append({"variant": variant, "layers": depth, "first_layer": by_layer[1],
                     "last_layer": by_layer[depth], "last_over_first": by_layer[depth] /
                     by_layer[1], "max_over_min": by_layer.max() / by_layer.min()})  # fmt: skip
    table = pd.DataFrame(rows)
    for _, part in table.groupby("variant", sort=False):
        slope = np.polyfit(np.log(part.layers), np.log(part.last_layer), 1)[0]
        table.loc[part.index, "last_layer_slope_vs_L"] = slope
    return table


def spectra_table(spectra: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, L, operator, block depth): largest singular value and RMS estimate."""
    summary = gf.summarize_spectra(spectra)
    summary = summary.merge(
        spectra[["model", "variant", "layers"]].drop_duplicates(), on="model", how="left"
    )
    summary["rms_estimate"] = np.sqrt(summary["mean_sq_estimate"])
    columns = ["variant", "layers", "operator", "depth", "block", "largest", "rms_estimate",
               "converged", "prod_from"]  # fmt: skip
    return summary[columns]


def main(argv: list[str] | None = None) -> None:
    experiment = Experiment(parse_args(__file__, __doc__.splitlines()[0], argv), "transformer")
    size = SIZES[experiment.scale.name]
    if experiment.args.plan:
        print(f"trains nothing: pre-LN and post-LN at {size.depths} layers, {size.seeds} seeds")
        return
    seed = experiment.args.seed
    tokens = markov_tokens(size.batch, size.seq_len, size.vocab, seed)
    experiment.log(f"gradients of {len(VARIANTS) * len(size.depths) * size.seeds} models")
    grads = gradients(size, tokens, seed)
    structure, spectra, timings = structures_and_spectra(size, tokens[:1], seed, experiment.log)
    frames = {
        "gradients": grads,
        "last_layer": last_layer_table(grads),
        "structure": structure.astype({"in_shape": str, "out_shape": str}),
        "spectra": spectra,
        "spectra_summary": spectra_table(spectra),
        "spectra_seconds": timings,
    }
    write_transformer_report(experiment, asdict(size), frames)
