"""The LightningCLI: defaults and the declared callbacks; run folders, config reading and the summary live apart."""

import copy
import logging
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_helpers import is_overridden

from batchsize_lit import compat, requeue, runs
from batchsize_lit.callbacks import (
    AtomicCheckpointIO,
    DivergenceCheck,
    EarlyStopping,
    ModelCheckpoint,
    RunHistory,
    skip_idle_hooks,
)
from batchsize_lit.config_args import (
    class_path_of,
    config_stem,
    drop_inherited_defaults,
    given_keys,
    print_flags,
)
from batchsize_lit.config_types import register_config_types
from batchsize_lit.errors import (
    BAD_INPUT,
    BadInput,
    config_file_problem,
    config_with_keys,
    did_you_mean,
)
from batchsize_lit.predictions import PredictionWriter, predictions_folder
from batchsize_lit.rejections import rejected_setting
from batchsize_lit.runs import LOG_ROOT, check_checkpoint
from batchsize_lit.signals import Terminated
from batchsize_lit.summary import fit_summary
from batchsize_lit.trainer_setup import configured_callbacks, use_template_console

register_config_types()  # before any parser is made: a saved config.yaml must run again
# Lightning's own batch flattening builds a torch LeafSpec, which torch>=2.10 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, "lightning")
# Lightning advertises a cloud logger on every run; a line no user of this template can act on.
# Its "`Trainer.fit` stopped: `max_epochs=N` reached." (or max_steps) repeats the summary's line on how it ended.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: (
        not str(record.msg).startswith(("💡 Tip: For seamless cloud logging", "`Trainer.fit` stopped: `max_"))
    )
)


class HeldBack(logging.Filter):
    """Holds loggers' records back until released, or drops them: Lightning's "Seed set to N" and its device lines
    wait until the run is built, so that bad input found while building it prints its one line alone."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.loggers: list[logging.Logger] = []
        self.records: list[logging.LogRecord] = []
        self.hold(*names)

    def hold(self, *names: str) -> None:
        for name in names:
            self.loggers.append(logging.getLogger(name))
            self.loggers[-1].addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def release(self, emit: bool = True) -> None:
        for logger in self.loggers:
            logger.removeFilter(self)
        for record in self.records if emit else []:
            logging.getLogger(record.name).handle(record)
        self.loggers, self.records = [], []


DESCRIPTION = (
    "Epochs against batch size, with early stopping: fit, validate, test or predict one run (a LightningCLI), or"
    " run a grid of fits with `batchsize-lit study --config configs/study_seed.yaml`."
)
STUDY_HINT = "Grids of fits: batchsize-lit study --config configs/study_seed.yaml (see batchsize-lit study --help)."
DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": LOG_ROOT, "name": None, "default_hp_metric": False},
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
        self._claimed: Path | None = None
        self._given: set[str] = set()
        self._argv: list[str] = []  # the command line: a requeued SLURM job continues the run the same one started
        self._as_given: dict[str, Any] = {}  # the run-folder keys of the config, as given: see _place_run
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("trainer_defaults", {"logger": DEFAULT_LOGGER, "max_epochs": 20})
        # No abbreviated keys: --trainer.max_epoch is a typo to name, not --trainer.max_epochs.
        parser_kwargs = {"exit_on_error": False, "prog": "batchsize-lit", "epilog": STUDY_HINT, "allow_abbrev": False,
                         "description": DESCRIPTION}  # fmt: skip
        kwargs.setdefault("parser_kwargs", parser_kwargs)
        # config.yaml is written by before_fit, for fit only: a callback would cost every training step a call.
        kwargs.setdefault("save_config_callback", None)
        self._notices = HeldBack("lightning.fabric.utilities.seed")
        try:
            super().__init__(args=args, run=run, **kwargs)
        except Exception as error:
            problem = rejected_setting(self, error)  # bad input that came as a plain exception: see rejections.py
            if problem is not None:
                self.remove_new_run()
                raise problem from error  # JSONARGPARSE_DEBUG shows both
            if not isinstance(error, BAD_INPUT):
                raise
            # Bad input: what parsing, the classes' __init__ checks and the template's own checks reject; anything
            # else that a running fit, validate, test or predict raises is a fault, a ValueError in a model's
            # training_step included, and keeps its traceback.
            trainer = getattr(self, "trainer", None)
            running = trainer is not None and trainer.state.status != TrainerStatus.INITIALIZING
            if not running or isinstance(error, BadInput | ArgumentError | MisconfigurationException):
                self.remove_new_run()
                raise
            folder = f"; the run folder {self.log_dir} is kept" if self.log_dir else ""
            raise RuntimeError(f"{self.subcommand} failed at step {trainer.global_step}{folder}") from error
        except Terminated:  # SIGTERM before a fit trained anything (see signals.py): nothing in the run to keep
            trainer = getattr(self, "trainer", None)
            if trainer is None or trainer.global_step == 0:
                self.remove_new_run()
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
        parser.set_defaults({key: {"class_path": class_path_of(c)} for key, c in self.default_classes.items() if c})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
        printing = [arg for arg in argv or [] if arg.split("=")[0] == "--print_config"]
        if printing:  # printed below, once the classes' own defaults are in place
            kept = [arg for arg in argv if arg not in printing]
            if args is None:
                sys.argv[1:] = kept
            else:
                args = kept
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            self._explain(error, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) or self.config
        given = self._given = given_keys(argv or [])
        self._argv = argv or []
        for key, default_class in self.default_classes.items():
            if default_class is not None and config.get(key) is not None:
                drop_inherited_defaults(config[key], default_class, {k[len(key) + 1 :] for k in given})
        if printing:
            self._checkpoint_follows_early_stopping(config)
            text = self.parser_of(subcommand).dump(config, **print_flags(printing))
            print(text, end="" if text.endswith("\n") else "\n")
            sys.exit(0)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("best", "last", "hpc", "registry"):
            # Checked before Lightning reads the checkpoint's hyperparameters from it.
            check_checkpoint(ckpt_path, weights_only=config.get("weights_only") is not False)

    def _checkpoint_follows_early_stopping(self, config: Namespace) -> None:
        """The best checkpoint is picked by early stopping's monitor and mode, unless checkpoint.monitor is given."""
        stopping, checkpoint = config.get("early_stopping"), config.get("checkpoint")
        if (
            stopping
            and checkpoint
            and "checkpoint.monitor" not in self._given
            and stopping.monitor != checkpoint.monitor
        ):
            checkpoint.monitor, checkpoint.mode = stopping.monitor, stopping.get("mode", "min")

    def parser_of(self, subcommand: str | None) -> LightningArgumentParser:
        """The parser of a subcommand, or the main one: the subcommand parsers are made after it, in this order."""
        if not subcommand:
            return self.parser
        return dict(zip(self.subcommands(), self.parsers[1:], strict=True))[subcommand]

    def _explain(self, error: ArgumentError, args: Any) -> None:
        """Raise the parse error with the bad YAML file named, or a suggestion for an unknown key."""
        problem = config_file_problem(error, args)
        if problem:
            raise ArgumentError(None, problem) from None
        study = config_with_keys(args, ("grid", "base"))
        if study:
            raise ArgumentError(None, f"--config {study} is a study config: run it with batchsize-lit study") from None
        unknown = re.search(r"unrecognized arguments: --([\w.]+)|does not accept option '([\w.]+)'", str(error))
        if unknown:
            known = {key for p in self.parsers for key in p.get_defaults().keys()}  # noqa: SIM118
            hint = did_you_mean(unknown.group(1) or unknown.group(2), known, prefix="--" if unknown.group(1) else "")
            if hint:
                raise ArgumentError(None, f"{error}{hint}") from None
        linked = re.match(r'Parser key "history\.(monitor|mode)"', str(error))
        if linked:  # the history follows early stopping: the value came from there
            raise ArgumentError(None, str(error).replace("history.", "early_stopping.", 1)) from None
        raise error

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        stem = config_stem(config, "default")
        runs.name_runs(config, stem)  # a folder logger's runs are named after the config
        if config.get("weights_only", False) is None:  # checkpoints hold tensors and plain data only
            config.weights_only = True
        if config.trainer.get("enable_checkpointing") is False:
            raise BadInput(
                "trainer.enable_checkpointing=false: this template always has its checkpoint callback; write no "
                "checkpoint with --checkpoint.save_top_k 0 --checkpoint.save_last false"
            )
        self._checkpoint_follows_early_stopping(config)
        self._place_run(config, stem)

    def _place_run(self, config: Namespace, stem: str) -> None:
        """best and last name the newest run's checkpoints; a resume continues in its run's folder, an evaluation logs
        into the checkpoint's run, a new fit claims a new version_N. The same with any logger, several, or none."""
        ckpt_path = config.get("ckpt_path")
        # config.yaml reruns the experiment in a new folder: the loggers as given, and a resume of the newest run (a
        # resumed run ends where an uninterrupted one would) as a fresh start. See before_fit.
        self._as_given = {
            "ckpt_path": None if ckpt_path == "last" else ckpt_path,
            "logger": copy.deepcopy(config.trainer.logger),
            "default_root_dir": config.trainer.get("default_root_dir"),
        }
        if ckpt_path is None and self.subcommand in ("validate", "test", "predict") and rank_zero_only.rank == 0:
            print(f"note: no --ckpt_path, so {self.subcommand} uses the model's initial weights; --ckpt_path best or "
                  "last uses the newest run's checkpoints", file=sys.stderr)  # fmt: skip
        parent = runs.runs_parent(config, stem)
        self._runs_parent = parent or Path(runs.LOG_ROOT, stem)
        requeued = None  # the same command in a requeued SLURM job: its own run, from its last.ckpt
        if self.subcommand == "fit" and ckpt_path is None and not runs.version_given(config):
            requeued = config.ckpt_path = ckpt_path = requeue.requeued_checkpoint(parent, self._argv)
        newest = ckpt_path == "last" or (ckpt_path == "best" and self.subcommand != "fit")
        if newest:  # a new process has no last or best checkpoint of its own: those of the newest run
            first = runs.logger_specs(config.trainer.logger)[:1]
            config.ckpt_path = ckpt_path = runs.newest_run_checkpoint(
                parent, ckpt_path, config.get("weights_only") is not False, first[0].class_path if first else ""
            )
        self._run = runs.run_of_checkpoint(ckpt_path) if ckpt_path not in (None, "best", "hpc", "registry") else None
        if self._run is not None and rank_zero_only.rank == 0:
            runs.warn_config_drift(self._run, lambda: self.parser_of(self.subcommand).dump(config, skip_unset=False))
        if self.subcommand == "predict":  # it logs nothing: no empty event file in a run folder, no new folder
            config.trainer.logger = False
        elif self._run is not None and (self.subcommand != "fit" or newest or requeued):  # evaluate, resume: in its run
            runs.place_run(config, self._run, parent)
        elif self.subcommand == "fit" and not runs.version_given(config) and rank_zero_only.rank == 0:
            self._claimed = runs.claim_run(parent)
            runs.place_run(config, self._claimed, parent)
            requeue.mark(self._claimed, self._argv)
        if requeue.slurm_job() and not config.trainer.get("default_root_dir") and runs.fixed_run_folder(config):
            compat.keep_hpc_checkpoints_in(config.trainer, runs.fixed_run_folder(config))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self._notices.hold("lightning.pytorch.utilities.rank_zero")
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        given = configured_callbacks(config.get("trainer"))
        kwargs.setdefault("callbacks", list(given))  # Lightning extends the list it gets: given stays the user's
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as error:  # name the device flags where Lightning's text does not
            config = (self.config[self.subcommand] if self.subcommand else self.config).trainer
            if re.search(r"accelerator|devices|gpu|cuda|mps|tpu|backend", str(error), re.IGNORECASE):
                flags = f"trainer.accelerator={config.accelerator!r}, trainer.devices={config.devices!r}"
                raise MisconfigurationException(f"{flags}: {error}") from None
            raise
        self._notices.release()  # built: the seed and device lines, in the order they came
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: write checkpoints atomically
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        use_template_console(trainer, given)
        skip_idle_hooks(trainer.callbacks)
        return trainer

    def before_fit(self) -> None:
        self._check_shared_hparams()
        self._started = time.perf_counter()
        self.log_dir = str(runs.run_folder(self.trainer))  # every DDP rank asks, here
        if rank_zero_only.rank == 0:  # a resumed run rewrites its own config.yaml
            runs.open_loggers(self.trainer)  # before config.yaml is there: a CSV log starts in an empty folder
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            config = copy.deepcopy(self.config[self.subcommand] if self.subcommand else self.config)
            if "ckpt_path" in config:  # a subcommand's config; a study cell's has none
                config.ckpt_path = self._as_given["ckpt_path"]
            config.trainer.logger = self._as_given["logger"]  # not this run's folder
            config.trainer.default_root_dir = self._as_given["default_root_dir"]
            self.write_config(config, Path(self.log_dir, "config.yaml"))

    def write_config(self, config: Namespace, path: Path) -> None:
        """The run's config.yaml: the config as given, with every default filled in."""
        self.parser_of(self.subcommand).save(config, path, skip_unset=False, overwrite=True)

    def after_fit(self) -> None:
        self._claimed = None  # the run is complete: nothing to remove
        if rank_zero_only.rank == 0:
            print(
                fit_summary(
                    self.trainer, self.model, self.datamodule, self.log_dir, time.perf_counter() - self._started
                )
            )

    def remove_new_run(self) -> None:
        """Bad input found once the run folder was made: leave no half-written run folder behind."""
        trainer = getattr(self, "trainer", None)
        if self._claimed is None or (trainer is not None and not trainer.is_global_zero):
            return
        shutil.rmtree(self._claimed, ignore_errors=True)
        for parent in self._claimed.parents[:2]:  # <name>/ and lightning_logs/, if this run made them
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        self._claimed = None

    def before_validate(self) -> None:
        self._require_data("val")
        self._check_shared_hparams()
        runs.open_loggers(self.trainer)

    def before_test(self) -> None:
        self._require_data("test")
        self._check_shared_hparams()
        runs.open_loggers(self.trainer)

    def before_predict(self) -> None:
        self._require_data("predict")
        ckpt_path = (self.config[self.subcommand] if self.subcommand else self.config).get("ckpt_path")
        self._predictions = PredictionWriter(predictions_folder(ckpt_path, self._run, self._runs_parent))
        self.trainer.callbacks.append(self._predictions)

    def _require_data(self, stage: str) -> None:
        """A clear error where neither the data module nor the model gives this stage any data."""
        parts = [part for part in (self.datamodule, self.model) if part is not None]
        if not any(is_overridden(f"{stage}_dataloader", part) for part in parts):
            name = type(self.datamodule or self.model).__name__
            raise BadInput(f"{self.subcommand}: {name} gives no {stage} data: no {stage}_dataloader, or an empty split")

    def _check_shared_hparams(self) -> None:
        """Lightning logs the model's and the data's hyperparameters together, and fails on a name they share with
        two values, after the run folder is made; here that is one line before anything runs."""
        if not self.trainer.loggers or self.datamodule is None or self.model is None:
            return
        if not (getattr(self.model, "_log_hyperparams", True) and getattr(self.datamodule, "_log_hyperparams", True)):
            return  # save_hyperparameters(logger=False): Lightning does not merge them
        model, data = self.model.hparams_initial, getattr(self.datamodule, "hparams_initial", {})
        shared = [key for key in model if key in data and key != "_class_path"]  # LightningCLI's own: skipped
        clash = [key for key in shared if _differ(model[key], data[key])]
        if clash:
            pairs = ", ".join(f"model.{key}={model[key]!r} and data.{key}={data[key]!r}" for key in clash)
            raise BadInput(f"{pairs}: the model's and the data's hyperparameters are logged together, so a name they "
                           "share needs one value")  # fmt: skip

    def after_predict(self) -> None:
        if rank_zero_only.rank == 0:
            print(self._predictions.report())


def _differ(a: Any, b: Any) -> bool:
    """Whether Lightning counts two values of one hyperparameter name as different: another type, another tensor
    object, or unequal."""
    if type(a) is not type(b):
        return True
    return a is not b if isinstance(a, torch.Tensor) else bool(a != b)
