"""How much memory a pass keeps, and the batch sizes that fit: the record phase's micro-batches.

A backward pass needs the tensors autograd saved in the forward pass (conv inputs, BN inputs,
ReLU outputs, ...): for a deep net they are the whole peak (resnet1202 at batch 128: 13.7 GB).
``saved_bytes_per_sample`` measures them in one forward pass of a tiny slice under
``torch.autograd.graph.saved_tensors_hooks`` (each tensor counted once, parameters left out:
they do not grow with the batch); ``choose_micro_batch`` then takes the largest slice whose
saved tensors fit ``budget_mib`` (conservative: resnet110 at batch 128 saves 1.03 GB by this
count while its record phase raises the peak RSS by 0.7 GB: in-place ReLU outputs, freed
as the backward runs). The budget is a fixed number (not the free memory of the moment), so the
same command feeds the same slices, and so writes the same numbers, on any machine.

``default_batch_size``: the measurement batch when none is given: 128 (the paper's CIFAR
batch), fewer for larger inputs so that the record phase's compute stays within a few CIFAR
batches (8 at 3x224x224, the issue-13 target of one minute for resnet50: the batch goes through
about five forwards -- the input check, the record pass and its backward, the BN calibration
and the structure trace of the spectra copy).

``forward_gflop``: the multiply-add work of one sample's forward pass (matmuls, convolutions,
attention; ``torch.utils.flop_counter``'s formulas), counted, not timed: the cost proxy the
spectra plan of ``gradflow.analyze`` scales by (the same number on any machine).

``peak_rss_mib``/``reset_peak_rss``: the process's peak resident set size (Linux
/proc/self/status VmHWM; ``getrusage`` elsewhere, which cannot be reset), per phase.
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .inputs import Inputs, batch_size, call_model, select_samples

DEFAULT_BUDGET_MIB = 1024  # saved tensors of one record slice (the 2 GB goal, with margin)
PROBE_SAMPLES = 2
BACKWARD_COPIES = 2  # activation-sized tensors the backward holds beside the saved ones
DEFAULT_BATCH = 128
BATCH_INPUT_VALUES = 4 * DEFAULT_BATCH * 3 * 32 * 32  # 4 CIFAR batches of input values
MIN_DEFAULT_BATCH = 8
MIB = 2**20
MAX_VECTORS_PER_CHUNK = 64  # vectors of one batched Jacobian product (torch.func.vmap chunk)
PRODUCT_SHARE = 0.25  # of the memory budget, for one batched product (product_budget_mib)


class _CreatedStorages(TorchDispatchMode):
    """The storages that the operations run inside create (an output sharing no input's)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        self.created.update(
            ptr for t in _tensors(out) if (ptr := t.untyped_storage().data_ptr()) not in given
        )
        return out


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def saved_bytes(run: Callable[[], Any], inputs: Any = ()) -> int:
    """Bytes autograd saves for the backward while ``run()`` runs (grad enabled): each saved
    tensor created inside it or among ``inputs`` counted once; weights, buffers and other
    tensors that exist anyway are not (they do not grow with the batch or the vectors)."""
    return sum(_saved_tensor_bytes(run, inputs))


def _saved_tensor_bytes(run: Callable[[], Any], inputs: Any) -> list[int]:
    """The sizes of the tensors ``saved_bytes`` counts."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        seen[t.data_ptr(), t.numel()] = (ptr, t.numel() * t.element_size())
        # Not t itself: a node saving its own output (ReLU, tanh) would then hold the output's
        # Python object, which holds the node: a cycle through C++ that no garbage collector
        # frees (every such pass leaked its activations and, through them, the model's weights).
        return t.detach()

    given = {t.untyped_storage().data_ptr() for t in _tensors(inputs)}
    created = _CreatedStorages()
    saving = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.enable_grad(), saving, created:
        run()
    keep = created.created | given
    return [size for ptr, size in seen.values() if ptr in keep]


def saved_bytes_per_sample(
    model: nn.Module, inputs: Inputs, targets: Any = None, loss_fn: Any = None
) -> float:
    """Bytes autograd saves per sample in one forward (+ loss) of ``model`` on a tiny slice.

    Runs as the record pass does (input requiring grad; buffers and RNG restored after, no
    backward, so nothing of the model changes); ``saved_bytes`` counts, plus the backward's
    working set: ``BACKWARD_COPIES`` copies of the largest saved tensor (the gradients at a
    layer's output and at its input). With the allocator returning freed pages at once
    (``MALLOC_MMAP_THRESHOLD_=131072``) a record pass peaks within ~1.1x of this count; glibc's
    default keeps freed heap resident, up to ~1.5x on a shallow net (tests/test_memory_products).
    """
    from .inputs import first_float_tensor, replace_first_float
    from .losses import resolve_loss
    from .record_pass import slice_targets
    from .state import preserved_buffers, preserved_rng

    total = batch_size(inputs)
    part = slice(0, min(PROBE_SAMPLES, total))
    tiny = select_samples(inputs, part)
    first = first_float_tensor(tiny)
    if first is not None:  # as record() does: the input's gradient is measured too
        tiny = replace_first_float(tiny, first.detach().requires_grad_(True))
    tiny_targets = slice_targets(targets, part, total)

    def forward() -> None:
        output = call_model(model, tiny)
        if targets is not None or loss_fn is not None:
            resolve_loss(loss_fn)(output, tiny_targets)

    with preserved_rng(), preserved_buffers(model):
        sizes = _saved_tensor_bytes(forward, (tiny, tiny_targets))
    return (sum(sizes) + BACKWARD_COPIES * max(sizes, default=0)) / part.stop


def product_bytes_per_vector(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """What one vector of a J V or J^T U product of ``fn`` at ``x`` needs, at most: the bytes
    autograd saves in one forward of ``fn`` at ``x`` (every intermediate a tangent or a
    cotangent passes through; a batched product holds one such copy per vector)."""
    from .state import preserved_rng

    point = x.detach().requires_grad_(True)
    with preserved_rng():
        return saved_bytes(lambda: fn(point), point)


def vectors_per_chunk(bytes_per_vector: float, most: int, budget_mib: float | None = None) -> int:
    """How many vectors a batched Jacobian product takes at once: as many as fit
    ``budget_mib`` (default: ``product_budget_mib()``) at ``bytes_per_vector`` each, between 1
    and ``most``; the same number on any machine."""
    budget = product_budget_mib() if budget_mib is None else budget_mib
    if bytes_per_vector <= 0:
        return most
    return max(1, min(most, int(budget * MIB // bytes_per_vector)))


_BUDGET: ContextVar[float] = ContextVar("gradflow_memory_budget", default=DEFAULT_BUDGET_MIB)


def product_budget_mib(budget_mib: float | None = None) -> float:
    """What one batched Jacobian product may hold: ``PRODUCT_SHARE`` of the memory budget
    (``budget_mib``, default ``memory_budget``'s). The spectra phase keeps a private copy of
    the model, every step's reverse-mode graph and the walk's basis and images beside the
    product (resnet152 at 224: 1.5 GB), and a large map runs no slower in smaller chunks
    (a 802816 -> 802816 resnet152 block, 64 vectors: 2.1 s by 64, 1.75 s by 32 or 16)."""
    return PRODUCT_SHARE * (_BUDGET.get() if budget_mib is None else budget_mib)


@contextmanager
def memory_budget(budget_mib: float) -> Iterator[None]:
    """Within this block, batched Jacobian products chunk their vectors to their share of
    ``budget_mib`` (``product_budget_mib``; ``gradflow analyze --record-memory``: one budget
    for the record slices and the products)."""
    token = _BUDGET.set(budget_mib)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def record_fixed_bytes(model: nn.Module) -> int:
    """Bytes a record pass keeps whatever its slice: the gradients of the trainable parameters,
    twice (one slice's, and their sum over the slices so far)."""
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def choose_micro_batch(
    per_sample_bytes: float,
    batch: int,
    budget_mib: float = DEFAULT_BUDGET_MIB,
    fixed_bytes: float = 0.0,
) -> int:
    """The largest slice of ``batch`` (the whole batch, else an even split) whose saved
    tensors, with ``fixed_bytes`` (``record_fixed_bytes``), fit ``budget_mib``; at least one
    sample."""
    need = per_sample_bytes
    room = budget_mib * MIB - fixed_bytes
    fits = max(1, int(room // need)) if need > 0 else batch
    if fits >= batch:
        return batch
    slices = math.ceil(batch / fits)
    return math.ceil(batch / slices)  # equal slices: 128 in 3 -> 43, 43, 42


def default_batch_size(input_shape: tuple[int, ...] | None) -> int:
    """128 for inputs up to CIFAR's 3x32x32; for larger ones the largest power of two
    holding at most four CIFAR batches of input values (128 at 3x64x64, 32 at 3x128x128,
    8 at 3x224x224: resnet50 saves 78 MiB per sample, 0.6 GB at 8), never below 8."""
    if not input_shape:
        return DEFAULT_BATCH
    values = math.prod(input_shape)
    if values <= 3 * 32 * 32:
        return DEFAULT_BATCH
    fits = 2 ** int(math.log2(max(1, BATCH_INPUT_VALUES // values)))
    return max(MIN_DEFAULT_BATCH, min(DEFAULT_BATCH, fits))


class _FlopCount(TorchDispatchMode):
    """Sums ``torch.utils.flop_counter``'s FLOP formulas over every op dispatched inside."""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry, self.flops = flop_registry, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def forward_gflop(model: nn.Module, inputs: Inputs) -> float:
    """GFLOP of one forward of a private copy of ``model`` on the first sample of ``inputs``
    (no grad; the model, its buffers and the global RNG untouched)."""
    from .private import private_copy
    from .state import preserved_rng

    one = select_samples(inputs, slice(0, 1))
    with preserved_rng():
        twin = private_copy(model)
        counter = _FlopCount()
        with torch.no_grad(), counter:
            call_model(twin, one)
    return counter.flops / 1e9


_STATUS = Path("/proc/self/status")


def peak_rss_mib() -> float:
    """The process's peak resident set size since the last ``reset_peak_rss`` (MiB)."""
    try:
        found = re.search(r"VmHWM:\s+(\d+)\s+kB", _STATUS.read_text())
    except OSError:
        found = None
    if found:
        return int(found.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


_CLEARED_PEAK_MIB = 0.0  # the largest peak that reset_peak_rss restarted


def reset_peak_rss() -> bool:
    """Restart the peak at the current RSS (Linux >= 4.0); False where that is impossible.

    The kernel's high-water mark is the one getrusage, wait4 and /usr/bin/time read: after a
    reset they see only the peak since then. ``process_peak_rss_mib`` keeps the whole peak."""
    global _CLEARED_PEAK_MIB
    before = peak_rss_mib()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    _CLEARED_PEAK_MIB = max(_CLEARED_PEAK_MIB, before)
    return True


def process_peak_rss_mib() -> float:
    """The process's peak resident set size since it started, across ``reset_peak_rss``."""
    return max(_CLEARED_PEAK_MIB, peak_rss_mib())


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc ``malloc_trim``; a no-op
    elsewhere): between micro-batches, so that one slice's freed activations, scattered among
    the small tensors that outlive it, do not stay resident while the next slice runs."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


RELEASE_MIB = 64  # a working set at least this large is released after use


@contextmanager
def release_large_frees(working_bytes: float) -> Iterator[None]:
    """Run the block, then ``release_free_memory`` if its working set was at least
    ``RELEASE_MIB``: glibc keeps the freed activations of a large Jacobian product resident
    among the small tensors that outlive them, and the next product (another shape) cannot
    reuse all of them (resnet152's spectra phase: 2.7 GB resident, 2.1 GB released after
    each product). A few microseconds per call; smaller products are left alone."""
    try:
        yield
    finally:
        if working_bytes >= RELEASE_MIB * MIB:
            release_free_memory()


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _product_clause(plan: dict) -> str:
    """The spectra chunk of a record plan: planned from the record pass's bytes per sample
    (loss and backward copies included), more than a product vector needs, so below the cap
    it is a lower bound; each product measures its own (``JacobianOperator``)."""
    vectors = plan.get("product_vectors")
    if vectors is None:
        return "."
    least = "" if vectors >= MAX_VECTORS_PER_CHUNK else "at least "
    return f"; spectra products on the whole net take {least}{vectors} vectors at a time."


def record_lines(meta: dict) -> list[str]:
    """One sentence per analysed (model, step) on its record batch (meta.json's ``record``)."""
    lines = []
    for plan in meta.get("record") or []:
        step = f" at step {plan['step']}" if plan.get("step") else ""
        fed = (
            "in one pass"
            if plan["micro_batches"] == 1
            else f"in {plan['micro_batches']} micro-batches of at most {plan['micro_batch']}"
        )
        lines.append(
            f"Record batch of {plan['model']}{step}: {plan['batch_size']} samples fed {fed} "
            f"({plan['saved_mib_per_sample']:.3g} MiB of saved activations per sample, "
            f"budget {plan['record_memory_mib']} MiB)" + _product_clause(plan)
        )
    return lines
