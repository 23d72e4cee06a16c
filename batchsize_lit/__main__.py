"""`python -m batchsize_lit` and `batchsize-lit`: the fit, validate, test and predict subcommands, or the study."""

import gc
import itertools
import os
import signal
import sys
import threading

RUNS = ("fit", "validate", "test", "predict", "study")


def starting_line(argv: list[str]) -> str | None:
    """What a run or a study shows while Lightning is imported: its subcommand and config files.

    Nothing for help or a printed config, which have no run to announce.
    """
    flags = {arg.split("=", 1)[0] for arg in argv}
    if not argv or argv[0] not in RUNS or flags & {"-h", "--help", "--print_config"}:
        return None
    configs = []
    for flag, value in itertools.pairwise([*argv, ""]):
        if flag in ("--config", "-c") or flag.startswith("--config="):
            configs.append(flag.removeprefix("--config=") if flag.startswith("--config=") else value)
    named = f" ({', '.join(configs)})" if configs else ""
    return f"starting {argv[0]}{named}: importing Lightning ..."


def show(text: str | None) -> int:
    """Write ``text`` to stderr at once where stderr is a terminal, without a newline; return how wide it is.

    Only a terminal has a person waiting at it for the seconds of the import; piped or redirected output gets nothing,
    so a log file and a bad input's one error line stay as they were. The processes a command starts itself (DDP's
    other ranks, the study's spawned workers, which import this module again with the same arguments) show nothing.
    """
    try:
        if text is None or not sys.stderr.isatty() or os.environ.get("LOCAL_RANK", "0") != "0":
            return 0
        import multiprocessing  # here, not at the top: only a terminal needs it, and torch imports it anyway

        if multiprocessing.parent_process() is not None:
            return 0
        sys.stderr.write(text)
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):  # no stderr, or a closed one
        return 0
    return len(text)


def clear(width: int) -> None:
    """Blank the line ``show`` wrote, so that the command's own output starts on a clean line."""
    if width:
        sys.stderr.write("\r" + " " * width + "\r")
        sys.stderr.flush()


def terminated_while_importing(signum: int, frame: object) -> None:
    """SIGTERM during the import: nothing has started, so the process ends at once, as it would once running."""
    clear(shown)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        os.write(2, b"terminated: stopped by SIGTERM before training started; nothing to resume\n")
    os._exit(128 + signum)


# A line at once, before the seconds of Lightning's import: the command was taken. It gives way to the first line of
# the command's own output.
shown = show(starting_line(sys.argv[1:]))
# SIGTERM during the import would otherwise end the process silently, by the signal, and not with the 143 and the line
# that it gets a moment later. Not in a study's spawned worker (__mp_main__), which sets its own handler.
importing = threading.current_thread() is threading.main_thread() and __name__ != "__mp_main__"
previous_sigterm = signal.signal(signal.SIGTERM, terminated_while_importing) if importing else None
# Importing Lightning creates about a million objects that live until the process ends. Collecting garbage among
# them is wasted time: none while they are imported, and then they are frozen, out of every later collection,
# the one at exit included (together about 1.5 s of each command on a 2-core machine).
gc.disable()
try:
    from batchsize_lit.cli import BatchSizeCLI
    from batchsize_lit.errors import run_or_exit
    from batchsize_lit.problems.regression import LinearRegressor, RegressionDataModule
except KeyboardInterrupt:  # Ctrl-C while Lightning is imported: nothing has started
    clear(shown)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        os.write(2, b"interrupted before training started; nothing to resume\n")  # print can fail mid-import
    sys.exit(130)
finally:
    if importing:
        signal.signal(signal.SIGTERM, previous_sigterm or signal.SIG_DFL)
gc.freeze()
gc.enable()
clear(shown)

# The default problem, which a config that names no model or data runs: the one place a fork names its own classes
# (and the import above). Nothing else in the package imports batchsize_lit.problems.
DEFAULT_MODEL, DEFAULT_DATA = LinearRegressor, RegressionDataModule


def main(args: list[str] | None = None) -> None:
    """Entry point: ``study ...`` runs a grid of fits; anything else goes to the LightningCLI."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["study"]:
        from batchsize_lit.study import run_command

        return run_or_exit(lambda: run_command(argv[1:], DEFAULT_MODEL, DEFAULT_DATA))
    run_or_exit(lambda: BatchSizeCLI(DEFAULT_MODEL, DEFAULT_DATA, args=args) and None)


if __name__ == "__main__":
    main()
