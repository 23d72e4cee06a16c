"""The LightningCLI: defaults, the declared callbacks, run folders, checkpoint checks and the end-of-fit summary."""

import copy
import inspect
import logging
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_helpers import is_overridden

from batchsize_lit import runs
from batchsize_lit.callbacks import (
    AtomicCheckpointIO,
    DivergenceCheck,
    EarlyStopping,
    ModelCheckpoint,
    RunHistory,
    skip_idle_hooks,
)
from batchsize_lit.config_types import register_config_types
from batchsize_lit.errors import (
    BAD_INPUT,
    BadInput,
    config_file_problem,
    config_values,
    config_with_keys,
    did_you_mean,
    import_class,
)
from batchsize_lit.predictions import PredictionWriter, predictions_folder
from batchsize_lit.problem import reference_facts, run_report
from batchsize_lit.rejections import rejected_setting
from batchsize_lit.runs import LOG_ROOT, check_checkpoint
from batchsize_lit.signals import Terminated
from batchsize_lit.trainer_info import find_callback
from batchsize_lit.trainer_setup import configured_callbacks, use_template_console
from batchsize_lit.weight_averaging import added_epochs

register_config_types()  # before any parser is made: a saved config.yaml must run again
# Lightning's own batch flattening builds a torch LeafSpec, which torch>=2.10 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, "lightning")
# Lightning advertises a cloud logger on every run; a line no user of this template can act on.
# Its "`Trainer.fit` stopped: `max_epochs=N` reached." repeats the summary's own line on how the run ended.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: (
        not str(record.msg).startswith(("💡 Tip: For seamless cloud logging", "`Trainer.fit` stopped: `max_epochs="))
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


def config_stem(config: Any, default: str) -> str:
    """The file name, without extension, of the last --config given: what a run or a study is named after. A config
    given inline, as a YAML string, has no file name (jsonargparse records None)."""
    paths = config.get("config") or []
    return Path(str(paths[-1])).stem if paths and paths[-1] is not None else default


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
        for key, default_class in self.default_classes.items():
            if default_class is not None and config.get(key) is not None:
                _drop_inherited_defaults(config[key], default_class, {k[len(key) + 1 :] for k in given})
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
        elif self._run is not None and (self.subcommand != "fit" or newest):  # evaluate, or resume, in its run
            runs.place_run(config, self._run, parent)
        elif self.subcommand == "fit" and not runs.version_given(config) and rank_zero_only.rank == 0:
            self._claimed = runs.claim_run(parent)
            runs.place_run(config, self._claimed, parent)

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
            self.parser_of(self.subcommand).save(
                config, Path(self.log_dir, "config.yaml"), skip_unset=False, overwrite=True
            )

    def after_fit(self) -> None:
        self._claimed = None  # the run is complete: nothing to remove
        if rank_zero_only.rank == 0:
            print(self.summary(time.perf_counter() - self._started))

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

    def summary(self, seconds: float) -> str:
        """The end-of-fit report: how and why it stopped, the best epoch, what the model and data add."""
        trainer = self.trainer
        history = find_callback(trainer, RunHistory)
        stopper = find_callback(trainer, EarlyStopping)
        added = added_epochs(trainer, self.model)  # StochasticWeightAveraging's batch-norm epoch: trains nothing
        epochs, max_epochs = len(history.history) - added, trainer.max_epochs
        if stopper is not None and stopper.stopped_epoch:
            why = f"early stop at epoch {stopper.stopped_epoch + 1} (patience {stopper.patience})"
        elif max_epochs is not None and epochs >= max_epochs > 0:
            why = "max_epochs reached"
        else:
            why = "stopped by max_steps, max_time or a callback"
        of_max = f" of {max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
        plus = f" and {added} batch-norm epoch for the average" if added else ""
        lines = [f"Fit finished: {epochs}{of_max} epochs{plus}, {why}."]
        best = history.best()
        if best is not None:
            lines.append(f"  best {history.monitor} {best[0]:.5g} at epoch {best[1]}")
        else:
            lines.append(f"  {history.monitor} was never logged")
        if stopper is not None and stopper.restored:
            lines.append(f"  weights restored to the best epoch, {stopper.best_epoch + 1}")
        elif stopper is not None and stopper.averaged_by:
            lines.append(f"  weights are {stopper.averaged_by}'s average, not restored to the best epoch")
        else:
            lines.append("  weights are those of the last epoch (not restored)")
        facts = reference_facts(self.datamodule, self.model)
        lines += [f"  {line}" for line in run_report(facts, self.model, self.datamodule).lines]
        lines.append(f"  {trainer.global_step} steps, {history.samples} samples seen, {seconds:.1f} s")
        lines += [f"  {line}" for line in runs.where_to_look(trainer, self.log_dir)]
        return "\n".join(lines)


# The flags of --print_config=FLAG,...: jsonargparse's, with skip_null as the older name of skip_unset.
PRINT_FLAGS = {"skip_default": "skip_default", "skip_unset": "skip_unset", "skip_null": "skip_unset"}


def print_flags(printing: list[str]) -> dict[str, bool]:
    """jsonargparse's dump arguments for ``--print_config[=flags]``; by default every key is printed."""
    kwargs = {"skip_unset": False}
    for flag in (flag for arg in printing for flag in arg.partition("=")[2].split(",") if flag):
        if flag not in PRINT_FLAGS:
            raise ArgumentError(None, f"--print_config={flag}: unknown flag; known: {', '.join(PRINT_FLAGS)}")
        kwargs[PRINT_FLAGS[flag]] = True
    return kwargs


def _drop_inherited_defaults(spec: Any, default_class: type, given: set[str]) -> None:
    """Give a class chosen by class_path its own defaults where jsonargparse left the default class's in place.

    When a class_path replaces the default class, jsonargparse keeps every init arg the new class also has, the
    default class's defaults among them (jsonargparse issue #460). An init arg not given on the command line or in a
    config file, equal to the default class's default and unlike the new class's own, is set to the new class's.
    """
    class_path = getattr(spec, "class_path", None)
    init_args = getattr(spec, "init_args", None)
    if not class_path or init_args is None or class_path == class_path_of(default_class):
        return
    try:
        chosen = import_class(class_path)
    except (ImportError, AttributeError):
        return
    old, new = _init_defaults(default_class), _init_defaults(chosen)
    for key in list(init_args.keys()):
        if key not in given and key in old and key in new and init_args[key] == old[key] and new[key] != old[key]:
            init_args[key] = new[key]


def given_keys(argv: list[str]) -> set[str]:
    """The config keys that a command line sets, on it or in its config files, without ``init_args``: data.seed."""
    keys: set[str] = set()

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(inner, prefix if name == "init_args" else f"{prefix}.{name}".lstrip("."))
        else:
            keys.add(prefix)

    for source in config_values(argv):
        try:
            text = Path(source).read_text() if Path(source).is_file() else source
        except (OSError, ValueError):  # an inline config can be longer than a file name may be
            text = source
        try:
            walk(yaml.safe_load(text), "")
        except yaml.YAMLError:
            continue
    keys |= {arg[2:].split("=", 1)[0].replace(".init_args.", ".") for arg in argv if arg.startswith("--")}
    return keys


def class_path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _init_defaults(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _differ(a: Any, b: Any) -> bool:
    """Whether Lightning counts two values of one hyperparameter name as different: another type, another tensor
    object, or unequal."""
    if type(a) is not type(b):
        return True
    return a is not b if isinstance(a, torch.Tensor) else bool(a != b)
