"""Training: the schedule, frames, outputs, user errors, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from gradflow.cli import main
from gradflow.errors import UserInputError
from gradflow.train import CRASH_ENV, TrainConfig, learning_rate, train

TINY = dict(
    model="resnet8",
    synthetic_size=128,
    synthetic_image_size=8,
    batch_size=16,
    eval_batch_size=1000,
    progress=False,
)
TINY_ARGS = [
    "--model",
    "resnet8",
    "--synthetic-size",
    "256",
    "--synthetic-image-size",
    "8",
    "--batch-size",
    "16",
    "--quiet",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids pool wake-ups costing 50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_schedule_divides_lr_at_half_and_three_quarters_of_the_budget():
    config = TrainConfig(iterations=64_000)
    assert config.milestone_iterations() == [32_000, 48_000]  # the paper's
    lrs = [learning_rate(config, i) for i in (0, 31_999, 32_000, 47_999, 48_000, 63_999)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)
    assert learning_rate(config, 50_000, warming_up=True) == 0.01
    absolute = TrainConfig(iterations=100, milestones=(30, 60), lr=0.2, lr_decay=0.5)
    assert [learning_rate(absolute, i) for i in (29, 30, 60)] == [0.2, 0.1, 0.05]


def test_train_logs_tidy_history_and_recorder_frames():
    config = TrainConfig(**TINY, iterations=12, eval_every=4, record_every=5, val_size=16)
    result = train(config)
    history = result.history
    assert list(history.columns) == ["model", "step", "split", "quantity", "value"]
    assert sorted(history.step.unique()) == [4, 8, 12]
    assert set(history.split) == {"train", "val", "test"}
    errors = history[history.quantity == "error"].value
    assert ((errors >= 0) & (errors <= 100)).all()
    lr = history[history.quantity == "lr"].set_index("step").value
    assert lr.to_dict() == pytest.approx({4: 0.1, 8: 0.01, 12: 0.001})  # milestones 6, 9
    records = result.records
    assert sorted(records.step.unique()) == [0, 5, 10]  # the iterations it ran on
    assert {"response_std", "param_grad_norm", "update_ratio"} <= set(records.quantity)
    assert (records.model == "resnet8").all()
    assert result.meta["data"]["synthetic"] and result.meta["data"]["val_images"] == 16


def test_warmup_holds_the_low_lr_until_the_error_threshold_or_the_budget():
    # warmup_error=0: no batch error is below 0%, so warm-up lasts its full 3 iterations
    held = TrainConfig(
        **TINY,
        iterations=6,
        eval_every=1,
        record_every=0,
        milestones=(100,),  # beyond the budget: only the warm-up changes the lr
        warmup_iterations=3,
        warmup_error=0.0,
    )
    lrs = train(held).history.query("quantity == 'lr'").value.tolist()
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.1, 0.1, 0.1])
    # warmup_error=101: the first batch is already below it, so only iteration 0 warms up
    short = TrainConfig(**{**vars(held), "warmup_error": 101.0})
    lrs = train(short).history.query("quantity == 'lr'").value.tolist()
    assert lrs == pytest.approx([0.01, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_cli_writes_every_output_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY_ARGS, "--iterations", "4", "--eval-every", "2", "--record-every", "2"]
    assert main([*args, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        ".gradflow-output",  # the marker: a folder gradflow wrote (gradflow.outdir)
        "checkpoint.pt",
        "final.pt",
        "meta.json",
        "history.csv",
        "history.parquet",
        "records.csv",
        "records.parquet",
    }
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data"]["description"].startswith("synthetic") and meta["world_size"] == 1
    history = pd.read_parquet(out / "history.parquet")
    pd.testing.assert_frame_equal(history, pd.read_csv(out / "history.csv"), check_exact=False)
    assert main([*args, "--out", str(out)]) == 2  # a run is there already
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert "lr: 0.1 -> 0.5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, message",
    [
        (["--iterations", "0"], "iterations must be at least 1"),
        (["--batch-size", "1000"], "larger than the 256 training images"),
        (["--model", "resnet9"], "6n+2"),
        (["--init", "magic"], "unknown init"),
        (["--resume"], "--resume needs --out"),
        (["--lr", "1e9", "--iterations", "3", "--eval-every", "3"], "diverged"),
    ],
)
def test_user_errors_exit_2_with_a_message(option, message, capsys):
    code = main(["train", *TINY_ARGS, "--record-every", "0", *option])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def _run(out, iterations, resume=False, crash=None, every=(20, 25, 10)):
    """``gradflow train`` in a subprocess; ``every``: eval, record and checkpoint intervals."""
    args = [*TINY_ARGS, "--iterations", str(iterations), "--out", str(out)]
    for option, interval in zip(("--eval-every", "--record-every", "--checkpoint-every"),
                                every, strict=True):  # fmt: skip
        args += [option, str(interval)]
    command = [sys.executable, "-m", "gradflow", "train", *args, *(["--resume"] if resume else [])]
    # One thread in every run: the same kernels in the same order give the same bits.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash  # the trainer SIGKILLs itself there: no timing involved
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_ends_bit_identical(tmp_path):
    iterations = 40  # logs at 20 and 40, records at 0 and 25: before and after the kill
    straight = _run(tmp_path / "straight", iterations)
    # killed after the SGD step of iteration 15: 5 steps past the checkpoint of 10 are lost
    killed = _run(tmp_path / "killed", iterations, crash="iteration:15")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 10
    # a kill during a checkpoint write leaves atomic_path's temporary: plant one
    for name in ("checkpoint.pt", "history.parquet"):
        (tmp_path / "killed" / f".{name}.gradflow-k1ll3d.tmp").write_bytes(b"half a file")
    resumed = _run(tmp_path / "killed", iterations, resume=True)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert not list((tmp_path / "killed").glob(".*.tmp")), "stale temporaries were left"
    assert straight.wait() == 0, straight.stderr.read()

    final = [
        torch.load(tmp_path / d / "final.pt", weights_only=True)["model"]
        for d in ("straight", "killed")
    ]
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name  # exact, not close
    for frame in ("history", "records"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "straight" / f"{frame}.parquet"),
            pd.read_parquet(tmp_path / "killed" / f"{frame}.parquet"),
            check_exact=True,
        )
    meta = json.loads((tmp_path / "killed" / "meta.json").read_text())
    assert meta["resumed_from_iteration"] == 10


def test_crash_hook_kills_right_after_a_checkpoint_and_refuses_a_bad_value(tmp_path, monkeypatch):
    out = tmp_path / "run"
    killed = _run(out, 6, crash="checkpoint:4", every=(2, 0, 2))
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 4
    assert pd.read_parquet(out / "history.parquet").step.max() == 4  # frames written too
    assert not (out / "final.pt").exists()
    monkeypatch.setenv(CRASH_ENV, "teatime:3")
    with pytest.raises(UserInputError, match="PHASE:STEP"):
        train(TrainConfig(**TINY, iterations=2, eval_every=2, record_every=0))


def test_checkpoint_holds_what_exact_resume_needs(tmp_path):
    config = TrainConfig(**TINY, iterations=3, eval_every=2, record_every=0, out_dir=str(tmp_path))
    train(config)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 and state["optimizer"]["state"]  # momentum buffers
    assert {"model", "rng_cpu", "interval", "history", "warming_up", "config"} <= set(state)
    with pytest.raises(UserInputError, match="not a gradflow training checkpoint"):
        torch.save({"weights": 1}, tmp_path / "checkpoint.pt")
        train(TrainConfig(**{**vars(config), "resume": True}))


def test_cli_prints_the_final_errors_and_the_data(capsys):
    args = [a for a in TINY_ARGS if a != "--quiet"]
    assert (
        main(["train", *args, "--iterations", "2", "--eval-every", "2", "--record-every", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert "resnet8 after 2 iterations: error" in out and "data: synthetic" in out
