"""The loop every training stage runs (`Stage`): steps within a step count and a time
budget, a progress bar, log lines, periodic samples and checkpoints, a stop between two steps
on SIGTERM or SIGINT, and a stop when losses or weights stop being finite. What a step does
is the trainer's (`trainer.Trainer`), which this loop sees as a `StageHost`."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm  # a widget in a notebook, a text bar elsewhere

from ..config import Config
from ..errors import TrainingStopped
from ..runtime import Runtime
from .state import TrainingState


class StopSignals:
    """While a stage runs, SIGTERM (what Slurm and Kubernetes send before killing a job) and
    SIGINT (Ctrl-C) are noted rather than acted on, so the loop stops between two steps and
    saves a checkpoint. A second signal gets the usual behaviour (a second Ctrl-C interrupts
    at once). Signal handlers exist only in the main thread; elsewhere nothing changes."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> StopSignals:
        self.received = 0
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def _note(self, signum: int, frame) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __exit__(self, *exc) -> None:
        self._restore()


class StageHost(Protocol):
    """What the loop needs of the trainer: where training stands, the settings (log and
    checkpoint steps), the processes, and its log, checkpoint and finiteness checks."""

    state: TrainingState
    config: Config
    runtime: Runtime
    run_dir: Path | None
    progress: bool  # progress bars and budget notes shown

    def log(self, record: dict) -> None: ...

    def checkpoint(self) -> None: ...

    def finite_weights(self) -> bool: ...

    def diverged(self, what: str) -> Exception: ...


class Stage:
    """Runs `step_fn(step) -> stats` from the saved step to `total`, within `max_minutes`
    (time already spent before a resume counts), with a progress bar, a JSONL log, periodic
    samples and checkpoints. SIGTERM or SIGINT (on any process) stops every process after the
    same step, with a checkpoint. Non-finite losses or weights, checked at each log step, stop
    training with `TrainingDiverged`.

    A single process checks the budget and signals after every step, which costs nothing.
    Processes under torchrun must agree, by a collective whose result the host waits for: they
    do so at the stage's start and after each log step (`log_every`), which waits for the
    device anyway, so the steps between never make the host wait; a budget or signal then
    stops training up to `log_every` steps later."""

    BUDGET = 1  # reasons to stop; a signal's number (2, 15) outranks the budget across ranks

    def __init__(self, name: str, total: int, max_minutes: float | None, trainer: StageHost):
        self.name, self.total, self.max_minutes, self.trainer = name, total, max_minutes, trainer

    def run(self, step_fn: Callable[[int], dict[str, torch.Tensor]], sample_fn: Callable[[int], None]) -> None:
        t = self.trainer
        state = t.state
        cfg = t.config
        start, spent = state.step, state.seconds
        began = time.monotonic()
        # Under a time budget the step count is rarely reached: show steps and rate, not an ETA.
        timed = self.max_minutes is not None
        bar = tqdm(
            total=None if timed else self.total,
            initial=start,
            disable=not (t.runtime.is_main and t.progress),
            desc=f"{self.name} (budget {self.max_minutes:.3g} min)" if timed else self.name,
            dynamic_ncols=True,
            leave=True,
        )
        step = start
        with StopSignals() as signals, contextlib.closing(bar):
            while step < self.total:
                if t.runtime.distributed and step != start and step % cfg.log_every:
                    stop = 0  # processes agree on stopping only where they log (see below)
                else:
                    elapsed = spent + time.monotonic() - began
                    over_budget = self.max_minutes is not None and elapsed >= 60 * self.max_minutes
                    stop = t.runtime.max_rank(signals.received or (self.BUDGET if over_budget else 0))
                if stop == self.BUDGET:
                    if not bar.disable:
                        bar.write(f"{self.name}: time budget of {self.max_minutes:.3g} min reached at step {step}")
                    break
                if stop:
                    t.checkpoint()
                    saved = f"checkpoint saved in {t.run_dir}" if t.run_dir is not None else "no run folder"
                    raise TrainingStopped(
                        f"stopped by {signal.Signals(stop).name} at {self.name} step {step}; {saved}", stop
                    )
                stats = step_fn(step)
                step += 1
                state.step, state.seconds = step, spent + time.monotonic() - began
                bar.update(1)
                if step % cfg.log_every == 0 or step == self.total:
                    values = {k: round(float(v), 5) for k, v in stats.items()}
                    bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
                    t.log({"stage": self.name, "step": step, "seconds": round(state.seconds, 2), **values})
                    self.check_finite(values)
                if step % cfg.checkpoint_every == 0:
                    sample_fn(step)
                    t.checkpoint()
        if step > start:
            sample_fn(step)

    def check_finite(self, losses: dict[str, float]) -> None:
        """Raise `TrainingDiverged` on every process when a loss (on any) or a weight is not finite."""
        t = self.trainer
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        bad += [] if t.finite_weights() else ["weights"]
        if t.runtime.any_rank(bool(bad)):
            raise t.diverged(", ".join(bad) or "losses on another process")
