"""Wall time and peak RSS of `gradflow analyze` on user-sized models (a benchmark, not a test).

Three runs, each a fresh `python -m gradflow analyze` subprocess (``analyze_child``):

- a user pre-LN transformer file: 6 nn.TransformerEncoderLayer blocks, width 256, 4 heads,
  sequence 128, batch 16, token ids from the file's example_inputs;
- a user torchvision-style ResNet-18 file (BasicBlock, 2-2-2-2) at --input-shape 3,64,64;
- the zoo's resnet50 at its registry size 3x224x224 (batch size below, reported).

Target: each at most 60 s wall and 2 GB peak RSS. Run it niced on a quiet machine:
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_user_models.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

from analyze_child import run_analyze

TRANSFORMER = """
import torch
from torch import nn


class Transformer(nn.Module):
    def __init__(self, vocab=1000, width=256, depth=6, heads=4, seq_len=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(1, seq_len, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                       norm_first=True)
            for _ in range(depth)
        )
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, ids):
        x = self.embed(ids) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build():
    return Transformer()


def example_inputs(batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (batch_size, 128), generator=g)
    return ids, ids
"""

RESNET18 = """
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 2)
        self.layer2 = self._make_layer(128, 2, 2)
        self.layer3 = self._make_layer(256, 2, 2)
        self.layer4 = self._make_layer(512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build():
    return ResNet18()
"""


RESNET18_ARGS = ("--model", "resnet18.py:build", "--input-shape", "3,64,64")


def run(name: str, args: list[str], folder: Path) -> dict:
    """One `gradflow analyze` subprocess: wall seconds, peak RSS (MiB), exit code, summary."""
    out = folder / f"report-{name}"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's report (--keep)
    child = run_analyze(args, out, cwd=folder)
    meta = child["meta"]
    inputs = next(iter(meta.get("inputs", {}).values()), {}).get("inputs", "")
    return {
        "run": name,
        "wall_s": round(child["wall_s"], 1),
        "cpu_s": round(child["cpu_s"], 1),
        "peak_rss_mib": round(child["peak_mib"]),
        "exit": child["exit"],
        "batch": inputs,
        "batch_size": [plan["batch_size"] for plan in meta.get("record", [])],
        "phases_s_mib": {
            p["phase"]: [p["seconds"], p.get("peak_rss_mib")] for p in meta.get("phase_seconds", [])
        },
        "error": (child["stderr"].strip().splitlines() or ["killed"])[-1] if child["exit"] else "",
        "command": " ".join(["gradflow", "analyze", *args]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--extra", default="", help="extra analyze flags of every run (default: none, as a user)"
    )
    parser.add_argument("--only", nargs="*", help="run only these (transformer resnet18 resnet50)")
    parser.add_argument("--keep", help="write the model files and reports here (kept)")
    options = parser.parse_args()
    common = options.extra.split()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(options.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "transformer.py").write_text(textwrap.dedent(TRANSFORMER))
        (folder / "resnet18.py").write_text(textwrap.dedent(RESNET18))
        runs = {
            "transformer": ["--model", "transformer.py:build", "--batch-size", "16"],
            "resnet18": [*RESNET18_ARGS],
            "resnet50": ["--model", "resnet50"],
        }
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for name, args in runs.items():
            if options.only and name not in options.only:
                continue
            row = run(name, [*args, *common], folder)
            print(json.dumps(row), flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
