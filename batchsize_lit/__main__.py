"""`python -m batchsize_lit` and `batchsize-lit`: the fit, validate, test and predict subcommands, or the study."""

import gc
import sys

# Importing Lightning creates about a million objects that live until the process ends. Collecting garbage among
# them is wasted time: none while they are imported, and then they are frozen, out of every later collection,
# the one at exit included (together about 1.5 s of each command on a 2-core machine).
gc.disable()
try:
    from batchsize_lit.cli import BatchSizeCLI
    from batchsize_lit.data import RegressionDataModule
    from batchsize_lit.errors import run_or_exit
    from batchsize_lit.model import LinearRegressor
except KeyboardInterrupt:  # Ctrl-C while Lightning is imported: nothing has started
    sys.exit(130)
gc.freeze()
gc.enable()

# The problem a config that names no model or data runs: a fork puts its own classes here.
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
