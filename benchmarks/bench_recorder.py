"""Step time of resnet56 (CIFAR, batch 128) training: bare vs Recorder vs hand-written hooks.

Three copies of the same network train side by side in one run, their steps interleaved
(the order rotates every round) so that load from other processes hits all three alike:

- bare: forward, cross-entropy, backward, SGD step;
- recorder: the same inside ``gradflow.Recorder(model)`` with its default probes and a
  ``rec.step()`` per training step;
- recorder-7: the same with the seven probes of the default before the signal propagation
  probe channel_variance joined it: its cost is the ratio recorder / recorder-7;
- recorder-all: every probe, also branch_variance and shortcut_grad_share (not in the
  Recorder's default: they hook every residual block's additions);
- hand-written: what most users write: forward hooks calling ``.std().item()`` on every BN
  output, ``register_full_backward_hook`` on every block taking ``grad_output[0].norm().item()``
  and ``p.grad.norm().item()`` for every parameter after backward.

Prints the median step time of each and the ratios to bare, next to the peer-tool figures of
PAPER_FACTS.md (measured elsewhere; not run here). Usage:
``python benchmarks/bench_recorder.py [--steps 20] [--model resnet56] [--batch 128]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import gradflow as gf
from gradflow.probes import PROBES
from gradflow.record import Recorder

PEER_TOOLS = [  # PAPER_FACTS.md, CPU, 2 threads, CIFAR ResNet-56, batch 128
    ("hand-written hooks (reference)", "1.02x-1.11x"),
    ("Cockpit economy", "3.7x-3.9x"),
    ("BackPACK BatchGrad", "6.7x-7.2x"),
]


BEFORE_SIGNAL = [  # the default probe set before the signal propagation probes
    "response_std", "response_mean", "response_absmax", "activation_grad_norm",
    "param_grad_norm", "weight_norm", "update_ratio",
]  # fmt: skip


class HandWritten:
    """The usual manual instrumentation, one ``.item()`` per measured value."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.log: dict[str, list[float]] = {}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                self.handles.append(module.register_forward_hook(self._std_hook(name)))
        for name, block in model.named_blocks():
            self.handles.append(block.register_full_backward_hook(self._grad_hook(name)))

    def _std_hook(self, name):
        def hook(module, args, output):
            self.log.setdefault(name, []).append(output.std().item())

        return hook

    def _grad_hook(self, name):
        def hook(module, grad_input, grad_output):
            self.log.setdefault(name, []).append(grad_output[0].norm().item())

        return hook

    def after_backward(self) -> None:
        for name, param in self.model.named_parameters():
            if param.grad is not None:
                self.log.setdefault(name, []).append(param.grad.norm().item())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = gf.create_model(args.model).train()
    names = ("bare", "recorder", "recorder-7", "recorder-all", "hand-written")
    models = {name: copy.deepcopy(base) for name in names}
    optimizers = {
        name: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        for name, m in models.items()
    }
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    hand = HandWritten(models["hand-written"])
    recorders = {
        "recorder": Recorder(models["recorder"], label=args.model).__enter__(),
        "recorder-7": Recorder(models["recorder-7"], BEFORE_SIGNAL, label=args.model).__enter__(),
        "recorder-all": Recorder(
            models["recorder-all"], list(PROBES), label=args.model
        ).__enter__(),
    }
    recorders["recorder-all"].__enter__()
    recorder = recorders["recorder"]

    def train_step(name: str) -> tuple[float, float]:
        model, optimizer = models[name], optimizers[name]
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if name == "hand-written":
            hand.after_backward()
        optimizer.step()
        if name in recorders:
            recorders[name].step()
        return time.perf_counter() - start, time.process_time() - start_cpu

    names = list(names)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for round_index in range(args.warmup + args.steps):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                elapsed, cpu = train_step(name)
                if round_index >= args.warmup:
                    times[name].append(elapsed)
                    cpu_times[name].append(cpu)
    finally:
        for each in recorders.values():
            each.__exit__(None, None, None)
    start = time.perf_counter()
    frame = recorder.frame()
    frame_seconds = time.perf_counter() - start

    bare = statistics.median(times["bare"])
    bare_cpu = statistics.median(cpu_times["bare"])
    print(
        f"{args.model}, batch {args.batch}, {args.threads} threads, {args.steps} timed steps "
        f"(+{args.warmup} warm-up), interleaved"
    )
    print(f"{'variant':<20}{'median wall':>12}{'vs bare':>9}{'median CPU':>13}{'vs bare':>9}")
    for name in names:
        wall, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
        print(
            f"{name:<20}{wall * 1000:>10.1f}ms{wall / bare:>8.3f}x"
            f"{cpu * 1000:>11.1f}ms{cpu / bare_cpu:>8.3f}x"
        )
    print("(CPU = process time: less sensitive to other processes on a shared machine)")
    signal = statistics.median(times["recorder"]) / statistics.median(times["recorder-7"])
    print(f"channel_variance probe: recorder / recorder-7 = {signal:.3f}x (wall)")
    print(
        f"recorder frame(): {len(frame)} rows in {frame_seconds * 1000:.0f} ms "
        f"(once, after training)"
    )
    print("peer tools, PAPER_FACTS.md (not run here):")
    for name, ratio in PEER_TOOLS:
        print(f"{name:<34}{ratio:>12}")


if __name__ == "__main__":
    main()
