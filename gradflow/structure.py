"""The structure of any ``nn.Module``: its blocks, which are residual, its stem and head.

``structure(model, inputs)`` runs one forward pass of a private copy (no user hooks, eval
mode, math kernels) and returns a ``Structure``: the blocks (units applied one after another
along the forward pass) with kind, shortcut, stage, shapes and parameter counts. It is the one
source of ``kind``/``stage``/``block`` for every frame and of the functions every spectrum
differentiates. Sources, in order:

1. ``blocks=[(name, module), ...]`` or module paths (and ``stem=``) given by the user;
2. ``model.named_blocks()`` (gradflow zoo models and any model defining it; with
   ``forward_stem`` as the stem and each block's ``kind``/``branch``/``stage``/``index``);
3. discovery: the children of ``nn.Sequential``/``nn.ModuleList`` containers called in the
   forward pass whose children repeat (two or more of one class with submodules, or of one
   conv/linear class in a container holding most parameters), taking the outermost such level
   and opening containers whose repeated children are plain containers themselves (stages);
   each container is a stage. Without one: the called children (with parameters) of the model.

Residual recognition traces each block on its real input (``gradflow.residual``). Indices
``i`` of ``block_fn``/``branch_fn`` are 0-based positions in ``blocks``.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn

from .errors import UserInputError
from .inputs import Inputs, call_model, detach, forward_error, normalize, replace_first_float
from .losses import output_tensors
from .private import math_kernels, strip_hooks
from .residual import PLAIN, AddCalls, Residual, segment_residuals, trace_residual
from .state import preserved_rng
from .trace import Origin, Stop, Trace, capture, origin, rebind, segment

CONTAINERS = (nn.Sequential, nn.ModuleList)
WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
COLUMNS = ["block", "kind", "shortcut", "stage", "index", "in_shape", "out_shape", "params",
           "last_norm", "j_f", "skip_path"]  # fmt: skip


class NoBlocksError(UserInputError):
    """The model has no blocks gradflow can find (it ran fine on the inputs)."""


@dataclass
class BlockInfo:
    """One block: path, module (in the private copy), kind, shortcut, position, shapes."""

    path: str
    module: nn.Module
    kind: str
    shortcut: str | None
    stage: int | None
    index: int | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    last_norm: str | None
    residual: Residual = field(default=PLAIN, repr=False)
    branch: Callable | None = field(default=None, repr=False)  # a zoo block's branch()
    boundary: nn.Module | None = field(default=None, repr=False)  # end of a segment block

    @property
    def j_f(self) -> str | None:
        """How J_F is obtained: 'branch' (the block's own), 'difference' (J - I), 'cut',
        'pre_norm' (J of the pre-norm sum x + F(x), minus I), None (see ``gradflow.residual``)."""
        if self.kind != "residual":
            return None
        return "branch" if self.branch is not None else self.residual.route


@dataclass
class Structure:
    """Blocks, stem and head of a model, found from one forward call on ``inputs``."""

    model: nn.Module  # the private copy every function below evaluates
    blocks: list[BlockInfo]
    source: str  # "user" | "named_blocks" | "discovered"
    stem: list[str]
    head: list[str]
    trace: Trace
    stem_override: Callable | None = None
    routes: list[str] = field(default_factory=list)

    # ----- functions of the block inputs ----------------------------------------------
    def stem_fn(self, inputs: Inputs) -> Tensor:
        """The first block's input for these model inputs."""
        if self.stem_override is not None:
            return self.stem_override(normalize(inputs))
        return capture(self.model, inputs, [self.blocks[0].module]).inputs[0]

    def block_fn(self, i: int, trace: Trace | None = None) -> Callable[[Tensor], Tensor]:
        """z -> first output tensor of block i, its other arguments as in ``trace``."""
        block, trace = self.blocks[i], trace or self.trace
        if self.source == "named_blocks":
            return block.module
        if block.boundary is not None:  # the skip is in the model's forward, around the block
            return segment(self.model, trace.model_inputs, block.module, block.boundary)
        return rebind(block.module, trace.calls[i])

    def branch_fn(self, i: int, trace: Trace | None = None) -> Callable[[Tensor], Tensor] | None:
        """z -> F(z) of residual block i (J_F route), or None when there is no single branch."""
        block = self.blocks[i]
        if block.branch is not None:
            return block.branch
        fn, residual = self.block_fn(i, trace), block.residual
        if residual.route == "difference":
            return lambda z: fn(z) - z
        if residual.route == "pre_norm":
            pre_norm = self.sum_fn(i, trace)
            return lambda z: pre_norm(z) - z
        if residual.route == "cut":
            return _read_add(fn, residual)
        return None

    def sum_fn(self, i: int, trace: Trace | None = None) -> Callable[[Tensor], Tensor] | None:
        """z -> the pre-norm sum z + F(z) of a post-norm block i (route ``pre_norm``), else None."""
        residual = self.blocks[i].residual
        if residual.route != "pre_norm" or self.blocks[i].branch is not None:
            return None
        return _read_add(self.block_fn(i, trace), residual)

    def operators(self, i: int, trace: Trace | None = None) -> list[tuple[str, Callable]]:
        """(operator, z -> ...) of block i: J_H of a plain or post-norm block (with I+J_F of its
        pre-norm sum where exact), I+J_F of a residual block, and J_F wherever it is exact."""
        block, fn = self.blocks[i], self.block_fn(i, trace)
        if block.kind != "residual":
            return [("J_H", fn)]
        branch, pre_norm = self.branch_fn(i, trace), self.sum_fn(i, trace)
        found = [(block.residual.whole, fn)]
        found += [("I+J_F", pre_norm)] if pre_norm is not None else []
        return found + ([("J_F", branch)] if branch is not None else [])

    def prod_fn(self, k: int, inputs: Inputs, prod_from: str) -> Callable[[Tensor], Tensor]:
        """z -> the output of block k's unit (1-based; a segment's: the next input) in one
        pass on ``inputs``, z being the first float input (``prod_from="input"``) or the first
        block's input (``"stem"``, put where that tensor is made when block 1 is a segment)."""
        block = self.blocks[k - 1]
        target, stop = (
            (block.module, "output") if block.boundary is None else (block.boundary, "input")
        )
        first = self.blocks[0]
        made = origin(self.model, inputs, first.module) if first.boundary is not None else None

        def forward(z: Tensor) -> Tensor:
            if prod_from == "input":
                run = capture(self.model, replace_first_float(inputs, z), [target], stop=stop)
            elif made is not None:
                with Origin(made[0], made[1], z):
                    run = capture(self.model, inputs, [target], stop=stop)
            else:
                run = capture(self.model, inputs, [target], stop=stop, replace=(first.module, z))
            return run.calls[0].output if stop == "output" else run.calls[0].input

        return forward

    # ----- inspection ---------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """One row per block: ``COLUMNS``."""
        rows = [
            [
                b.path,
                b.kind,
                b.shortcut,
                b.stage,
                b.index,
                b.in_shape,
                b.out_shape,
                b.params,
                b.last_norm,
                b.j_f,
                b.residual.skip_path,
            ]
            for b in self.blocks
        ]
        frame = pd.DataFrame(rows, columns=COLUMNS)
        frame["stage"] = frame["stage"].astype("Int64")
        frame["index"] = frame["index"].astype("Int64")
        return frame

    def positions(self) -> dict[str, tuple[int | None, int | None, str]]:
        """Block path -> (stage, index, kind), what ``gradflow.sites.position`` looks up."""
        return {b.path: (b.stage, b.index, b.kind) for b in self.blocks}

    def __str__(self) -> str:
        residual = sum(b.kind == "residual" for b in self.blocks)
        lines = [
            f"{type(self.model).__name__}: {len(self.blocks)} blocks ({residual} residual), "
            f"source: {self.source}",
            f"stem: {', '.join(self.stem) or '(the model input)'}",
            self.frame().to_string(index=False) if self.blocks else "(no blocks)",
            f"head: {', '.join(self.head) or '(none)'}",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Structure of {type(self.model).__name__}: {len(self.blocks)} blocks>"


def _read_add(fn: Callable[[Tensor], Tensor], residual: Residual) -> Callable[[Tensor], Tensor]:
    """z -> the tensor ``residual`` reads at its addition during fn(z): F(z), or z + F(z)."""

    def read(z: Tensor) -> Tensor:
        with AddCalls(residual.add_index, residual.position) as adds:
            fn(z)
        return adds.captured

    return read


LAYOUT_SAMPLES = 2  # samples a structure needs when only its layout is used


def layout_inputs(inputs: Inputs) -> Inputs:
    """The first LAYOUT_SAMPLES samples of ``inputs``: enough for a structure's blocks, kinds
    and shortcuts, which do not depend on the batch. Its trace keeps every block's input and
    output of the samples it is given: on a whole batch of a deep net that is gigabytes
    (resnet1202, 128 images: 2.9 GB)."""
    from .inputs import batch_size, select_samples

    return select_samples(inputs, slice(0, min(LAYOUT_SAMPLES, batch_size(inputs))))


def structure(
    model: nn.Module,
    inputs: Inputs,
    *,
    blocks: Sequence[tuple[str, nn.Module] | str] | None = None,
    stem: Callable | None = None,
) -> Structure:
    """Blocks (kind, shortcut, stage, shapes), stem and head of ``model`` on ``inputs``."""
    inputs = detach(normalize(inputs))
    with preserved_rng():
        twin, blocks, stem = copy.deepcopy((model, blocks, stem))
    strip_hooks(twin).requires_grad_(False)
    return build(twin.eval(), inputs, blocks=blocks, stem=stem)


def build(twin: nn.Module, inputs: Inputs, *, blocks=None, stem=None) -> Structure:
    """``structure`` on a private copy that is used as it is (no copy, mode unchanged)."""
    named, source = _sources(twin, blocks)
    with preserved_rng(), math_kernels(twin):
        order = _call_order(twin, inputs)
        if source == "discovered":
            named = _discover(twin, order)
        if not named:
            raise NoBlocksError(
                f"no blocks found in {type(twin).__name__}: pass blocks=[(name, module), ...] "
                "(the modules applied in sequence) and stem= if the input needs one"
            )
        trace = capture(twin, inputs, [module for _, module in named], complete=True)
    if source == "named_blocks" and stem is None:
        stem = getattr(twin, "forward_stem", None)
    infos = _infos(twin, named, source, trace)
    paths = {id(m): p for p, m in twin.named_modules()}
    inside = [paths.get(id(b.module), b.path) for b in infos]
    first, last = order.index(inside[0]) if inside[0] in order else 0, _last_call(order, inside)
    outside = [p for p in order if not any(p == q or p.startswith(q + ".") for q in inside)]
    stem_paths = [p for p in outside if order.index(p) < first and _is_leaf(twin, p)]
    head = [p for p in outside if order.index(p) > last and _is_leaf(twin, p)]
    if source != "named_blocks":
        with preserved_rng(), math_kernels(twin):
            segment_residuals(twin, infos, trace, twin.get_submodule(head[0]) if head else None)
    return Structure(twin, infos, source, stem_paths, head, trace, stem, [math_kernels_route()])


def math_kernels_route() -> str:
    from .private import ROUTE

    return ROUTE


def _is_leaf(model: nn.Module, path: str) -> bool:
    return not any(True for _ in model.get_submodule(path).children())


def _last_call(order: list[str], inside: list[str]) -> int:
    hits = [i for i, p in enumerate(order) if any(p == q or p.startswith(q + ".") for q in inside)]
    return max(hits) if hits else len(order)


def _sources(twin: nn.Module, blocks) -> tuple[list[tuple[str, nn.Module]], str]:
    modules = dict(twin.named_modules())
    if blocks is not None:
        named = []
        for item in blocks:
            if isinstance(item, str):
                if item not in modules:
                    raise UserInputError(f"blocks= names {item!r}, which is not a module path")
                named.append((item, modules[item]))
            else:
                named.append((str(item[0]), item[1]))
        return named, "user"
    if callable(getattr(twin, "named_blocks", None)):
        return list(twin.named_blocks()), "named_blocks"
    return [], "discovered"


def _call_order(twin: nn.Module, inputs: Inputs) -> list[str]:
    """Module paths in the order of their first call during one forward pass (no grad)."""
    order: dict[str, None] = {}
    handles = [
        module.register_forward_pre_hook(lambda *_, p=path: order.setdefault(p, None))
        for path, module in twin.named_modules()
        if path
    ]
    try:
        with torch.no_grad():
            call_model(twin, inputs)
    except Exception as error:  # any failure of the user's forward on these inputs
        raise forward_error(type(twin).__name__, inputs, error) from error
    finally:
        for handle in handles:
            handle.remove()
    return list(order)


def _repeats(children: list[nn.Module], share: float) -> bool:
    counts = Counter(type(c) for c in children)
    for cls, count in counts.items():
        if count < 2:
            continue
        sample = next(c for c in children if type(c) is cls)
        if any(True for _ in sample.children()) or (issubclass(cls, WEIGHTED) and share >= 0.5):
            return True
    return False


def _discover(twin: nn.Module, order: list[str]) -> list[tuple[str, nn.Module]]:
    """Blocks by the container rule of the module docstring, in call order."""
    rank = {path: i for i, path in enumerate(order)}
    total = sum(p.numel() for p in twin.parameters()) or 1
    qualified: dict[str, list[str]] = {}

    def visit(path: str, module: nn.Module) -> bool:
        children = [(f"{path}.{n}" if path else n, c) for n, c in module.named_children()]
        inner = [visit(p, c) for p, c in children]
        if type(module) not in CONTAINERS and not isinstance(module, CONTAINERS):
            return any(inner)
        called = [(p, c) for p, c in children if p in rank]
        share = sum(p.numel() for p in module.parameters()) / total
        plain_containers = [c for _, c in called if type(c) in CONTAINERS]
        if any(inner) and plain_containers:
            return True  # a list of stages: its stages hold the blocks
        if not any(inner) and _repeats([c for _, c in called], share):
            qualified[path] = [p for p, _ in called]
            return True
        return any(inner)

    visit("", twin)
    chosen = [c for c in qualified if not any(c.startswith(o + ".") for o in qualified if o != c)]
    paths = sorted((p for c in chosen for p in qualified[c]), key=rank.get)
    if not paths:
        paths = _top_level(twin, rank)
    modules = dict(twin.named_modules())
    return [(p, modules[p]) for p in paths]


def _top_level(twin: nn.Module, rank: dict[str, int]) -> list[str]:
    """Called children with parameters of the model (through single-child wrappers)."""
    module, prefix = twin, ""
    while True:
        children = [
            (f"{prefix}{n}", c)
            for n, c in module.named_children()
            if f"{prefix}{n}" in rank and any(True for _ in c.parameters())
        ]
        if len(children) != 1 or not any(True for _ in children[0][1].children()):
            return sorted((p for p, _ in children), key=rank.get)
        module, prefix = children[0][1], children[0][0] + "."


def _infos(twin, named, source, trace: Trace) -> list[BlockInfo]:
    """BlockInfo of every block: zoo attributes where the block has them, else the graph's."""
    paths = {id(m): p for p, m in twin.named_modules()}
    parents = list(dict.fromkeys(path.rpartition(".")[0] for path, _ in named))
    counts: Counter = Counter()
    infos = []
    for i, (path, module) in enumerate(named):
        call = trace.calls[i]
        if hasattr(module, "kind") and callable(getattr(module, "branch", None)):
            residual, branch = _zoo_residual(module), getattr(module, "branch", None)
            stage, index = getattr(module, "stage", None), getattr(module, "index", None)
            branch = branch if module.kind == "residual" else None
            last_norm = _zoo_last_norm(module, paths)
        else:
            (residual, last_norm), branch = trace_residual(module, call, paths), None
            parent = path.rpartition(".")[0]
            counts[parent] += 1
            stage, index = parents.index(parent) + 1, counts[parent]
        params = sum(p.numel() for p in module.parameters())
        infos.append(
            BlockInfo(
                path,
                module,
                residual.kind,
                residual.shortcut,
                stage,
                index,
                tuple(call.input.shape),
                tuple(call.output.shape),
                params,
                last_norm,
                residual,
                branch,
            )
        )
    return infos


def _zoo_last_norm(module: nn.Module, paths: dict) -> str | None:
    try:
        norm = module.last_norm
    except (AttributeError, NotImplementedError):
        return None
    return paths.get(id(norm)) if isinstance(norm, nn.Module) else None


def _zoo_residual(module: nn.Module) -> Residual:
    if getattr(module, "kind", "plain") != "residual":
        return PLAIN
    shortcut = (
        "identity" if isinstance(getattr(module, "skip", None), nn.Identity) else "projection"
    )
    return Residual("residual", shortcut, "branch")


__all__ = [
    "COLUMNS",
    "BlockInfo",
    "NoBlocksError",
    "Stop",
    "Structure",
    "build",
    "output_tensors",
    "structure",
]
