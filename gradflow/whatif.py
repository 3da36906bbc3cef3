"""``--whatif``: the counterfactual nets gradflow can build, measured on the same batch.

What would fix the gradient flow of a net, measured rather than guessed. For a zoo name
``plainN`` / ``resnetN`` / ``preresnetN`` (and ``cifar_plainN`` ...), the counterfactuals are

- *identity shortcuts*: ``resnetN``, the same stages and widths with the shortcuts added;
- *zero-gamma*: ``resnetN`` (``preresnetN`` for a pre-activation net) with init zero_gamma,
  every residual branch starting at 0;
- *pre-activation*: ``preresnetN``, where the zoo has that depth at the same input size.

For any other model (a module, a file, ``hf:``/``torchvision:``) whose residual blocks
``gradflow.structure`` found, the counterfactual is *zero-gamma on the last norm of each
branch*: gamma = 0 in a private copy (the user's model is never changed). Each counterfactual
is fed the original's probe (same inputs, targets and loss) and measured by the same phases
(``gradflow.analyze``); ``whatif_table`` puts the headline numbers side by side. Where no
counterfactual can be built, ``notes`` says why in one line.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from torch import nn

from .errors import UserInputError
from .private import strip_hooks
from .state import preserved_rng
from .summaries import spectra_summary_by_step, summary_table
from .verdict import verdict_frame

ZOO_NAME = re.compile(r"^(?P<prefix>cifar_)?(?P<family>plain|resnet|preresnet)(?P<depth>\d+)$")
AS_GIVEN = "as given"
WHATIF_COLUMNS = [
    "model",
    "variant",
    "net",
    "step",
    "grad_log10_ratio",
    "prod_depth",
    "prod_largest",
    "diagnosis",
    "verdict",
]


@dataclass
class Plan:
    """What to build: (model, variant, net label) rows, the probes of the nets, the notes."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    probes: dict = field(default_factory=dict)  # net label -> Probe
    notes: dict[str, str] = field(default_factory=dict)  # model -> one line


def zoo_twins(name: str, init: str | None) -> tuple[list[tuple[str, str, str]], str | None]:
    """[(variant, zoo name, init)] of a zoo net, and a line on what could not be built."""
    from .models.registry import get_model_info

    match = ZOO_NAME.match(name)
    if not match:
        return [], f"{name}: no counterfactual: gradflow builds them for plainN/resnetN/preresnetN"
    prefix, family, depth = match["prefix"] or "", match["family"], match["depth"]
    size = get_model_info(name).input_size
    init = init or "he"

    def twin(kind: str) -> str | None:
        try:
            info = get_model_info(f"{prefix}{kind}{depth}")
        except UserInputError:
            return None
        return info.name if (info.depth, info.input_size) == (int(depth), size) else None

    twins, missing = [], []
    if family == "plain" and twin("resnet"):
        twins.append(("identity shortcuts", twin("resnet"), init))
    residual = twin("preresnet" if family == "preresnet" else "resnet")
    if residual and not (family != "plain" and init == "zero_gamma"):
        twins.append(("zero-gamma", residual, "zero_gamma"))
    if family != "preresnet":
        if twin("preresnet"):
            twins.append(("pre-activation", twin("preresnet"), init))
        else:
            missing.append(f"pre-activation (no preresnet{depth} at input {size} in the zoo)")
    twins = [t for t in twins if (t[1], t[2]) != (name, init)]
    note = f"{name}: not built: {'; '.join(missing)}" if missing else None
    if not twins and not missing:
        note = f"{name}: no counterfactual: it has identity shortcuts, zero-gamma and "
        note += "pre-activation already"
    return twins, note


def zero_gamma_copy(model: nn.Module, inputs) -> tuple[nn.Module, list[str], str | None]:
    """A private copy of ``model`` with gamma = 0 in the last norm of every residual branch
    ``gradflow.structure`` found: (copy, norm paths zeroed, note); UserInputError if none."""
    from .structure import layout_inputs, structure

    found = structure(model, layout_inputs(inputs))
    residual = [b for b in found.blocks if b.kind == "residual"]
    if not residual:
        raise UserInputError(
            "no counterfactual: gradflow.structure found no residual block (shortcuts are "
            "added only to zoo nets, by name)"
        )
    with preserved_rng():
        twin = copy.deepcopy(model)
    strip_hooks(twin)
    zeroed = []
    with torch.no_grad():
        for block in residual:
            norm = twin.get_submodule(block.last_norm) if block.last_norm else None
            if isinstance(getattr(norm, "weight", None), torch.Tensor):
                norm.weight.zero_()
                zeroed.append(block.last_norm)
    if not zeroed:
        raise UserInputError(
            "no counterfactual: its residual branches end in no normalisation layer with a "
            "scale (gamma) to set to 0"
        )
    note = None
    if len(zeroed) < len(residual):
        note = f"zero-gamma on {len(zeroed)} of {len(residual)} residual branches (the others "
        note += "end in no norm with a gamma)"
    return twin, zeroed, note


def plan(config, specs: dict, probes: dict, data, device: torch.device) -> Plan:
    """The counterfactual nets of every analysed model (module doc), each with its probe.

    ``specs``: label -> what was analysed (a zoo name gets the zoo twins; anything else,
    also a zoo net given as a module, the zero-gamma copy). A twin that is one of the
    analysed nets, or another model's twin, is measured once."""
    from .model_inputs import is_zoo_name

    out, base = Plan(), config.init or "he"
    zoo = {
        label: spec for label, spec in specs.items() if isinstance(spec, str) and is_zoo_name(spec)
    }
    built = {(spec, base): label for label, spec in zoo.items()}
    for label, probe in probes.items():
        out.rows.append((label, AS_GIVEN, label))
        if label in zoo:
            note = _zoo_rows(out, label, zoo[label], probe, (config, data, device), built)
        else:
            note = _zero_gamma_rows(out, label, probe)
        if note:
            out.notes[label] = note
    return out


def _zoo_rows(out: Plan, label: str, name: str, probe, context, built: dict) -> str | None:
    """Add the zoo twins of ``name`` (built as ``analyze`` builds zoo nets) to ``out``."""
    from .model_inputs import build_source

    config, data, device = context
    base = config.init or "he"
    twins, note = zoo_twins(name, config.init)
    failed = []
    for variant, twin, init in twins:
        if (twin, init) not in built:
            net = twin if init == base else f"{twin} {init.replace('_', '-')}"
            options = replace(config, init=init, checkpoint=None)
            try:
                model, _ = build_source(twin, options, data, device)
            except UserInputError as err:
                failed.append(f"{variant} ({twin}: {err})")
                continue
            out.probes[net] = replace(probe, label=net, model=model)
            built[twin, init] = net
        out.rows.append((label, variant, built[twin, init]))
    if failed:
        note = (note + "; " if note else f"{label}: not built: ") + "; ".join(failed)
    return note


def _zero_gamma_rows(out: Plan, label: str, probe) -> str | None:
    """Add the zero-gamma copy of a model that is not a zoo name to ``out``."""
    net = f"{label} zero-gamma"
    try:
        model, _, note = zero_gamma_copy(probe.model, probe.inputs)
    except UserInputError as err:
        return f"{label}: {err}"
    out.probes[net] = replace(probe, label=net, model=model)
    out.rows.append((label, "zero-gamma", net))
    return f"{label}: {note}" if note else None


def measure(config, found: Plan, step: int) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Records and spectra of the counterfactual nets (analyze's phases), global RNG kept."""
    from .analyze import _first_nonfinite, _measure, _progress_bar
    from .budget import model_plan

    frames: dict[str, list[pd.DataFrame]] = {"record": [], "spectra": []}
    timings = []
    with preserved_rng(), _progress_bar(config, len(found.probes) * 2) as bar:
        for label, probe in found.probes.items():
            plan = model_plan(probe, config)  # the same micro-batches and checks as analyze
            site = _first_nonfinite(probe, plan)
            for phase, collected in frames.items():
                bar.set_postfix_str(f"whatif {label}: {phase}")
                started = time.perf_counter()
                frame = _measure(phase, probe, config, plan, site)
                collected.append(frame.assign(step=step))
                seconds = round(time.perf_counter() - started, 2)
                timings.append({"model": label, "step": step, "phase": phase, "seconds": seconds})
                bar.update()
    if not found.probes:
        return pd.DataFrame(), pd.DataFrame(), timings
    return pd.concat(frames["record"]), pd.concat(frames["spectra"]), timings


def whatif_table(result, found: Plan, records: pd.DataFrame, spectra: pd.DataFrame):
    """One row per (analysed model, variant): WHATIF_COLUMNS, the models in their order; a
    model without any counterfactual has no rows (its note says why)."""
    parts = [(result.summary, result.verdict_frame())]
    if not records.empty:
        spectra_summary = spectra_summary_by_step(spectra)
        summary = summary_table(records, spectra_summary)
        parts.append((summary, verdict_frame(records, spectra_summary, summary)))
    numbers = {}
    for summary, verdicts in parts:
        joined = summary.merge(verdicts[["model", "step", "diagnosis", "verdict"]])
        numbers.update({row["model"]: row for row in joined.to_dict("records")})
    has_twin = {model for model, variant, _ in found.rows if variant != AS_GIVEN}
    rows = [
        {"model": model, "variant": variant, "net": net}
        | {column: numbers[net][column] for column in WHATIF_COLUMNS[3:]}
        for model, variant, net in found.rows
        if model in has_twin
    ]
    return pd.DataFrame(rows, columns=WHATIF_COLUMNS)


def fix_sentences(table: pd.DataFrame) -> list[str]:
    """Per model: which counterfactual brings the gradient log-ratio closest to 0, by how much."""
    lines = []
    for model, part in table.groupby("model", sort=False):
        given = part[part["variant"] == AS_GIVEN].iloc[0]
        others = part[part["variant"] != AS_GIVEN].dropna(subset="grad_log10_ratio")
        if others.empty or pd.isna(given["grad_log10_ratio"]):
            lines.append(f"{model}: no finite log-ratio to compare (see the table)")
            continue
        best = others.loc[others["grad_log10_ratio"].abs().idxmin()]
        before, after = given["grad_log10_ratio"], best["grad_log10_ratio"]
        if abs(after) >= abs(before):
            lines.append(
                f"{model}: none of the counterfactuals brings the gradient log-ratio closer "
                f"to 0 than as given ({before:+.2f})"
            )
            continue
        lines.append(
            f"{model}: {best['variant']} ({best['net']}) takes the gradient log-ratio from "
            f"{before:+.2f} to {after:+.2f} ({given['diagnosis']} -> {best['diagnosis']}); "
            f"deepest prod largest singular value {given['prod_largest']:.3g} -> "
            f"{best['prod_largest']:.3g}"
        )
    return lines


def whatif_text(table: pd.DataFrame | None, notes: dict[str, str]) -> str:
    """The terminal's 'what would fix it' part: the table, one line per model, the notes."""
    parts = ["What would fix it (--whatif: counterfactual nets on the same batch):"]
    if table is not None and not table.empty:
        shown = table.drop(columns=["verdict", "step"])
        parts.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        parts += fix_sentences(table)
    parts += list(notes.values())
    return "\n".join(parts)
