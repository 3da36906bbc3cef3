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
import os
import signal
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
from torch import nn

from .checkpoint import (
    CHECKPOINT_FORMAT,
    columns_to_frame,
    frame_to_columns,
    load_checkpoint,
    save_checkpoint,
)
from .configs import TrainConfig
from .data import BatchLoader, ImageDataset
from .distributed import World, setup_world, weights_spread
from .errors import UserInputError
from .history import (
    HISTORY_COLUMNS,
    batch_sums,
    evaluate,
    history_rows,
    last_error,
    training_datasets,
)
from .io import atomic_path, remove_stale_temporaries, write_frame, write_text
from .models.build import build_model
from .outdir import prepare_run_folder
from .provenance import data_meta, run_meta

CHECKPOINT = "checkpoint.pt"
# Tests of exact resume: "PHASE:STEP" makes the trainer SIGKILL itself at a known point,
# PHASE "iteration" (after the SGD step that completes STEP, before its log and checkpoint)
# or "checkpoint" (right after the checkpoint and frames of STEP are written).
CRASH_ENV = "GRADFLOW_TEST_SIGKILL"
CRASH_PHASES = ("iteration", "checkpoint")
# Settings that may change on --resume: where and how it runs, not what it computes.
RESUMABLE_CHANGES = ("resume", "out_dir", "device", "progress", "data_dir", "download")


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
def _crash_point() -> tuple[str, int] | None:
    """(phase, step) from ``$GRADFLOW_TEST_SIGKILL`` ("PHASE:STEP"), or None when unset."""
    value = os.environ.get(CRASH_ENV, "")
    if not value:
        return None
    phase, _, step = value.partition(":")
    if phase not in CRASH_PHASES or not step.isdigit():
        raise UserInputError(
            f"{CRASH_ENV}={value!r}: expected PHASE:STEP with PHASE one of "
            f"{', '.join(CRASH_PHASES)}, e.g. iteration:15; unset it to train normally"
        )
    return phase, int(step)


def _crash_if(crash: tuple[str, int] | None, phase: str, step: int) -> None:
    """SIGKILL this process when (phase, step) is the crash point: no cleanup runs."""
    if crash == (phase, step):
        os.kill(os.getpid(), signal.SIGKILL)


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


def prepare_out_dir(config: TrainConfig, world: World) -> tuple[Path | None, Path | None]:
    """(out_dir, its checkpoint path), or (None, None); refuses a run folder unless resuming.

    Removes the temporaries of a write that a SIGKILL cut short (rank 0 only).
    """
    if not config.out_dir:
        return None, None
    out_dir = Path(config.out_dir)
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists() and not config.resume:
        raise UserInputError(
            f"{out_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
            "or choose another --out"
        )
    if world.rank == 0:
        prepare_run_folder(out_dir)  # refuses a folder of files gradflow did not write
        remove_stale_temporaries(out_dir)
    return out_dir, checkpoint_path


class _Run:
    """The state of one training run: model, optimiser, loader, logs; one method per job."""

    def __init__(self, config: TrainConfig, world: World, train_set: ImageDataset) -> None:
        self.config, self.world = config, world
        self.label = config.label or config.model
        options = {"init": config.init, "shortcut": config.shortcut}
        options.update(in_channels=train_set.channels, num_classes=train_set.num_classes)
        self.core = build_model(
            config.model, options=options, seed=config.seed, device=world.device
        )
        self.core.train()
        self.model = (
            nn.parallel.DistributedDataParallel(self.core) if world.distributed else self.core
        )
        self.optimizer = torch.optim.SGD(
            self.core.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.loader = BatchLoader(
            train_set,
            config.batch_size,
            seed=config.seed,
            augment=config.augment,
            rank=world.rank,
            world_size=world.size,
            device=world.device,
        )
        self.start, self.warming_up, self.resumed_from = 0, config.warmup_iterations > 0, None
        self.interval = torch.zeros(3, dtype=torch.float64, device=world.device)
        self.history: list[dict] = []
        self.records: list[pd.DataFrame] = []

    def restore(self, path: Path) -> None:
        """Continue from the checkpoint at ``path`` (same settings, else UserInputError)."""
        state = load_checkpoint(path)
        _check_same_run(state["config"], self.config, path)
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start = self.resumed_from = state["iteration"]
        self.warming_up = state["warming_up"]
        self.interval = state["interval"].to(self.world.device)
        self.history = pd.DataFrame(state["history"]).to_dict("records")
        if state["records"]:
            self.records = [columns_to_frame(state["records"])]
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    def snapshot(self, iteration: int) -> dict:
        """Everything an exact resume after ``iteration`` needs (tensors and plain Python)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": _config_dict(self.config),
            "iteration": iteration,
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "warming_up": self.warming_up,
            "interval": self.interval.cpu(),
            "history": pd.DataFrame(self.history, columns=list(HISTORY_COLUMNS)).to_dict("list"),
            "records": frame_to_columns(_concat(self.records)) if self.records else {},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def iteration(self, iteration: int, lr: float) -> None:
        """One SGD step at ``lr`` on batch ``iteration``; the Recorder on every record_every."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.loader.batch(iteration)
        recording = config.record_every > 0 and iteration % config.record_every == 0
        with _maybe_recording(self.model, self.label, recording) as recorder:
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recorder is not None:
                recorder.all_reduce()
            self.optimizer.step()
            if recorder is not None:
                recorder.step()  # after the update: update_ratio is this iteration's step
        if recorder is not None:
            frame = recorder.frame()
            frame["step"] = iteration
            self.records.append(frame)
        sums = batch_sums(logits, labels)
        self.interval += sums
        if self.warming_up:
            wrong, _, count = self.world.sum(sums.clone()).tolist()
            done = iteration + 1 >= config.warmup_iterations
            self.warming_up = not (done or 100 * wrong / count < config.warmup_error)

    def log(self, step: int, lr: float, evaluation: dict[str, ImageDataset]) -> None:
        """Training error and loss of the interval, lr, and an evaluation of every split."""
        label, world = self.label, self.world
        self.history += history_rows(label, step, "train", world.sum(self.interval.clone()))
        self.history.append(
            {"model": label, "step": step, "split": "train", "quantity": "lr", "value": lr}
        )
        self.interval.zero_()
        for split, dataset in evaluation.items():
            sums = evaluate(self.core, dataset, world, self.config.eval_batch_size)
            self.history += history_rows(label, step, split, sums)


def _train(config: TrainConfig, world: World) -> TrainResult:
    """Data, model and optimiser, then the loop: step, log, checkpoint (see the module doc)."""
    started = time.perf_counter()
    crash = _crash_point()
    out_dir, checkpoint_path = prepare_out_dir(config, world)
    train_set, evaluation = training_datasets(config)
    run = _Run(config, world, train_set)
    if config.resume and checkpoint_path and checkpoint_path.exists():
        run.restore(checkpoint_path)
    progress = _progress(config, world, run.start)
    for iteration in range(run.start, config.iterations):
        lr = learning_rate(config, iteration, run.warming_up)
        run.iteration(iteration, lr)
        step = iteration + 1
        _crash_if(crash, "iteration", step)
        last = step == config.iterations
        if step % config.eval_every == 0 or last:
            run.log(step, lr, evaluation)
            if progress is not None:
                progress.set_postfix(
                    train_err=f"{last_error(run.history, 'train'):.1f}%",
                    test_err=f"{last_error(run.history, 'test'):.1f}%",
                    lr=f"{lr:g}",
                    refresh=False,
                )
        periodic = config.checkpoint_every and step % config.checkpoint_every == 0
        if checkpoint_path and world.rank == 0 and (last or periodic):
            save_checkpoint(checkpoint_path, run.snapshot(step))
            _write_frames(out_dir, run.history, run.records)
            _crash_if(crash, "checkpoint", step)
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    history_frame = pd.DataFrame(run.history, columns=list(HISTORY_COLUMNS))
    meta = _meta(config, world, train_set, evaluation, history_frame, run, started)
    if out_dir and world.rank == 0:
        _write_outputs(out_dir, run, config, meta)
    return TrainResult(history_frame, _concat(run.records), run.core, config, meta)


def _write_outputs(out_dir: Path, run: _Run, config: TrainConfig, meta: dict) -> None:
    """The frames, final.pt (weights and settings) and meta.json of a finished run."""
    _write_frames(out_dir, run.history, run.records)
    with atomic_path(out_dir / "final.pt") as tmp:
        torch.save({"model": run.core.state_dict(), "config": _config_dict(config)}, tmp)
    write_text(out_dir / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")


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


def _meta(config, world, train_set, evaluation, history, run: _Run, started: float) -> dict:
    """meta.json of a run: the shared schema (``gradflow.provenance``) plus the trainer's
    keys; ``wall_time_s`` is the time this process trained (a resumed run: since resuming)."""
    finals = history[history.quantity == "error"].groupby("split").value.last().to_dict()
    data = data_meta(
        train_set,
        image_shape=[train_set.channels, train_set.image_size, train_set.image_size],
        train_images=len(train_set),
        **{f"{split}_images": len(d) for split, d in evaluation.items()},
    )
    return run_meta(
        _config_dict(config),
        data,
        time.perf_counter() - started,
        final_error_percent=finals,
        world_size=world.size,
        max_weight_difference_across_ranks=weights_spread(run.core, world),
        device=str(world.device),
        resumed_from_iteration=run.resumed_from,
        milestone_iterations=config.milestone_iterations(),
    )
