"""Per-layer measurements of any ``nn.Module`` as tidy DataFrames, without disturbing it.

``Recorder(model)`` attaches hooks on ``__enter__`` and removes every one on ``__exit__`` (also
when the body raises); the user runs ordinary forward/backward passes and calls ``step()`` to
close a step. ``record(model, x, y)`` (``gradflow.record_pass``) is one forward+backward that
leaves the model exactly as it found it. Both give the long frame of ``FRAME_COLUMNS``:

- ``layer``: module path (``stage2.block3.bn1``); block boundaries use the block path
  (``stage2.block3``) and ``stem`` for the input of the first block; parameters their full
  name (``stage1.block1.conv1.weight``). A module called k > 1 times in one forward pass of
  the root model is reported once per call: ``name``, ``name@2``, ..., ``name@k``. Passes are
  delimited by calls of the root module (and by ``step()``): code that calls submodules
  directly should call ``step()`` after each pass, or its repeated calls count as reuse.
- ``depth``: for block boundaries (``activation_grad_*``) the number of blocks the signal has
  passed: 0 = input of the first block (the stem output), k = output of the k-th block. For
  layer quantities (responses, parameters) the 1-based rank of the layer's first call in the
  forward pass among the layers of that site (parameters: by their owning module).
- ``stage``/``block``: position of the enclosing zoo block (nullable Int64, NA elsewhere);
  ``kind``: ``plain``/``residual`` for layers inside a zoo block, else ``other``.
- ``value``: float64. Several batches per step: responses merge by Chan's formula (exactly the
  statistics of the concatenated batches); gradient norms are sqrt of the sum of squares over
  the step's batches. Parameter quantities are read once at ``step()`` (``.grad`` as it is then).

Statistics stay on the tensors' device; ``step()`` moves the whole step to the CPU at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .errors import UserInputError, check_choice
from .finite import NONFINITE_POLICIES, NonFiniteError, check_measurements
from .probes import (
    DEFAULT_PROBES,
    QUANTITIES,
    SHORTCUT_GRAD_SHARE,
    UPDATE_RATIO,
    BoundaryBatch,
    BoundaryStats,
    ParameterBatch,
    Probe,
    ResponseBatch,
    ResponseStats,
    all_reduce_stats,
    resolve_probes,
)
from .signal_probes import (
    ChannelStats,
    SplitStats,
    all_reduce_signal,
    channel_axis,
    channel_batch,
    split_batch,
)
from .sites import (
    FRAME_COLUMNS,
    LAYER_COLUMNS,
    STEM,
    LayerSpec,
    block_positions,
    build_frame,
    default_boundaries,
    default_response_layers,
    depth_ranks,
    is_zoo,
    select_modules,
    to_wide,
    unwrap,
)
from .structure import Structure, layout_inputs, structure
from .taps import ResidualTap, route_for, untapped
from .trace import first_float

LOSS_REDUCTIONS = ("mean", "sum")
BLOCK_SITES = ("boundary", "signal", "branch", "split")  # keyed by block boundary (depth)
# A Recorder in a training loop: all probes but the two that hook every residual block's
# additions (measured: they raise the step time of resnet20 1.18-1.25x over the rest, see
# benchmarks/bench_recorder.py); record() and gradflow analyze measure all of them.
RECORDER_PROBES = tuple(
    p for p in DEFAULT_PROBES if p not in ("branch_variance", "shortcut_grad_share")
)
__all__ = [
    "FRAME_COLUMNS",
    "LAYER_COLUMNS",
    "QUANTITIES",
    "NonFiniteError",
    "Recorder",
    "to_wide",
]


class Recorder:
    """Context manager measuring ``probes`` on ``model`` step by step (see the module doc).

    ``probes``: names of ``gradflow.probes.PROBES`` or Probe instances; default
    ``RECORDER_PROBES``, all of them but branch_variance and shortcut_grad_share:
    response_std/mean/absmax, activation_grad_norm (with activation_grad_rms),
    param_grad_norm, weight_norm and update_ratio (which keeps one copy of the parameters
    to compare with at the next step; everything else is O(number of layers) scalars), and the
    signal propagation probes of ``gradflow.signal_probes`` at block boundaries and residual
    blocks (channel_variance with channel_mean_sq, branch_variance, shortcut_grad_share with
    the two norms; residual blocks from ``gradflow.structure``, hooks of ``gradflow.taps``).
    ``layers`` (names, glob patterns or module types) replaces the default response layers
    and gradient points (then ``stem`` is the input of the first of them, depth k the output
    of the k-th); ``boundaries`` replaces the gradient points alone.
    ``loss_reduction`` ("mean"/"sum") is the assumption behind ``activation_grad_rms``.
    A clean exit closes a pending step (batches seen since the last ``step()``).
    """

    def __init__(
        self,
        model: nn.Module,
        probes: Sequence[str | Probe] | str | None = None,
        layers: LayerSpec | None = None,
        *,
        boundaries: LayerSpec | None = None,
        label: str | None = None,
        on_nonfinite: str = "warn",
        loss_reduction: str = "mean",
        structure: Structure | None = None,
    ) -> None:
        self.model = model
        self.module = unwrap(model)
        self.label = label or type(self.module).__name__
        self.probes = resolve_probes(RECORDER_PROBES if probes is None else probes)
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        self.mean_reduced = (
            check_choice("loss_reduction", loss_reduction, LOSS_REDUCTIONS) == "mean"
        )
        sites = {probe.site for probe in self.probes}
        responses = (
            select_modules(self.module, layers)
            if layers is not None
            else default_response_layers(self.module)
        )
        if boundaries is not None:
            points = select_modules(self.module, boundaries)
        elif layers is not None:
            points = responses
        else:
            points = default_boundaries(self.module, responses)
        # Outside the zoo, blocks (and kind/stage/block) come from gradflow.structure: given,
        # or discovered on the first forward pass (the root's pre-hook sees its inputs).
        self._discover = layers is None and boundaries is None and not is_zoo(self.module)
        # boundaries given on a non-zoo model: structure(blocks=them) finds the residual ones
        self._given = points if layers is None and boundaries is not None else None
        if self._given is not None and not is_zoo(self.module) and structure is None:
            self._discover = bool({p.site for p in self.probes} & {"branch", "split"})
        self.structure = structure
        self._blocks = block_positions(self.module)
        self._routes = {  # zoo residual blocks: relu(F(x) + S(x)) or F(x) + S(x)
            name: route_for("branch", None, 0)
            for name, (_, _, kind) in self._blocks.items()
            if kind == "residual"
        }
        if self._discover and structure is not None:
            points = self._use_structure(structure)
        self.response_layers = responses if "response" in sites else []
        self.boundary_layers = points if sites & set(BLOCK_SITES) else []
        self._sites = sites
        self._signal_axis = self._axis_of("signal")
        self._branch_axis = self._axis_of("branch")
        self.parameter_names = (
            [name for name, _ in self.module.named_parameters()] if "parameter" in sites else []
        )
        self._moments = any(p.needs_moments for p in self.probes)
        self._extrema = any(p.needs_extrema for p in self.probes)
        self._handles: list = []
        self._active = False
        self._response: dict[str, ResponseStats] = {}
        self._boundary: dict[str, BoundaryStats] = {}
        self._channels: dict[str, ChannelStats] = {}  # block boundaries (signal site)
        self._branches: dict[str, ChannelStats] = {}  # F(x) of residual blocks
        self._splits: dict[str, SplitStats] = {}
        self._order: dict[tuple[str, str], int] = {}  # (site, key) -> first-call number
        self._calls: dict[tuple[str, str], int] = {}  # per forward pass of the root
        self._stem_pending = True
        self._batch_seen = False  # a forward pass of the root since the last step()
        self._previous: list[Tensor] | None = None
        self._owners: list[tuple[nn.Module, str]] | None = None
        self._grads_override: dict[str, Tensor] | None = None
        self._steps: list[tuple[int, list[tuple[str, list[str], str]], np.ndarray]] = []
        self.steps_done = 0

    # ----- hook lifecycle -------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self._active:
            raise RuntimeError("this Recorder is already active; create a new one to nest")
        modules = dict(self.module.named_modules())
        register = self._handles.append
        try:
            register(self.module.register_forward_pre_hook(self._on_root_call, with_kwargs=True))
            for name in self.response_layers:
                register(modules[name].register_forward_hook(partial(self._on_response, name)))
            if not self._discover:  # else on the first forward call, from its structure
                self._watch_boundaries(modules)
            if self.parameter_names:
                for name, module in modules.items():
                    if any(True for _ in module.parameters(recurse=False)):
                        hook = partial(self._on_parameter_module, name)
                        register(module.register_forward_pre_hook(hook))
                if any(p.keeps_snapshot for p in self.probes):
                    self._previous = [p.detach().clone() for p in self._parameters()]
        except BaseException:
            self._detach()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pending = self._batch_seen or bool(self._response or self._boundary or self._channels)
        self._detach()
        if exc_type is None and pending:
            self.step()

    def _axis_of(self, site: str) -> int | None:
        """The channel axis a probe of ``site`` asks for (None: by tensor layout)."""
        return next((getattr(p, "channel_axis", None) for p in self.probes if p.site == site), None)

    def _watch_boundaries(self, modules: dict[str, nn.Module]) -> None:
        for name in self.boundary_layers:
            module = modules[name]
            self._handles.append(module.register_forward_pre_hook(self._on_boundary_input))
            self._handles.append(module.register_forward_hook(partial(self._on_boundary, name)))
            route = self._routes.get(name)
            if route is not None and self._sites & {"branch", "split"}:
                tap = self._tap(name, route)
                self._handles.append(module.register_forward_pre_hook(tap.before))
                self._handles.append(module.register_forward_hook(tap.after, always_call=True))

    def _tap(self, name: str, route) -> ResidualTap:
        """The F(x) and gradient-split hooks of residual block ``name`` (gradflow.taps)."""

        def key_of() -> str:
            calls = self._calls.get(("boundary", name), 0) + 1
            return name if calls == 1 else f"{name}@{calls}"

        def branch_stats(f: Tensor) -> ChannelStats:
            return ChannelStats(f, channel_axis(f, self._branch_axis))

        return ResidualTap(
            route,
            key_of,
            branch_stats if "branch" in self._sites else None,
            partial(self._merge, self._branches),
            partial(self._merge_split) if "split" in self._sites else None,
            lambda: self._active,
        )

    @untapped
    def _merge(self, store: dict, key: str, stats) -> None:
        if key in store:
            store[key].merge(stats)
        else:
            store[key] = stats

    def _merge_split(self, key: str, shortcut_sumsq: Tensor, branch_sumsq: Tensor) -> None:
        self._merge(self._splits, key, SplitStats(shortcut_sumsq, branch_sumsq))

    def _use_structure(self, found: Structure) -> list[str]:
        """Boundaries and positions from a Structure (blocks that are paths of the model)."""
        modules = dict(self.module.named_modules())
        points = [b.path for b in found.blocks if b.path in modules]
        self._blocks = {k: v for k, v in found.positions().items() if k in modules}
        routes = {
            b.path: route_for(b.residual.route, b.residual.add_index, b.residual.position)
            for b in found.blocks
            if b.kind == "residual" and b.path in modules
        }
        self._routes = {path: route for path, route in routes.items() if route is not None}
        self.structure, self._discover = found, False
        return points

    def _detach(self) -> None:
        self._active = False
        while self._handles:
            self._handles.pop().remove()

    def _parameters(self) -> list[Tensor]:
        """Current parameter tensors by name (looked up through their owners: a replaced
        parameter is seen), without walking the module tree every step."""
        if self._owners is None:
            modules = dict(self.module.named_modules())
            self._owners = [
                (modules[owner], attr)
                for owner, _, attr in (name.rpartition(".") for name in self.parameter_names)
            ]
        return [module._parameters[attr] for module, attr in self._owners]

    # ----- hooks --------------------------------------------------------------------
    def _on_root_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._discover:
            self._discover_structure(args, kwargs)
        self._batch_seen = True
        self._calls.clear()
        self._stem_pending = True

    def _discover_structure(self, args: tuple, kwargs: dict) -> None:
        """Blocks of a non-zoo model from its first forward call (static fallback if unsure)."""
        self._discover = False
        found = None
        if not (args and kwargs):  # mixed positional and keyword inputs: container boundaries
            inputs = dict(kwargs) if kwargs else (args[0] if len(args) == 1 else tuple(args))
            try:
                found = structure(self.module, layout_inputs(inputs), blocks=self._given)
            except (UserInputError, RuntimeError):
                found = None
        if found is not None:
            points = self._use_structure(found)
            if self._sites & set(BLOCK_SITES):
                self.boundary_layers = points
        self._watch_boundaries(dict(self.module.named_modules()))

    def _key(self, site: str, name: str) -> str:
        calls = self._calls.get((site, name), 0) + 1
        self._calls[(site, name)] = calls
        key = name if calls == 1 else f"{name}@{calls}"
        if (site, key) not in self._order:
            self._order[(site, key)] = len(self._order)
        return key

    @untapped
    def _on_response(self, name: str, module: nn.Module, args, output) -> None:
        if not isinstance(output, Tensor) or not output.is_floating_point() or not output.numel():
            return
        if output.dtype in (torch.float16, torch.bfloat16):
            output = output.float()
        key = self._key("response", name)
        stats = ResponseStats(output, self._moments, self._extrema)
        if key in self._response:
            self._response[key].merge(stats)
        else:
            self._response[key] = stats

    def _watch_gradient(self, key: str, tensor: Tensor) -> None:
        if (site_key := ("boundary", key)) not in self._order:
            self._order[site_key] = len(self._order)
        tensor.register_hook(partial(self._on_gradient, key))

    @untapped
    def _on_boundary_input(self, module: nn.Module, args) -> None:
        if not self._stem_pending:
            return
        self._stem_pending = False
        if args and isinstance(args[0], Tensor):
            self._boundary_value(STEM, args[0])
            if args[0].requires_grad and "boundary" in self._sites:
                self._watch_gradient(STEM, args[0])

    @untapped
    def _on_boundary(self, name: str, module: nn.Module, args, output) -> None:
        if not isinstance(output, Tensor):  # (output, state) of an RNN, an HF ModelOutput
            output = first_float(output)
        if not isinstance(output, Tensor):
            return
        key = self._key("boundary", name)
        self._boundary_value(key, output)
        if output.requires_grad and "boundary" in self._sites:
            self._watch_gradient(key, output)

    def _boundary_value(self, key: str, z: Tensor) -> None:
        """Channel statistics of a block boundary's value (the signal site)."""
        if "signal" not in self._sites or not z.is_floating_point() or not z.numel():
            return
        if ("boundary", key) not in self._order:
            self._order[("boundary", key)] = len(self._order)
        self._merge(self._channels, key, ChannelStats(z, channel_axis(z, self._signal_axis)))

    def _on_gradient(self, key: str, grad: Tensor) -> None:
        if not self._active:  # a graph built inside the recorder, backpropagated after exit
            return
        stats = BoundaryStats(grad.detach(), self.mean_reduced)
        if key in self._boundary:
            self._boundary[key].merge(stats)
        else:
            self._boundary[key] = stats

    def _on_parameter_module(self, name: str, module: nn.Module, args) -> None:
        if ("module", name) not in self._order:
            self._order[("module", name)] = len(self._order)

    # ----- closing a step -----------------------------------------------------------
    def _batches(self) -> dict[str, object]:
        batches: dict[str, object] = {}
        in_order = self._order.__getitem__
        if self._response:
            keys = sorted(self._response, key=lambda k: in_order(("response", k)))
            stats = [self._response[k] for k in keys]
            device = (stats[0].mean if stats[0].mean is not None else stats[0].low).device

            def stack(field: str) -> Tensor | None:
                values = [getattr(s, field) for s in stats]
                return None if values[0] is None else torch.stack([v.to(device) for v in values])

            count = torch.tensor([float(s.count) for s in stats], device=device)
            batches["response"] = ResponseBatch(
                keys, count, stack("mean"), stack("m2"), stack("low"), stack("high")
            )
        if self._boundary:
            keys = sorted(self._boundary, key=lambda k: in_order(("boundary", k)))
            stats = [self._boundary[k] for k in keys]
            device = stats[0].sumsq.device
            batches["boundary"] = BoundaryBatch(
                keys,
                torch.stack([s.sumsq.to(device) for s in stats]),
                torch.stack([s.scaled_sumsq.to(device) for s in stats]),
                torch.tensor([float(s.samples) for s in stats], device=device),
            )
        for site, store, make in (
            ("signal", self._channels, channel_batch),
            ("branch", self._branches, channel_batch),
            ("split", self._splits, split_batch),
        ):
            if store:
                batches[site] = make(store, sorted(store, key=lambda k: in_order(("boundary", k))))
        if self.parameter_names:
            params = self._parameters()
            if self._grads_override is not None:
                grads = self._grads_override
            else:
                grads = {n: p.grad for n, p in zip(self.parameter_names, params, strict=True)}
            grad_keys = [n for n in self.parameter_names if grads.get(n) is not None]
            batches["parameter"] = ParameterBatch(
                self.parameter_names,
                [p.detach() for p in params],
                grad_keys,
                [grads[n].detach() for n in grad_keys],
                self._previous,
            )
        return batches

    def step(self) -> None:
        """Close one step: compute every probe on the device, move all values to the CPU once."""
        batches = self._batches()
        segments, tensors = [], []
        for probe in self.probes:
            batch = batches.get(probe.site)
            if batch is None:
                continue
            for quantity, (keys, values) in probe.values(batch).items():
                if keys:
                    site = "boundary" if probe.site in BLOCK_SITES else probe.site
                    segments.append((site, keys, quantity))
                    tensors.append(values.detach().reshape(-1))
        flat = _to_numpy(tensors)
        if self._previous is not None and "parameter" in batches:
            torch._foreach_copy_(self._previous, batches["parameter"].params)
        step = self.steps_done
        self._steps.append((step, segments, flat))
        self._response.clear()
        self._boundary.clear()
        for store in (self._channels, self._branches, self._splits):
            store.clear()
        self._grads_override = None
        self._batch_seen = False
        self._calls.clear()
        self._stem_pending = True
        self.steps_done += 1
        self._check_finite(step, segments, flat)

    def _check_finite(self, step: int, segments: list, flat: np.ndarray) -> None:
        """Report non-finite values; update_ratio and shortcut_grad_share may be NaN by
        definition (||w|| = 0; both gradient paths 0), their inputs are checked themselves."""
        if self.on_nonfinite == "ignore" or np.isfinite(flat).all():
            return
        kept, values, offset = [], [], 0
        for segment in segments:
            size = len(segment[1])
            if segment[2] != SHORTCUT_GRAD_SHARE:
                kept.append(segment)
                values.append(flat[offset : offset + size])
            offset += size
        flat = np.concatenate(values) if values else np.zeros(0)
        check_measurements(
            f"{self.label}: ", step, kept, flat, self.on_nonfinite, skip=UPDATE_RATIO
        )

    # ----- distributed ------------------------------------------------------------
    def all_reduce(self, group=None) -> None:
        """Merge the pending step's statistics across torch.distributed ranks (before ``step()``).

        Every rank must have seen the same layers (true for DDP replicas). Responses merge
        by the parallel formula (counts summed, mean = sum n_r mean_r / N, M2 = sum M2_r +
        sum n_r (mean_r - mean)^2), min/max by MIN/MAX, boundary sums of squares and sample
        counts by SUM. Parameter quantities are not reduced (DDP already averages gradients).
        A no-op when torch.distributed is not available or not initialised.
        """
        all_reduce_stats(
            [self._response[k] for k in sorted(self._response)],
            [self._boundary[k] for k in sorted(self._boundary)],
            group,
        )
        all_reduce_signal(
            [store[k] for store in (self._channels, self._branches) for k in sorted(store)],
            [self._splits[k] for k in sorted(self._splits)],
            group,
        )

    # ----- output ---------------------------------------------------------------
    def frame(self, wide: bool = False) -> pd.DataFrame:
        """The tidy long frame (``FRAME_COLUMNS``); ``wide=True``: one row per layer and step."""
        depths = depth_ranks(self._order, self.module)
        frame = build_frame(self.label, self._steps, depths, self._blocks)
        return to_wide(frame) if wide else frame


def _to_numpy(tensors: list[Tensor]) -> np.ndarray:
    """All values of a step as float64 numpy: one concatenation per device, one transfer."""
    if not tensors:
        return np.zeros(0)
    device = tensors[0].device
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    flat = torch.cat([t.to(device, dtype) for t in tensors])
    return flat.cpu().numpy().astype(np.float64)
