"""The pre-LN vs post-LN experiment (Xiong et al. 2020): its models, tables and smoke report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gradflow.experiments import EXPERIMENTS, resolve
from gradflow.experiments import transformer_ln as tln

SMOKE = tln.SIZES["smoke"]


def test_registered_for_gradflow_reproduce():
    assert "transformer_ln" in EXPERIMENTS and resolve("transformer") == "transformer_ln"


def test_post_ln_layers_end_in_a_norm_pre_ln_has_a_final_norm_and_the_mask_is_causal():
    tokens = tln.markov_tokens(3, SMOKE.seq_len, SMOKE.vocab, seed=0)
    post, pre = tln.build(SMOKE, "post-LN", 2, 0).eval(), tln.build(SMOKE, "pre-LN", 2, 0).eval()
    outputs = []
    post.encoder.layers[1].register_forward_hook(lambda m, a, o: outputs.append(o))
    with torch.no_grad():
        post(tokens)
    # LN(x + F(x)) with LN's initial affine (1, 0): every token has mean 0, variance 1
    torch.testing.assert_close(outputs[0].mean(-1), torch.zeros(3, SMOKE.seq_len), atol=1e-5,
                               rtol=0)  # fmt: skip
    assert post.encoder.norm is None and isinstance(pre.encoder.norm, torch.nn.LayerNorm)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % SMOKE.vocab  # only the last position differs
    with torch.no_grad():
        before, after = pre(tokens), pre(changed)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_tokens_are_seeded_and_in_range():
    a = tln.markov_tokens(4, 8, 16, seed=3)
    assert torch.equal(a, tln.markov_tokens(4, 8, 16, seed=3)) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 16
    assert not torch.equal(a, tln.markov_tokens(4, 8, 16, seed=4))


def test_last_layer_table_on_known_norms():
    rows = []  # pre-LN: every layer L^-1/2; post-LN: layer l has norm l (rises to the output)
    for depth in (4, 16):
        for layer in range(1, depth + 1):
            rows.append(("pre-LN", depth, layer, depth**-0.5))
            rows.append(("post-LN", depth, layer, float(layer)))
    grads = pd.DataFrame(rows, columns=["variant", "layers", "layer", "value"])
    grads = grads.assign(seed=0, quantity="param_grad_norm", parameter="W^2 (FFN out)")
    table = tln.last_layer_table(grads).set_index(["variant", "layers"])
    np.testing.assert_allclose(table.loc["pre-LN"].last_layer_slope_vs_L, -0.5)
    np.testing.assert_allclose(table.loc["post-LN"].last_layer_slope_vs_L, 1.0)
    assert table.at[("post-LN", 16), "last_over_first"] == 16.0
    assert table.at[("pre-LN", 4), "max_over_min"] == 1.0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("transformer_ln")
    tln.main(["--scale", "smoke", "--out", str(out), "--quiet"])
    return out


def test_smoke_report_has_the_paper_comparison_figures_and_data(smoke):
    readme = (smoke / "README.md").read_text()
    compared = readme.split("## Compared with the paper", 1)[1]
    assert "Theorem 1" in compared and "Figure 3" in compared
    assert any(v in compared for v in ("as in the paper", "not reproduced"))
    assert "not real data" in readme
    for png in sorted((smoke / "figures").glob("*.png")):
        assert f"figures/{png.name}" in readme
    meta = json.loads((smoke / "meta.json").read_text())
    assert meta["command"].startswith("python experiments/transformer_ln.py --scale smoke")
    assert meta["data"]["synthetic"] and meta["size"]["depths"] == list(SMOKE.depths)


def test_smoke_structure_and_spectra_are_xiongs_two_settings(smoke):
    structure = pd.read_csv(smoke / "data" / "structure.csv")
    pre, post = structure[structure.variant == "pre-LN"], structure[structure.variant == "post-LN"]
    assert set(pre.j_f) == {"difference"} and set(pre.skip_path) == {"add > add"}
    assert post.j_f.isna().all() and set(post.skip_path) == {"add > norm > add > norm"}
    spectra = pd.read_csv(smoke / "data" / "spectra.csv")
    operators = spectra.groupby("variant").operator.unique().map(set)
    assert operators["pre-LN"] == {"I+J_F", "J_F", "prod"}
    assert operators["post-LN"] == {"J_H", "prod"}
    assert set(spectra.prod_from) == {"stem"}  # token ids: from the embedding output
    grads = pd.read_csv(smoke / "data" / "gradients.csv")
    counts = grads[grads.quantity == "param_grad_norm"].groupby(["variant", "layers"]).size()
    assert dict(counts) == {(v, d): 4 * d * SMOKE.seeds for v in tln.VARIANTS for d in SMOKE.depths}
