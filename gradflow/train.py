"""The paper's CIFAR recipe (He et al. 2016, section 4.2), resumable and distributed.

SGD with momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 50% and 75% of
the iteration budget (the paper's 32k and 48k of 64k), optional warm-up at lr 0.01 until the
training error falls below 80% (the paper's ResNet-110 trick), augmentation by 4-pixel
padding, random crop and horizontal flip.

Logged into a tidy ``history`` frame (model, step, split, quantity, value) every
``eval_every`` iterations: the *training* error and loss are running averages over the
augmented batches seen since the previous log (train-mode BN, weights moving), the
test/validation error and loss a full pass in eval mode; ``lr`` is the rate of the last
iteration of the interval. Every ``record_every`` iterations the Recorder measures that
iteration's forward/backward/update, so curves of response std, gradient norms and update
ratios over training come with no overhead on the other iterations.

Exact resume: batch ``i`` depends only on (seed, i) (``BatchLoader``), and a checkpoint holds
the model, optimiser, warm-up state, the running sums of the current log interval, the RNG
states and the frames so far; so a run killed and resumed ends bit-identical to an
uninterrupted one (on CPU; on CUDA as far as cuDNN kernels are deterministic).
Under ``torchrun`` the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on
CUDA), each rank trains on its share of every global batch, and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import (
    CHECKPOINT_FORMAT,
    columns_to_frame,
    frame_to_columns,
    load_checkpoint,
    save_checkpoint,
)
from .data import BatchLoader, ImageDataset, load_dataset, train_val_split
from .distributed import World, setup_world, weights_spread
from .errors import UserInputError
from .io import atomic_path, remove_stale_temporaries, write_frame, write_text
from .models import create_model

HISTORY_COLUMNS = ("model", "step", "split", "quantity", "value")
CHECKPOINT = "checkpoint.pt"
# Settings that may change on --resume: where and how it runs, not what it computes.
RESUMABLE_CHANGES = ("resume", "out_dir", "device", "progress", "data_dir", "download")


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the paper's CIFAR-10 recipe."""

    model: str = "resnet20"
    init: str | None = None  # None: the model's default (he)
    shortcut: str | None = None  # None: the model's default (A for CIFAR nets)
    data: str = "synthetic"
    data_dir: str | None = None
    pad_to: int | None = None  # e.g. 32 for Fashion-MNIST (28 -> 32, as CIFAR)
    synthetic_size: int | None = None  # training images of the synthetic set
    synthetic_image_size: int = 32
    val_size: int = 0  # > 0: hold out this many training images (the paper: 5000)
    augment: bool = True
    iterations: int = 64_000
    batch_size: int = 128  # global: split across ranks under torchrun
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of iterations, or iterations if > 1
    lr_decay: float = 0.1
    warmup_iterations: int = 0  # 0: no warm-up; else at most this many iterations at warmup_lr
    warmup_lr: float = 0.01
    warmup_error: float = 80.0  # warm-up ends once a batch's training error (%) is below this
    eval_every: int = 1000
    eval_batch_size: int = 500
    record_every: int = 1000  # 0: never run the Recorder
    checkpoint_every: int = 1000  # 0: only at the end (when out_dir is set)
    out_dir: str | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    label: str | None = None  # the frames' model column (default: the model name)
    progress: bool = True
    download: bool = False

    def milestone_iterations(self) -> list[int]:
        """Iterations at which the lr is divided: floor(fraction * iterations), or m if m > 1."""
        return sorted(int(m * self.iterations) if m <= 1 else int(m) for m in self.milestones)

    def validate(self) -> None:
        """Raise UserInputError for settings that cannot work."""
        positive = ("iterations", "batch_size", "eval_every", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("record_every", "checkpoint_every", "warmup_iterations", "val_size"):
            if getattr(self, name) < 0:
                raise UserInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "warmup_lr", "lr_decay"):
            if not getattr(self, name) > 0:
                raise UserInputError(f"{name} must be positive, got {getattr(self, name)}")
        if any(m <= 0 for m in self.milestones):
            raise UserInputError(f"milestones must be positive, got {list(self.milestones)}")
        if self.resume and not self.out_dir:
            raise UserInputError("--resume needs --out (the directory holding checkpoint.pt)")


def learning_rate(config: TrainConfig, iteration: int, warming_up: bool = False) -> float:
    """lr at ``iteration``: warmup_lr while warming up, else lr * decay^(milestones passed)."""
    if warming_up:
        return config.warmup_lr
    passed = sum(iteration >= m for m in config.milestone_iterations())
    return config.lr * config.lr_decay**passed


@dataclass
class TrainResult:
    """Frames and model of a finished run (``history``, ``records``: tidy long frames)."""

    history: pd.DataFrame
    records: pd.DataFrame
    model: nn.Module
    config: TrainConfig
    meta: dict = field(default_factory=dict)

    def final(self, split: str = "test", quantity: str = "error") -> float:
        """The last logged value of ``quantity`` on ``split`` (error in %)."""
        rows = self.history[(self.history.split == split) & (self.history.quantity == quantity)]
        return float(rows.value.iloc[-1])


# ----- data and evaluation ----------------------------------------------------------------
def _datasets(config: TrainConfig) -> tuple[ImageDataset, dict[str, ImageDataset]]:
    """(training set, {split: evaluation set}) as the config asks."""
    options = dict(
        data_dir=config.data_dir,
        pad_to=config.pad_to,
        seed=config.seed,
        image_size=config.synthetic_image_size,
    )
    train_set = load_dataset(
        config.data, split="train", size=config.synthetic_size, download=config.download, **options
    )
    evaluation = {"test": load_dataset(config.data, split="test", **options)}
    if config.val_size:
        train_set, evaluation["val"] = train_val_split(train_set, config.val_size, config.seed)
    return train_set, evaluation


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageDataset, world: World, batch_size: int) -> Tensor:
    """[wrong, summed loss, count] over ``dataset`` in eval mode, summed over ranks' shards."""
    was_training = model.training
    world.broadcast_buffers(model)  # every rank evaluates rank 0's (= the saved) model
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=world.device)
    indices = torch.arange(world.rank, len(dataset), world.size)
    for chunk in indices.split(batch_size):
        images, labels = dataset.take(chunk)
        images, labels = images.to(world.device), labels.to(world.device)
        logits = model(images)
        sums += _batch_sums(logits, labels)
    model.train(was_training)
    return world.sum(sums)


def _batch_sums(logits: Tensor, labels: Tensor) -> Tensor:
    """[wrong, summed cross-entropy, count] of one batch, float64."""
    wrong = (logits.argmax(1) != labels).sum()
    loss = F.cross_entropy(logits.detach().float(), labels, reduction="sum")
    count = torch.tensor(len(labels), device=logits.device)
    return torch.stack([wrong.double(), loss.double(), count.double()])


def _rows(label: str, step: int, split: str, sums: Tensor) -> list[dict]:
    wrong, loss, count = sums.tolist()
    if not math.isfinite(loss):
        raise UserInputError(
            f"training diverged by iteration {step} ({split} loss {loss}); "
            "lower --lr or add --warmup-iterations"
        )
    return [
        {
            "model": label,
            "step": step,
            "split": split,
            "quantity": "error",
            "value": 100 * wrong / count,
        },
        {"model": label, "step": step, "split": split, "quantity": "loss", "value": loss / count},
    ]


# ----- checkpoints ------------------------------------------------------------------------
def _check_same_run(saved: dict, config: TrainConfig, path: Path) -> None:
    current = _config_dict(config)
    changed = [
        f"{key}: {saved.get(key)!r} -> {value!r}"
        for key, value in current.items()
        if key not in RESUMABLE_CHANGES and saved.get(key) != value
    ]
    if changed:
        raise UserInputError(
            f"--resume with settings that differ from the run in {path}: {'; '.join(changed)}. "
            "Resume with the same settings, or start a new run with another --out"
        )


def _config_dict(config: TrainConfig) -> dict:
    values = dataclasses.asdict(config)
    values["milestones"] = list(config.milestones)
    return values


# ----- the loop ---------------------------------------------------------------------------
@contextmanager
def _maybe_recording(model: nn.Module, label: str, active: bool) -> Iterator[object]:
    if not active:
        yield None
        return
    from .record import Recorder

    with Recorder(model, label=label) as recorder:
        yield recorder


def _progress(config: TrainConfig, world: World, start: int):
    show = config.progress and world.rank == 0 and sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=config.iterations, initial=start, unit="it", file=sys.stderr, dynamic_ncols=True
    )


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data`` with the paper's recipe; see the module doc."""
    config.validate()
    world = setup_world(config.device)
    try:
        result = _train(config, world)
        if world.distributed:  # rank 0 writes after the loop: no rank tears gloo down before
            dist.barrier()  # it is done (an early teardown aborted a rank in CI: SIGABRT)
        return result
    finally:
        if world.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, world: World) -> TrainResult:
    started = time.perf_counter()
    label = config.label or config.model
    out_dir = Path(config.out_dir) if config.out_dir else None
    checkpoint_path = out_dir / CHECKPOINT if out_dir else None
    if checkpoint_path and checkpoint_path.exists() and not config.resume:
        raise UserInputError(
            f"{out_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
            "or choose another --out"
        )
    train_set, evaluation = _datasets(config)
    options = {"init": config.init, "shortcut": config.shortcut}
    options = {k: v for k, v in options.items() if v is not None}
    torch.manual_seed(config.seed)
    core = create_model(
        config.model, in_channels=train_set.channels, num_classes=train_set.num_classes, **options
    ).to(world.device)
    core.train()
    model = nn.parallel.DistributedDataParallel(core) if world.distributed else core
    optimizer = torch.optim.SGD(
        core.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    loader = BatchLoader(
        train_set,
        config.batch_size,
        seed=config.seed,
        augment=config.augment,
        rank=world.rank,
        world_size=world.size,
        device=world.device,
    )

    start, warming_up, resumed_from = 0, config.warmup_iterations > 0, None
    interval = torch.zeros(3, dtype=torch.float64, device=world.device)
    history: list[dict] = []
    records: list[pd.DataFrame] = []
    if out_dir and world.rank == 0 and out_dir.exists():  # a write cut short by SIGKILL
        remove_stale_temporaries(out_dir)
    if config.resume and checkpoint_path and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _check_same_run(state["config"], config, checkpoint_path)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = resumed_from = state["iteration"]
        warming_up = state["warming_up"]
        interval = state["interval"].to(world.device)
        history = pd.DataFrame(state["history"]).to_dict("records")
        if state["records"]:
            records = [columns_to_frame(state["records"])]
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    def snapshot(iteration: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": _config_dict(config),
            "iteration": iteration,
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "warming_up": warming_up,
            "interval": interval.cpu(),
            "history": pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_dict("list"),
            "records": frame_to_columns(_concat(records)) if records else {},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    progress = _progress(config, world, start)
    for iteration in range(start, config.iterations):
        lr = learning_rate(config, iteration, warming_up)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = loader.batch(iteration)
        recording = config.record_every > 0 and iteration % config.record_every == 0
        with _maybe_recording(model, label, recording) as recorder:
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recorder is not None:
                recorder.all_reduce()
            optimizer.step()
            if recorder is not None:
                recorder.step()  # after the update: update_ratio is this iteration's step
        if recorder is not None:
            frame = recorder.frame()
            frame["step"] = iteration
            records.append(frame)
        sums = _batch_sums(logits, labels)
        interval += sums
        if warming_up:
            wrong, _, count = world.sum(sums.clone()).tolist()
            done = iteration + 1 >= config.warmup_iterations
            warming_up = not (done or 100 * wrong / count < config.warmup_error)
        step = iteration + 1
        last = step == config.iterations
        if step % config.eval_every == 0 or last:
            history += _rows(label, step, "train", world.sum(interval.clone()))
            history.append(
                {"model": label, "step": step, "split": "train", "quantity": "lr", "value": lr}
            )
            interval.zero_()
            for split, dataset in evaluation.items():
                history += _rows(
                    label, step, split, evaluate(core, dataset, world, config.eval_batch_size)
                )
            if progress is not None:
                progress.set_postfix(
                    train_err=f"{_last(history, 'train'):.1f}%",
                    test_err=f"{_last(history, 'test'):.1f}%",
                    lr=f"{lr:g}",
                    refresh=False,
                )
        if (
            checkpoint_path
            and world.rank == 0
            and (last or (config.checkpoint_every and step % config.checkpoint_every == 0))
        ):
            save_checkpoint(checkpoint_path, snapshot(step))
            _write_frames(out_dir, history, records)
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()

    history_frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    records_frame = _concat(records)
    meta = _meta(config, world, train_set, evaluation, history_frame, core, started, resumed_from)
    if out_dir and world.rank == 0:
        _write_frames(out_dir, history, records)
        with atomic_path(out_dir / "final.pt") as tmp:
            torch.save({"model": core.state_dict(), "config": _config_dict(config)}, tmp)
        write_text(out_dir / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    return TrainResult(history_frame, records_frame, core, config, meta)


def _last(history: list[dict], split: str) -> float:
    return next(
        r["value"] for r in reversed(history) if r["split"] == split and r["quantity"] == "error"
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    from .record import FRAME_COLUMNS

    frames = [f for f in frames if len(f)]
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=list(FRAME_COLUMNS))
    )


def _write_frames(out_dir: Path, history: list[dict], records: list[pd.DataFrame]) -> None:
    write_frame(pd.DataFrame(history, columns=list(HISTORY_COLUMNS)), out_dir, "history")
    if records:
        write_frame(_concat(records), out_dir, "records")


def _meta(config, world, train_set, evaluation, history, core, started, resumed_from) -> dict:
    finals = history[history.quantity == "error"].groupby("split").value.last().to_dict()
    return {
        "config": _config_dict(config),
        "dataset": {
            "name": train_set.name,
            "description": train_set.description,
            "is_synthetic": train_set.is_synthetic,
            "image_shape": [train_set.channels, train_set.image_size, train_set.image_size],
            "train_images": len(train_set),
            **{f"{split}_images": len(d) for split, d in evaluation.items()},
        },
        "final_error_percent": finals,
        "world_size": world.size,
        "max_weight_difference_across_ranks": weights_spread(core, world),
        "device": str(world.device),
        "resumed_from_iteration": resumed_from,
        "wall_seconds_this_process": round(time.perf_counter() - started, 3),
        "torch": torch.__version__,
        "milestone_iterations": config.milestone_iterations(),
    }
