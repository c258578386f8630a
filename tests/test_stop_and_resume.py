"""SIGTERM mid-training and divergence through the command line, in real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from funetgan.training import checkpoint

LOG_EVERY_STEP = ["--set", "log_every=1"]


def funetgan(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "funetgan", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


def logged_steps(run) -> list[int]:
    path = run / "log.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(texture_dataset, tmp_path, tiny_args):
    run = tmp_path / "run"
    process = funetgan(
        "train",
        "--data",
        str(texture_dataset),
        "--out",
        str(run),
        *tiny_args,
        *LOG_EVERY_STEP,
        "--set",
        "gan.iterations=100000",
    )
    deadline = time.monotonic() + 120
    while len(logged_steps(run)) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    message = err.strip().splitlines()[-1]
    assert message.startswith("funetgan: stopped by SIGTERM at gan step ") and "Traceback" not in err
    assert message.endswith(f"continue with: funetgan train --data {texture_dataset} --out {run} --resume")
    stopped_at = int(message.split("gan step ")[1].split(";")[0])
    _, meta = checkpoint.load(run / "checkpoint.safetensors")
    assert meta["state"]["stage"] == "gan" and meta["state"]["step"] == stopped_at == logged_steps(run)[-1]

    # Resume with the rest of stage 1's budget set to nothing: stage 2, calibration, model.
    resumed = funetgan(
        "train",
        "--data",
        str(texture_dataset),
        "--out",
        str(run),
        "--resume",
        "--device",
        "cpu",
        "--set",
        "gan.max_minutes=0",
    )
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert (run / "model.safetensors").exists() and "trained in" in out
    steps = logged_steps(run)
    assert steps[:stopped_at] == list(range(1, stopped_at + 1)) and steps[stopped_at:] == [1, 2]  # then stage 2


def test_a_diverging_run_stops_early_in_one_line_and_keeps_a_finite_checkpoint(texture_dataset, tmp_path, tiny_args):
    run = tmp_path / "run"
    process = funetgan(
        "train",
        "--data",
        str(texture_dataset),
        "--out",
        str(run),
        *tiny_args,
        *LOG_EVERY_STEP,
        "--set",
        "gan.iterations=200",
        "--set",
        "gan.lr_d=1e3",
        "--set",
        "gan.lr_g=1e3",
    )
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2
    message = err.strip().splitlines()[-1]
    assert message.startswith("funetgan: error: training diverged in stage gan at step ") and "Traceback" not in err
    assert "lower gan.lr_d and gan.lr_g" in message
    assert logged_steps(run)[-1] < 50  # caught within a few steps, not at the end of the budget
    tensors, _ = checkpoint.load(run / "checkpoint.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert not (run / "model.safetensors").exists()
