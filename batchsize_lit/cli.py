"""The LightningCLI: defaults, early stopping and checkpoints, TensorBoard, the run summary and clean errors."""

import difflib
import importlib
import inspect
import itertools
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from batchsize_lit.callbacks import CurveLogger, Diverged, EarlyStopping, ModelCheckpoint, find_callback
from batchsize_lit.data import RegressionDataModule
from batchsize_lit.model import LinearRegressor

# Lightning's own batch flattening builds a torch LeafSpec, which torch>=2.10 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, "lightning")

LOG_ROOT = "lightning_logs"
STUDY_HINT = "Grids of fits: batchsize-lit study --config configs/study_seed.yaml (see batchsize-lit study --help)."
DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": LOG_ROOT, "name": None, "default_hp_metric": False},
}


class BatchSizeCLI(LightningCLI):
    """LightningCLI with this template's callbacks, logger and end-of-fit summary."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        # Any LightningModule and LightningDataModule can be given by class_path; these two are the defaults.
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("trainer_defaults", {"logger": DEFAULT_LOGGER, "max_epochs": 20})
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False, "prog": "batchsize-lit", "epilog": STUDY_HINT})
        # config.yaml is written by before_fit, for fit only: a callback would cost every training step a call.
        kwargs.setdefault("save_config_callback", None)
        self.curves = CurveLogger()
        try:
            super().__init__(args=args, run=run, **kwargs)
        except Diverged as error:
            error.args = (f"{error}. Likely cause: {self._divergence_cause()}",)
            raise
        except ValueError:
            self._remove_new_run()
            raise

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "model": {"class_path": "batchsize_lit.LinearRegressor"},
                "data": {"class_path": "batchsize_lit.RegressionDataModule"},
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            if "Problems parsing config" in str(error):
                raise ArgumentError(None, _locate_bad_yaml(args) or str(error)) from None
            unknown = re.search(r"unrecognized arguments: --([\w.]+)", str(error))
            if unknown:
                parsers = [parser, *getattr(self, "_subcommand_parsers", {}).values()]
                known = {name.lstrip("-") for p in parsers for name in p._option_string_actions}
                close = difflib.get_close_matches(unknown.group(1), known, n=1)
                if close:
                    raise ArgumentError(None, f"{error}; did you mean --{close[0]}?") from None
            raise

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.trainer.logger
        if hasattr(logger, "init_args") and logger.init_args.get("name") is None:  # the run is named after its config
            paths = config.get("config") or []
            logger.init_args.name = Path(str(paths[-1])).stem if paths else "default"
        if config.get("weights_only", False) is None:  # checkpoints hold tensors and plain data only
            config.weights_only = True
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last" and self.subcommand == "fit":
            config.ckpt_path = self._resume_in_place(logger)
        elif ckpt_path and ckpt_path not in ("best", "last", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise ValueError(f"ckpt_path={ckpt_path!r} does not exist")
        elif ckpt_path and self.subcommand != "fit" and _is_run_checkpoint(ckpt_path, logger):
            run = Path(os.path.relpath(ckpt_path)).parent.parent  # evaluate into the run the checkpoint came from
            logger.init_args.save_dir, logger.init_args.name = str(run.parent.parent), run.parent.name
            logger.init_args.version = run.name

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        trainer = super().instantiate_trainer(**kwargs)
        if config.get("log_every_n_steps") is None and isinstance(self.datamodule, RegressionDataModule):
            # Lightning warns when an epoch has fewer batches than the interval: log at least once an epoch.
            trainer.log_every_n_steps = min(50, self.datamodule.batches_per_epoch(trainer.world_size))
        trainer.callbacks.insert(0, self.curves)  # first, so train_loss_epoch is logged before others read it
        return trainer

    def _resume_in_place(self, logger: Any) -> str:
        """`--ckpt_path last`: the newest run of this name that has a last.ckpt, continued in its own folder."""
        init = logger.init_args
        runs = sorted(
            Path(init.save_dir, init.name).glob("version_*/checkpoints/last.ckpt"),
            key=lambda path: int(path.parts[-3].split("_")[1]),
        )
        if not runs:
            raise ValueError(f"ckpt_path='last': no last.ckpt under {Path(init.save_dir, init.name)}")
        init.version = int(runs[-1].parts[-3].split("_")[1])
        return str(runs[-1])

    def before_fit(self) -> None:
        data = self.datamodule
        if isinstance(data, RegressionDataModule) and data.n_val == 0:
            for key, kind in (("early_stopping", EarlyStopping), ("checkpoint", ModelCheckpoint)):
                callback = find_callback(self.trainer, kind)
                if callback is not None and (callback.monitor or "").startswith("val"):
                    raise ValueError(
                        f"{key}.monitor={callback.monitor!r} is never logged: data.val_fraction="
                        f"{data.hparams.val_fraction} leaves no validation split"
                    )
        self._started = time.perf_counter()
        lr, limit = self._lr_and_limit()
        if limit is not None and lr >= limit and self.trainer.is_global_zero:
            print(f"warning: lr {lr:.4g} is at or above this data's stable limit 2/λ_max = {limit:.4g}: "
                  "SGD will diverge", file=sys.stderr)  # fmt: skip
        self.log_dir = self.trainer.log_dir  # a collective call under DDP: every rank asks, here
        self._new_run = self.log_dir is not None and not Path(self.log_dir).exists()
        if self.log_dir and self.trainer.is_global_zero:  # a resumed run rewrites its own config.yaml
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            config = self.config[self.subcommand] if self.subcommand else self.config
            parser = self._parser(self.subcommand)
            parser.save(config, Path(self.log_dir, "config.yaml"), skip_unset=False, overwrite=True)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(self.summary(time.perf_counter() - self._started))

    def _remove_new_run(self) -> None:
        """Bad input found once fit had begun: leave no half-written run folder behind."""
        if getattr(self, "_new_run", False) and self.trainer.is_global_zero:
            run = Path(self.log_dir)
            shutil.rmtree(run, ignore_errors=True)
            for parent in run.parents[:2]:  # <name>/ and lightning_logs/, if this run made them
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()

    def _lr_and_limit(self) -> tuple[float | None, float | None]:
        """The learning rate in use and this data's stable limit 2/λ_max, where the model and data say them."""
        model, data = getattr(self, "model", None), getattr(self, "datamodule", None)
        if not isinstance(data, RegressionDataModule) or not hasattr(model, "effective_lr"):
            return None, None
        return model.effective_lr(), data.facts()["lr_max_stable"]

    def _divergence_cause(self) -> str:
        lr, limit = self._lr_and_limit()
        if limit is None:
            return "the learning rate is likely too high; lower model.lr"
        if lr >= limit:
            return f"lr {lr:.4g} is above this data's stability limit 2/λ_max = {limit:.4g}; lower model.lr"
        return f"lr {lr:.4g} is below the stability limit {limit:.4g}, so look at the data and the model"

    def after_predict(self) -> None:
        predictions = self.trainer.predict_loop.predictions
        if predictions and self.trainer.is_global_zero:
            values = torch.cat([torch.as_tensor(p).flatten() for p in predictions])
            head = ", ".join(f"{v:.4f}" for v in values[:5].tolist())
            print(f"{len(values)} predictions: {head}{', ...' if len(values) > 5 else ''}")

    def summary(self, seconds: float) -> str:
        """The end-of-fit report: how and why it stopped, the best epoch, the weights against the optimum."""
        trainer, curves = self.trainer, self.curves
        stopper = find_callback(trainer, EarlyStopping)
        epochs, max_epochs = len(curves.history), trainer.max_epochs
        if stopper is not None and stopper.stopped_epoch:
            why = f"early stop at epoch {stopper.stopped_epoch + 1} (patience {stopper.patience})"
        elif max_epochs is not None and epochs >= max_epochs > 0:
            why = "max_epochs reached"
        else:
            why = "stopped by max_steps, max_time or a callback"
        of_max = f" of {max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
        lines = [f"Fit finished: {epochs}{of_max} epochs, {why}."]
        best = curves.best()
        if best is not None:
            best_epoch = min((row for row in curves.history if curves.monitor in row), key=lambda r: r[curves.monitor])
            lines.append(f"  best {curves.monitor} {best:.5f} at epoch {best_epoch['epoch']}")
        if stopper is not None and stopper.restored:
            lines.append(f"  weights restored to the best epoch, {stopper.best_epoch + 1}")
        else:
            lines.append("  weights are those of the last epoch (not restored)")
        if isinstance(self.model, LinearRegressor) and isinstance(self.datamodule, RegressionDataModule):
            facts, hp = self.datamodule.facts(), self.datamodule.hparams
            w, b = self.model.linear.weight.item(), self.model.linear.bias.item()
            lines += [
                f"  learned        w = {w:.4f}  b = {b:+.4f}",
                f"  true           w = {hp.slope:.4f}  b = {hp.intercept:+.4f}",
                f"  least squares  w = {facts['lsq_weight']:.4f}  b = {facts['lsq_bias']:+.4f}"
                f"  (train MSE {facts['lsq_train_mse']:.5f})",
                f"  noise floor noise_std² = {facts['noise_floor']:.5f}",
                f"  max stable lr 2/λ_max = {facts['lr_max_stable']:.3f} (lr used {self.model.effective_lr():.4g})",
            ]
        lines.append(f"  {trainer.global_step} steps, {curves.samples} samples seen, {seconds:.1f} s")
        if self.log_dir:
            lines.append(f"  run folder: {self.log_dir}")
            lines.append(f"  tensorboard --logdir {Path(self.log_dir).parent}")
        return "\n".join(lines)


def _is_run_checkpoint(ckpt_path: str, logger: Any) -> bool:
    """Whether the checkpoint sits in a TensorBoard run folder: <save_dir>/<name>/<version>/checkpoints/."""
    path = Path(ckpt_path)
    return hasattr(logger, "init_args") and path.parent.name == "checkpoints" and len(path.parents) >= 4


def _locate_bad_yaml(args: Any) -> str | None:
    """Name the --config file that is not valid YAML, and where."""
    args = list(args or sys.argv[1:]) if not isinstance(args, dict) else []
    paths = [b for a, b in itertools.pairwise(args) if a in ("-c", "--config")]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        if Path(path).is_file():
            try:
                yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                return f"--config {path} is not valid YAML{where}: {getattr(error, 'problem', error)}"
    return None


def format_error(error: BaseException) -> str:
    """The error as one line. A subclass-typed key (model, data) fails as a Union of the class and None in
    jsonargparse; keep only what the class itself said, under its key."""
    text = " ".join(str(error).split())
    union = re.match(
        r'(?:Parser key "(\w+)": )?Does not validate against any of the Union subtypes.*?Errors: - (.*?)'
        r" - Expected a <class 'NoneType'>",
        text,
    )
    if not union:
        return text
    group, inner = union.group(1) or "", union.group(2)
    class_path = re.match(r"Problem with given class_path '([\w.]+)': (.*)", inner)
    if class_path:
        inner = class_path.group(2)
        inner = re.sub(r'^Parser key "([^"]+)"', lambda m: f'Parser key "{group}.{m.group(1)}"', inner)
        unknown = re.match(r"Option '(\w+)' is not accepted", inner)
        if unknown:
            inner = f"unknown key {group}.{unknown.group(1)}{_suggest(unknown.group(1), class_path.group(1))}"
    return inner


def _suggest(name: str, class_path: str) -> str:
    module, _, attr = class_path.rpartition(".")
    known = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m batchsize_lit`` and ``batchsize-lit``."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["study"]:
        from batchsize_lit.study import main as study_main

        return study_main(argv[1:])
    try:
        BatchSizeCLI(args=args)
    except (ArgumentError, ValueError, MisconfigurationException, Diverged) as error:
        if os.environ.get("JSONARGPARSE_DEBUG"):
            raise
        prefix = "training diverged: " if isinstance(error, Diverged) else ""
        sys.exit(f"error: {prefix}{format_error(error)}")
