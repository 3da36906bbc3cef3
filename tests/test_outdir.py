"""Output folders: gradflow replaces only what it wrote, one writer at a time, no leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradflow import io as gio
from gradflow import outdir
from gradflow.errors import UserInputError


def dead_pid() -> int:
    """The pid of a process that has exited (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def gradflow_report(folder: Path) -> Path:
    folder.mkdir(parents=True)
    outdir.mark(folder, "analysis-report")
    (folder / "report.html").write_text("<html>old</html>")
    return folder


def test_new_and_empty_targets_are_accepted(tmp_path):
    outdir.check_target(tmp_path / "new" / "deeper", "analysis-report", force=False)
    (tmp_path / "empty").mkdir()
    outdir.check_target(tmp_path / "empty", "analysis-report", force=False)


def test_a_users_folder_is_refused_even_with_force(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UserInputError, match=r"did not write.*even with --force"):
        outdir.check_target(mine, "analysis-report", force=True)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_the_working_directory_is_refused_with_force(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserInputError, match="did not write"):
        outdir.check_target(Path("."), "analysis-report", force=True)


def test_gradflows_own_report_needs_force(tmp_path):
    old = gradflow_report(tmp_path / "report")
    with pytest.raises(UserInputError, match="pass --force"):
        outdir.check_target(old, "analysis-report", force=False)
    outdir.check_target(old, "analysis-report", force=True)


def test_a_run_folder_is_not_a_report_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    outdir.mark(run, "train-run")
    (run / "final.pt").write_bytes(b"weights")
    with pytest.raises(UserInputError, match="did not write"):
        outdir.check_target(run, "analysis-report", force=True)


def test_a_forged_marker_is_not_gradflows(tmp_path):
    folder = tmp_path / "forged"
    folder.mkdir()
    (folder / outdir.MARKER).write_text('{"kind": "analysis-report"}')
    (folder / "data.csv").write_text("1")
    assert outdir.owner_kind(folder) is None
    (folder / outdir.MARKER).write_text("not json")
    assert outdir.owner_kind(folder) is None


def test_a_file_or_a_file_parent_is_refused_before_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        outdir.check_target(afile, "analysis-report", force=False)
    with pytest.raises(UserInputError, match="is a file"):
        outdir.check_target(afile / "report", "analysis-report", force=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_parent_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserInputError, match="not writable"):
            outdir.check_target(locked / "report", "analysis-report", force=False)
    finally:
        locked.chmod(0o755)


def test_one_lock_holder_at_a_time(tmp_path):
    out = tmp_path / "report"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / f".report{outdir.LOCK_SUFFIX}"
        lock.write_text(f"{holder.pid}\n")
        with (
            pytest.raises(UserInputError, match=rf"pid {holder.pid}\) is writing"),
            outdir.output_lock(out),
        ):
            pass
        assert lock.read_text().strip() == str(holder.pid), "the holder's lock must stay"
    finally:
        holder.kill()
        holder.wait()
    with outdir.output_lock(out):  # the holder is gone: its lock is taken over
        with outdir.output_lock(out):  # nested in the same process: passes through
            assert lock.read_text().strip() == str(os.getpid())
        assert lock.exists(), "the nested call must not release the outer lock"
    assert not lock.exists()


def test_a_dead_processes_lock_is_taken_over(tmp_path):
    out = tmp_path / "report"
    lock = tmp_path / f".report{outdir.LOCK_SUFFIX}"
    lock.write_text(f"{dead_pid()}\n")
    with outdir.output_lock(out):
        assert lock.read_text().strip() == str(os.getpid())


def test_stale_staging_of_dead_processes_is_removed(tmp_path):
    out = tmp_path / "report"
    dead = tmp_path / f".report{outdir.STAGING_INFIX}{dead_pid()}"
    dead.mkdir()
    outdir.mark(dead, "analysis-report")
    (dead / "half.png").write_bytes(b"\x89PNG")
    live = tmp_path / f".report{outdir.STAGING_INFIX}{os.getppid()}"
    live.mkdir()
    outdir.mark(live, "analysis-report")
    foreign = tmp_path / f".report{outdir.STAGING_INFIX}{dead_pid()}x"
    foreign.mkdir()
    (foreign / "keep").write_text("not a staging folder of ours")
    assert outdir.remove_stale_staging(out) == [dead]
    assert live.exists() and foreign.exists()


def test_publish_replaces_only_gradflows_report(tmp_path):
    out = gradflow_report(tmp_path / "report")
    staging = outdir.staging_dir(out, "analysis-report")
    (staging / "report.html").write_text("<html>new</html>")
    outdir.publish(staging, out, "analysis-report", force=True)
    assert (out / "report.html").read_text() == "<html>new</html>"
    assert outdir.owner_kind(out) == "analysis-report"
    assert not staging.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report"], "no staging or aside left"


def test_publish_rechecks_a_target_that_changed_during_the_run(tmp_path):
    out = tmp_path / "report"
    staging = outdir.staging_dir(out, "analysis-report")
    out.mkdir()
    (out / "user.txt").write_text("created meanwhile")
    with pytest.raises(UserInputError, match="did not write"):
        outdir.publish(staging, out, "analysis-report", force=True)
    assert (out / "user.txt").read_text() == "created meanwhile"


def test_run_folder_refuses_foreign_files_and_marks_new_ones(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "meta.json").write_text("{}")
    with pytest.raises(UserInputError, match="did not write"):
        outdir.prepare_run_folder(foreign)
    new = tmp_path / "new"
    outdir.prepare_run_folder(new)
    assert outdir.owner_kind(new) == "train-run"
    (new / "history.csv").write_text("step")
    outdir.prepare_run_folder(new)  # gradflow's own: accepted again


def test_a_legacy_run_folder_is_recognised_by_its_files_alone(tmp_path):
    legacy = tmp_path / "plain20-he-cfe3211ce15f"
    legacy.mkdir()
    (legacy / "key.json").write_text("{}")
    (legacy / "checkpoint.pt").write_bytes(b"weights")
    (legacy / f".history.csv{gio.TEMP_INFIX}x.tmp").write_text("half")
    outdir.prepare_run_folder(legacy)
    assert outdir.owner_kind(legacy) == "train-run"
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "key.json").write_text("{}")
    (tmp_path / "mixed" / "notes.md").write_text("mine")
    with pytest.raises(UserInputError, match="did not write"):
        outdir.prepare_run_folder(tmp_path / "mixed")


def test_stale_temporaries_are_only_gradflows(tmp_path):
    with gio.atomic_path(tmp_path / "history.csv") as tmp:
        assert tmp.name.startswith(f".history.csv{gio.TEMP_INFIX}")
        tmp.write_text("a,b")
    ours = tmp_path / f".history.csv{gio.TEMP_INFIX}k1ll3d.tmp"
    ours.write_text("half")
    users = tmp_path / ".my-editor-swap.tmp"
    users.write_text("unsaved work")
    assert gio.remove_stale_temporaries(tmp_path) == [ours]
    assert users.read_text() == "unsaved work"
