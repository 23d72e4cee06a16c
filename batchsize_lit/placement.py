"""Where a command's run goes: best and last resolved, a requeued SLURM job's run continued, a new fit's version_N."""

import copy
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_only

from batchsize_lit import compat, requeue, runs

# The ckpt_path values that name no file of a run (Lightning's own) and so no run folder.
NO_RUN = (None, "best", "hpc", "registry")


@dataclass
class Placement:
    """Where a command's run is.

    Attributes:
        parent: The folder of this config's numbered runs; predictions of a checkpoint outside any run go there.
        run: The run folder of the checkpoint the command starts from, if any.
        claimed: The version_N folder a new fit claimed, until the fit completes: removed on bad input.
        as_given: The config's run-folder keys as given (ckpt_path, trainer.logger, trainer.default_root_dir), for
            config.yaml: it reruns the experiment in a new folder.
    """

    parent: Path | None = None
    run: Path | None = None
    claimed: Path | None = None
    as_given: dict[str, Any] = field(default_factory=dict)

    def place(self, config: Namespace, stem: str, subcommand: str | None, argv: list[str], parser: Any) -> None:
        """Point the config's loggers (or the trainer's root) at the run folder the command works in.

        best and last name the newest run's checkpoints; a resume continues in its run's folder, an evaluation logs into
        the checkpoint's run, a new fit claims a new version_N. The same with any logger, several, or none.

        Args:
            config: The subcommand's config, changed in place.
            stem: The config's name (config_args.config_stem).
            subcommand: fit, validate, test or predict; None for a config without subcommands.
            argv: The command line: a requeued SLURM job continues the run that the same command started.
            parser: The subcommand's parser: it writes the config as config.yaml would be, for the warning on a
                checkpoint trained with another config.
        """
        ckpt_path = config.get("ckpt_path")
        self.as_given = {
            "ckpt_path": None if ckpt_path == "last" else ckpt_path,
            "logger": copy.deepcopy(config.trainer.logger),
            "default_root_dir": config.trainer.get("default_root_dir"),
        }
        if ckpt_path is None and subcommand in ("validate", "test", "predict") and rank_zero_only.rank == 0:
            print(f"note: no --ckpt_path, so {subcommand} uses the model's initial weights; --ckpt_path best or "
                  "last uses the newest run's checkpoints", file=sys.stderr)  # fmt: skip
        parent = runs.runs_parent(config, stem)
        self.parent = parent or Path(runs.LOG_ROOT, stem)
        continued = _resolve_checkpoint(config, subcommand, parent, argv)
        ckpt_path = config.get("ckpt_path")
        self.run = runs.run_of_checkpoint(ckpt_path) if ckpt_path not in NO_RUN else None
        if self.run is not None and rank_zero_only.rank == 0:
            runs.warn_config_drift(self.run, lambda: parser.dump(config, skip_unset=False))
        if subcommand == "predict":  # it logs nothing: no empty event file in a run folder, no new folder
            config.trainer.logger = False
        elif self.run is not None and (subcommand != "fit" or continued):  # evaluate, resume: in its run
            runs.place_run(config, self.run, parent)
        elif self._new_run(config, subcommand) and not runs.version_given(config) and rank_zero_only.rank == 0:
            self.claimed = runs.claim_run(parent)
            runs.place_run(config, self.claimed, parent)
            if subcommand == "fit":
                requeue.mark(self.claimed, argv)
        if requeue.slurm_job() and not config.trainer.get("default_root_dir") and runs.fixed_run_folder(config):
            compat.keep_hpc_checkpoints_in(config.trainer, runs.fixed_run_folder(config))

    @staticmethod
    def _new_run(config: Namespace, subcommand: str | None) -> bool:
        """Whether the command claims a new run folder: a fit, and an evaluation of no run's checkpoint whose several
        loggers would otherwise each count their own next version (and write to two folders)."""
        return subcommand == "fit" or len(runs.logger_specs(config.trainer.logger)) > 1

    def restore_given(self, config: Namespace) -> None:
        """Put the run-folder keys of a copy of the config back as given: the loggers as given, not this run's
        folder, and a resume of the newest run (a resumed run ends where an uninterrupted one would) as a fresh start.

        Args:
            config: A copy of the subcommand's config, changed in place.
        """
        if "ckpt_path" in config:  # a subcommand's config; a study cell's has none
            config.ckpt_path = self.as_given["ckpt_path"]
        config.trainer.logger = self.as_given["logger"]
        config.trainer.default_root_dir = self.as_given["default_root_dir"]

    def remove_claimed(self) -> None:
        """Remove the claimed run folder, and the folders above it that it alone filled."""
        if self.claimed is None:
            return
        shutil.rmtree(self.claimed, ignore_errors=True)
        for parent in self.claimed.parents[:2]:  # <name>/ and lightning_logs/, if this run made them
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        self.claimed = None


def _resolve_checkpoint(config: Namespace, subcommand: str | None, parent: Path | None, argv: list[str]) -> bool:
    """Set config.ckpt_path to the file that best, last or a requeued SLURM job mean; whether the command continues
    the newest run (last; best outside a fit) or the requeued job's own."""
    ckpt_path = config.get("ckpt_path")
    requeued = None  # the same command in a requeued SLURM job: its own run, from its last.ckpt
    if subcommand == "fit" and ckpt_path is None and not runs.version_given(config):
        requeued = config.ckpt_path = ckpt_path = requeue.requeued_checkpoint(parent, argv)
    newest = ckpt_path == "last" or (ckpt_path == "best" and subcommand != "fit")
    if newest:  # a new process has no last or best checkpoint of its own: those of the newest run
        first = runs.logger_specs(config.trainer.logger)[:1]
        config.ckpt_path = runs.newest_run_checkpoint(
            parent, ckpt_path, config.get("weights_only") is not False, first[0].class_path if first else ""
        )
    return bool(newest or requeued)
