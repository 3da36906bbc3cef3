"""What a careless or hostile user can do to the CLI: no code run from a file, no user file
lost, one writer per report folder, errors before the work."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import TINY, assert_user_error, gradflow

from gradflow import outdir

FAST = [*TINY[:-3], "--depths", "1", "--quiet"]


class _Payload:
    """Unpickling this runs ``touch <path>``: what a crafted checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_force_never_replaces_a_users_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    result = gradflow("analyze", "--model", "resnet8", *FAST, "--out", str(mine), "--force")
    assert_user_error(result, "did not write", "even with --force")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_force_never_replaces_the_working_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    result = gradflow("analyze", "--model", "resnet8", *FAST, "--out", ".", "--force", cwd=tmp_path)
    assert_user_error(result, "did not write")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_force_replaces_gradflows_own_report_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "report"
    assert gradflow("analyze", "--model", "resnet8", *FAST, "--out", str(out)).returncode == 0
    assert outdir.owner_kind(out) == "analysis-report"
    stale = tmp_path / f".report{outdir.STAGING_INFIX}999999999"  # a SIGKILLed save
    stale.mkdir()
    outdir.mark(stale, "analysis-report")
    (stale / "half.png").write_bytes(b"\x89PNG")
    again = gradflow("analyze", "--model", "resnet20", *FAST, "--out", str(out), "--force")
    assert again.returncode == 0, again.stderr
    summary = pd.read_csv(out / "data" / "summary.csv")
    assert list(summary["model"]) == ["resnet20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"], "staging or lock left"


def test_two_runs_on_one_folder_exactly_one_wins(tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "gradflow", "analyze", "--model", "resnet8", *FAST]
    runs = [
        subprocess.Popen(
            [*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is writing" in loser or "earlier gradflow analysis report" in loser, loser
    assert "Traceback" not in loser
    assert (out / "report.html").exists()


def test_a_held_lock_stops_a_second_run_before_its_work(tmp_path):
    out = tmp_path / "report"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / f".report{outdir.LOCK_SUFFIX}").write_text(f"{holder.pid}\n")
        result = gradflow("analyze", "--model", "resnet8", *FAST, "--out", str(out))
    finally:
        holder.kill()
        holder.wait()
    assert_user_error(result, f"pid {holder.pid}", "is writing")
    assert result.stdout == "" and not out.exists()


def test_an_unusable_out_is_refused_before_the_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = gradflow("analyze", "--model", "resnet8", *FAST, "--out", str(afile / "report"))
    assert_user_error(result, "is a file")
    assert result.stdout == ""


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    evil, ran = tmp_path / "evil.pt", tmp_path / "payload-ran"
    evil.write_bytes(pickle.dumps({"model": _Payload(ran)}))
    out = tmp_path / "report"
    result = gradflow(
        "analyze", "--model", "resnet8", *FAST, "--checkpoint", str(evil), "--out", str(out)
    )
    assert_user_error(result, "cannot load checkpoint", str(evil))
    assert not ran.exists(), "unpickling the checkpoint ran code"
    assert not out.exists()


def test_a_train_checkpoint_loads_into_analyze(tmp_path):
    run = tmp_path / "run"
    trained = gradflow(
        "train", "--model", "resnet8", "--data", "synthetic", "--synthetic-size", "64",
        "--iterations", "2", "--batch-size", "8", "--eval-every", "2", "--out", str(run), "--quiet",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "report"
    result = gradflow(
        "analyze",
        "--model",
        "resnet8",
        *FAST,
        "--checkpoint",
        str(run / "final.pt"),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "resnet8" in pd.read_csv(out / "data" / "summary.csv")["model"].tolist()


def test_train_refuses_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "meta.json").write_text('{"mine": true}')
    (mine / ".draft.tmp").write_text("unsaved")
    result = gradflow(
        "train", "--model", "resnet8", "--data", "synthetic", "--iterations", "1",
        "--out", str(mine), "--quiet",
    )  # fmt: skip
    assert_user_error(result, "did not write")
    assert (mine / "meta.json").read_text() == '{"mine": true}'
    assert (mine / ".draft.tmp").read_text() == "unsaved"


@pytest.mark.parametrize("payload", [b"not a checkpoint", None])
def test_a_bad_run_cache_file_is_one_line(tmp_path, payload):
    from gradflow.configs import TrainConfig
    from gradflow.errors import UserInputError
    from gradflow.experiments.run_cache import cached_run, run_dir

    config = TrainConfig(model="resnet8", data="synthetic", iterations=1)
    folder = run_dir(config, tmp_path)
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text('{"data": {"image_shape": [3, 32, 32]}}')
    (folder / "history.parquet").write_bytes(pd.DataFrame({"step": [1]}).to_parquet())
    ran = tmp_path / "payload-ran"
    data = payload if payload is not None else pickle.dumps({"model": _Payload(ran)})
    (folder / "final.pt").write_bytes(data)
    with pytest.raises(UserInputError, match="cannot load checkpoint"):
        cached_run(config, tmp_path)
    assert not ran.exists()
