"""`funetgan-torchrun` (or `python -m funetgan.commands.launch`): torchrun, same arguments, whose stop by
a signal ends in one line and the ranks' exit status instead of a traceback.

On SIGTERM or SIGINT, torchrun (torch.distributed.run) forwards the signal to every rank, waits
for them (`--shutdown-timeout`, TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 30 s, then SIGKILL) and
then raises its own `SignalException`: a traceback and exit status 1, however cleanly the ranks
stopped. funetgan's ranks stop after the same step, rank 0 saves a checkpoint and says so, and
each exits 128 + the signal's number; torchrun reports ranks that exit so as failed
(`ChildFailedError`) when the signal went to them rather than to it. Here both end in one line
and 128 + the signal's number, as a single process's stop does. Anything else is torchrun's
own report, unchanged.
"""

from __future__ import annotations

import signal
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

# What a rank exits with after a stop by one of the signals training handles (stages.StopSignals).
STOPPED = {128 + signal.SIGTERM: signal.SIGTERM, 128 + signal.SIGINT: signal.SIGINT}


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun.main(argv)
    except SignalException as err:
        return stopped(signal.Signals(err.sigval), "torchrun got", "passed it to every rank")
    except ChildFailedError as err:
        codes = {failure.exitcode for failure in err.failures.values()}
        if not codes <= set(STOPPED):
            raise
        return stopped(STOPPED[max(codes)], "a rank got", "every rank stopped")
    return 0


def stopped(signum: signal.Signals, got: str, then: str) -> int:
    print(
        f"funetgan-torchrun: {got} {signum.name} and {then} (rank 0's line above says whether it saved "
        f"a checkpoint to resume from)",
        file=sys.stderr,
    )
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
