"""SIGTERM (a time limit, a preemption, an eviction): stop at a step boundary, save last.ckpt there, exit 143."""

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

from batchsize_lit.requeue import slurm_job

# The exit status of a process ended by SIGTERM (128 + 15): what schedulers and shells count as "terminated".
SIGTERM_STATUS = 128 + signal.SIGTERM
# And of one ended by Ctrl-C (128 + 2), whether Lightning stopped a fit for it or Python did.
INTERRUPTED_STATUS = 128 + signal.SIGINT

# Lightning logs "[rank: 0] Received SIGTERM: 15" as the signal arrives (and, under SLURM's auto-requeue, "Bypassing
# SIGTERM: 15"); the one line printed on stopping says more.
logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(
    lambda record: not any(text in str(record.msg) for text in ("Received SIGTERM", "Bypassing SIGTERM"))
)


class Terminated(BaseException):
    """SIGTERM outside a fit. A BaseException, as KeyboardInterrupt is, so that no `except Exception` swallows it."""


def save_at_sigterm(trainer: "pl.Trainer", dirpath: str | None, name: str, weights_only: bool = False) -> str | None:
    """Write ``name`` in ``dirpath`` at the step where Lightning stopped for SIGTERM, and return its path.

    Lightning raises SIGTERMException at the end of a training step (or epoch), after the step's progress is
    counted, so the checkpoint resumes at the next step. None where there is nowhere to write, or nothing trained.
    """
    if not dirpath or trainer.sanity_checking or trainer.state.fn != "fit" or trainer.global_step == 0:
        return None
    path = os.path.join(dirpath, name)
    trainer.save_checkpoint(path, weights_only)  # atomic where the checkpoint IO is the template's (AtomicCheckpointIO)
    return path


def stopped_line(trainer: "pl.Trainer", path: str | None) -> str:
    """The one line a fit stopped by SIGTERM prints: where it stopped and what to resume from."""
    where = f"in epoch {trainer.current_epoch + 1} at step {trainer.global_step}"
    if path is None:
        return f"Stopped by SIGTERM {where}: no checkpoint was written, nothing to resume from"
    job = slurm_job()  # a requeued job reruns its script: the same command finds this run (see requeue.py)
    requeued = f" (the same command in SLURM job {job}, requeued, resumes it too)" if job else ""
    resume = f"resume with --ckpt_path last{requeued}"
    return f"Stopped by SIGTERM {where}: {path} holds step {trainer.global_step}; {resume}"


def is_sigterm(exception: BaseException) -> bool:
    return isinstance(exception, SIGTERMException)


class SigtermWatch:
    """SIGTERM in this process outside a fit raises Terminated at once (parsing, building the data, between a
    study's cells). During a fit Lightning's own handler is installed and calls this one after it: the fit stops at
    the next step, and ``received`` tells a study to stop after recording the cell."""

    def __init__(self) -> None:
        self.received = False

    def handle(self, signum: int, frame: Any) -> None:
        self.received = True
        if signal.getsignal(signal.SIGTERM) == self.handle:  # not called by Lightning's handler: no fit is running
            raise Terminated()

    def note(self, signum: int, frame: Any) -> None:
        self.received = True

    def note_only(self) -> Any:
        """From now on (in the main thread) SIGTERM is only noted in ``received``, for a loop that polls it; returns
        the handler to give back to restore(). For a wait in native code, which an exception out of a handler
        breaks (Ray's wait returns a SystemError), and after ray.init, whose own handler aborts the process."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, self.note)

    def restore(self, previous: Any) -> None:
        """Put back the SIGTERM handler note_only() replaced."""
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)

    @contextmanager
    def installed(self) -> Iterator["SigtermWatch"]:
        """This handler for SIGTERM while the block runs (in the main thread); the previous one after it."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.received = False
        previous = signal.signal(signal.SIGTERM, self.handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


WATCH = SigtermWatch()


def worker_sigterm(signum: int, frame: Any) -> None:
    """A study worker outside a fit ends at once: it holds no unsaved cell. In a fit, Lightning stops it."""
    WATCH.received = True
    if signal.getsignal(signal.SIGTERM) is worker_sigterm:
        sys.stderr.flush()
        os._exit(SIGTERM_STATUS)
