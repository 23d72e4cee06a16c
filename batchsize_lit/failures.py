"""What a failed command raises: bad input as its one line, a fault of a running fit with its traceback kept."""

from dataclasses import dataclass
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.trainer.states import TrainerStatus

from batchsize_lit.errors import BAD_INPUT, BadInput
from batchsize_lit.rejections import rejected_setting


@dataclass
class Verdict:
    """How the CLI ends on an exception.

    Attributes:
        bad_input: Whether the input is to blame: then the run folder a new fit claimed is removed.
        raised: What to raise in the exception's place, from it; None to raise the exception itself.
    """

    bad_input: bool
    raised: Exception | None = None


def judge(cli: Any, error: Exception) -> Verdict:
    """Tell bad input from a fault.

    Bad input: what parsing, the classes' __init__ checks and the template's own checks reject, and what
    rejections.py recognizes among plain exceptions. Anything else that a running fit, validate, test or predict
    raises is a fault, a ValueError in a model's training_step included, and keeps its traceback.

    Args:
        cli: The BatchSizeCLI, as far as it was built.
        error: What it raised.
    """
    problem = rejected_setting(cli, error)
    if problem is not None:
        return Verdict(bad_input=True, raised=problem)
    if not isinstance(error, BAD_INPUT):
        return Verdict(bad_input=False)
    trainer = getattr(cli, "trainer", None)
    running = trainer is not None and trainer.state.status != TrainerStatus.INITIALIZING
    if not running or isinstance(error, BadInput | ArgumentError | MisconfigurationException):
        return Verdict(bad_input=True)
    folder = f"; the run folder {cli.log_dir} is kept" if cli.log_dir else ""
    return Verdict(
        bad_input=False, raised=RuntimeError(f"{cli.subcommand} failed at step {trainer.global_step}{folder}")
    )


def nothing_trained(cli: Any) -> bool:
    """Whether a command ended before a fit trained anything: a SIGTERM then leaves nothing in the run to keep.

    Args:
        cli: The BatchSizeCLI, as far as it was built.
    """
    trainer = getattr(cli, "trainer", None)
    return trainer is None or trainer.global_step == 0


def stopped_by_sigterm(cli: Any) -> str:
    """What a command that SIGTERM stopped outside a running step says: how far it got, and what to do next.

    Args:
        cli: The BatchSizeCLI, as far as it was built.
    """
    subcommand = getattr(cli, "subcommand", None)
    if subcommand not in (None, "fit"):
        return f"stopped by SIGTERM before {subcommand} finished; run it again"
    if nothing_trained(cli):
        return "stopped by SIGTERM before training started; nothing to resume"
    return (
        f"stopped by SIGTERM outside a training step; {cli.log_dir} holds the run as far as it went: --ckpt_path last"
        " resumes it (a finished run trains no more)"
    )
