"""The LightningCLI: defaults, the declared callbacks, and its hooks calling the modules that do each job."""

import copy
import time
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from batchsize_lit import COMMAND, checks, compat, config_args, failures, runs, trainer_setup
from batchsize_lit.callbacks import DivergenceCheck, EarlyStopping, ModelCheckpoint, RunHistory
from batchsize_lit.config_types import register_config_types
from batchsize_lit.notices import HeldBack
from batchsize_lit.parse_errors import explain
from batchsize_lit.placement import Placement
from batchsize_lit.predictions import PredictionWriter, predictions_folder
from batchsize_lit.runs import LOG_ROOT
from batchsize_lit.signals import INTERRUPTED_STATUS, Terminated, is_sigterm
from batchsize_lit.summary import fit_summary

register_config_types()  # before any parser is made: a saved config.yaml must run again

DESCRIPTION = (
    "Epochs against batch size, with early stopping: fit, validate, test or predict one run (a LightningCLI), or"
    f" run a grid of fits with `{COMMAND} study --config configs/study_seed.yaml`."
)
STUDY_HINT = f"Grids of fits: {COMMAND} study --config configs/study_seed.yaml (see {COMMAND} study --help)."
DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": LOG_ROOT, "name": None, "default_hp_metric": False},
}


def lightning_cli_defaults() -> dict[str, Any]:
    """The LightningCLI arguments the template sets, in new dicts: a caller's own arguments take their place."""
    return {
        "model_class": LightningModule,
        "datamodule_class": LightningDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "seed_everything_default": 0,
        "trainer_defaults": {"logger": DEFAULT_LOGGER, "max_epochs": 20},
        # No abbreviated keys: --trainer.max_epoch is a typo to name, not --trainer.max_epochs.
        "parser_kwargs": {
            "exit_on_error": False,
            "prog": COMMAND,
            "epilog": STUDY_HINT,
            "allow_abbrev": False,
            "description": DESCRIPTION,
        },
        # config.yaml is written by before_fit, for fit only: a callback would cost every training step a call.
        "save_config_callback": None,
    }


class BatchSizeCLI(LightningCLI):
    """LightningCLI for any LightningModule and LightningDataModule, given by class_path, with early stopping that
    restores the best weights, checkpoints, the run history, a divergence check, TensorBoard and a summary.

    Args:
        model_class: The model used when the config names none.
        datamodule_class: The data module used when the config names none.
        args: Command-line arguments, as for LightningCLI; by default sys.argv.
        run: Run the subcommand, as for LightningCLI.
        **kwargs: Other LightningCLI arguments.
    """

    def __init__(
        self,
        model_class: type[LightningModule] | None = None,
        datamodule_class: type[LightningDataModule] | None = None,
        args: Any = None,
        run: bool = True,
        **kwargs: Any,
    ) -> None:
        self.default_classes = {"model": model_class, "data": datamodule_class}
        self.parsers: list[LightningArgumentParser] = []
        self.log_dir: str | None = None
        self.placement = Placement()
        self._given: set[str] = set()
        self._argv: list[str] = []  # the command line: a requeued SLURM job continues the run the same one started
        self._notices = HeldBack("lightning.fabric.utilities.seed")
        try:
            super().__init__(args=args, run=run, **{**lightning_cli_defaults(), **kwargs})
        except Exception as error:
            verdict = failures.judge(self, error)
            if verdict.bad_input:
                self.remove_new_run()
            if verdict.raised is None:
                raise
            raise verdict.raised from error  # JSONARGPARSE_DEBUG shows both
        except Terminated:  # SIGTERM outside a step (see signals.py): before a fit trained anything, nothing to keep
            if failures.nothing_trained(self):
                self.remove_new_run()
            raise Terminated(failures.stopped_by_sigterm(self)) from None
        except SystemExit as done:  # a run Lightning stopped for SIGTERM or Ctrl-C; before its first step, nothing kept
            ctrl_c = compat.exit_after_ctrl_c(done)  # Lightning's status 1 for it would read as a failure
            if (ctrl_c or is_sigterm(done)) and failures.nothing_trained(self):
                self.remove_new_run()
            if ctrl_c:
                raise SystemExit(INTERRUPTED_STATUS) from None
            raise
        finally:
            self._notices.release(emit=False)  # if they were not printed yet, nothing was built

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        self.parsers.append(parser)  # every parser, the subcommands' too, for suggestions on unknown keys
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(RunHistory, "history")
        parser.add_lightning_class_args(DivergenceCheck, "divergence")
        # The monitored metric is one setting: the history, summary, study and hparams tab follow early stopping's.
        parser.link_arguments("early_stopping.monitor", "history.monitor")
        parser.link_arguments("early_stopping.mode", "history.mode")
        parser.set_defaults(
            {key: {"class_path": config_args.class_path_of(c)} for key, c in self.default_classes.items() if c}
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv, printing, args = config_args.without_print_config(args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            explain(error, args, self.parsers)
        subcommand = self.config.get("subcommand")  # self.subcommand is set after parsing
        config = self.config.get(subcommand) or self.config
        self._argv = argv or []
        self._given = config_args.given_keys(self._argv)
        config_args.use_own_defaults(config, self.default_classes, self._given)
        if printing:
            checks.checkpoint_follows_early_stopping(config, self._given)
            config_args.print_config(self.parser_of(subcommand), config, printing)
        checks.check_given_checkpoint(config)
        checks.check_seed(config)  # before LightningCLI seeds, which is before before_instantiate_classes

    def parser_of(self, subcommand: str | None) -> LightningArgumentParser:
        """The parser of a subcommand, or the main one.

        Args:
            subcommand: fit, validate, test or predict; None for the main parser.
        """
        return compat.subcommand_parsers(self.parsers, self.subcommands())[subcommand] if subcommand else self.parser

    def before_instantiate_classes(self) -> None:
        config = self._current(self.config)
        stem = config_args.config_stem(config, "default")
        runs.name_runs(config, stem)  # a folder logger's runs are named after the config
        if config.get("weights_only", False) is None:  # checkpoints hold tensors and plain data only
            config.weights_only = True
        checks.require_checkpointing(config.trainer)
        checks.check_writer_settings(config.trainer)
        checks.check_no_nan_settings(config)
        checks.check_max_time(config.trainer)
        checks.check_num_nodes(config.trainer)
        checks.checkpoint_follows_early_stopping(config, self._given)
        self.placement.place(config, stem, self.subcommand, self._argv, self.parser_of(self.subcommand))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self._notices.hold("lightning.pytorch.utilities.rank_zero")
        given = trainer_setup.configured_callbacks(self._current(self.config_init).get("trainer"))
        kwargs.setdefault("callbacks", list(given))  # Lightning extends the list it gets: given stays the user's
        with trainer_setup.device_flags_named(self._current(self.config).trainer):
            trainer = super().instantiate_trainer(**kwargs)
        self._notices.release()  # built: the seed and device lines, in the order they came
        trainer_setup.finish_trainer(trainer, given)
        return trainer

    def before_fit(self) -> None:
        checks.check_shared_hparams(self.trainer, self.model, self.datamodule)
        self._started = time.perf_counter()
        self.log_dir = str(runs.run_folder(self.trainer))  # every DDP rank asks, here
        if rank_zero_only.rank == 0:  # a resumed run rewrites its own config.yaml
            runs.open_loggers(self.trainer)  # before config.yaml is there: a CSV log starts in an empty folder
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            config = copy.deepcopy(self._current(self.config))
            self.placement.restore_given(config)
            self.write_config(config, Path(self.log_dir, "config.yaml"))

    def write_config(self, config: Namespace, path: Path) -> None:
        """The run's config.yaml: the config as given, with every default filled in.

        Args:
            config: The config to write.
            path: Where.
        """
        self.parser_of(self.subcommand).save(config, path, skip_unset=False, overwrite=True)

    def after_fit(self) -> None:
        self.placement.claimed = None  # the run is complete: nothing to remove
        if rank_zero_only.rank == 0:
            seconds = time.perf_counter() - self._started
            print(fit_summary(self.trainer, self.model, self.datamodule, self.log_dir, seconds))

    def remove_new_run(self) -> None:
        """Bad input found once the run folder was made: leave no half-written run folder behind."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.is_global_zero:
            self.placement.remove_claimed()

    def before_validate(self) -> None:
        self._before_evaluation("val")

    def before_test(self) -> None:
        self._before_evaluation("test")

    def _before_evaluation(self, stage: str) -> None:
        checks.require_data(self.subcommand, stage, self.datamodule, self.model)
        checks.check_shared_hparams(self.trainer, self.model, self.datamodule)
        runs.open_loggers(self.trainer)

    def before_predict(self) -> None:
        checks.require_data(self.subcommand, "predict", self.datamodule, self.model)
        ckpt_path = self._current(self.config).get("ckpt_path")
        self._predictions = PredictionWriter(predictions_folder(ckpt_path, self.placement.run, self.placement.parent))
        self.trainer.callbacks.append(self._predictions)

    def after_predict(self) -> None:
        if rank_zero_only.rank == 0:
            print(self._predictions.report())

    def _current(self, config: Namespace) -> Namespace:
        """The subcommand's part of a config, or the whole config where there are no subcommands."""
        return config[self.subcommand] if self.subcommand else config
