"""One writer per folder, checked with real processes."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from funetgan.cli import main
from funetgan.runlock import FolderLocked, folder_lock

HOLD = (
    "import sys, time; from funetgan.runlock import folder_lock\n"
    "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """A separate process holding tmp_path/'run''s lock until the test ends (or kills it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_a_second_process_is_refused_with_the_holders_pid_host_and_time(tmp_path, holder):
    expected = rf"in use by another funetgan process \(pid {holder.pid} on .+ since 20"
    with pytest.raises(FolderLocked, match=expected), folder_lock(tmp_path / "run"):
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with folder_lock(tmp_path / "run"):
        assert f"pid {os.getpid()} " in (tmp_path / "run" / ".funetgan.lock").read_text()


def test_the_lock_is_released_when_the_block_ends(tmp_path):
    with folder_lock(tmp_path):
        pass
    with folder_lock(tmp_path):
        pass


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--data", "{tmp}/data", "--out", "{tmp}/run", "--resume"],
        ["train", "--data", "{tmp}/data", "--out", "{tmp}/run", "--overwrite"],
        ["test", "--run", "{tmp}/model", "--data", "{tmp}/data", "--out", "{tmp}/run"],
        ["predict", "--run", "{tmp}/model", "--out", "{tmp}/run", "{tmp}/x.png"],
    ],
)
def test_commands_refuse_a_locked_folder_in_one_line(command, tmp_path, holder, capsys, monkeypatch):
    from funetgan.config import Config
    from funetgan.model import FUNetGAN  # what the commands load (imported by them on first use)

    # A stand-in for a loaded model (its settings only): the lock is taken before any work.
    monkeypatch.setattr(FUNetGAN, "load", lambda *a, **k: SimpleNamespace(config=Config()))
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")  # something to resume
    (tmp_path / "run" / "log.jsonl").write_text("")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert main([a.replace("{tmp}", str(tmp_path)) for a in command]) == 2
    err = capsys.readouterr().err.strip()
    assert f"pid {holder.pid}" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # nothing removed or written
