"""Cohorts: a study's cells that differ only in seed and learning rate, trained together as one vectorized fit."""

import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.seed import isolate_rng

from batchsize_lit.callbacks import DivergenceCheck, EarlyStopping, ModelCheckpoint, RunHistory
from batchsize_lit.cohort_module import CohortLoader, CohortModule, StackedModel, stack_batches
from batchsize_lit.errors import one_line
from batchsize_lit.hparams_tab import log_tab, tab_params
from batchsize_lit.outputs import batch_samples
from batchsize_lit.problem import has_batch_metrics, has_loss
from batchsize_lit.science import GradientNoiseScale, StepsToTarget
from batchsize_lit.signals import WATCH, Terminated, is_sigterm
from batchsize_lit.study.members import Member, Members
from batchsize_lit.study.run import (
    CellCLI,
    Defaults,
    _has_test_data,
    quiet_lightning,
    record_failure,
    result_row,
    run_one,
    write_result,
)
from batchsize_lit.trainer_info import find_callback, global_batch_size, scalar_metrics

# The grid keys in which the cells of a cohort may differ: neither changes the shape of the computation.
COHORT_KEYS = ("seed_everything", "model.lr")
KNOWN_CALLBACKS = (StepsToTarget, GradientNoiseScale, EarlyStopping, RunHistory, DivergenceCheck, ModelCheckpoint)


def form_cohorts(values: dict[str, dict[str, Any]], size: int | None) -> list[list[str]]:
    """The cells grouped by everything but their seed and learning rate, in grid order, at most ``size`` a group."""
    groups: dict[tuple, list[str]] = {}
    for name, cell in values.items():
        key = tuple((k, repr(v)) for k, v in cell.items() if k not in COHORT_KEYS)
        groups.setdefault(key, []).append(name)
    size = size or max(len(group) for group in groups.values())
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def plan(
    todo: list[str],
    values: dict[str, dict[str, Any]],
    cell_args: dict[str, list[str]],
    mode: Literal["auto", "off"],
    size: int | None,
    defaults: Defaults,
    executor: str = "local",
) -> list[list[str]]:
    """The units of work: cohorts where the cells can form them, else single cells, with one line saying why not."""
    singles = [[cell] for cell in todo]
    if mode == "off" or len(todo) < 2:
        return singles
    units = form_cohorts({cell: values[cell] for cell in todo}, size)
    if all(len(unit) == 1 for unit in units):
        return singles
    if executor != "local":  # Ray runs each cell as its own task, with its own retries and resources
        print(f"cohorts off: the {executor} executor runs cells one by one (--executor local trains cohorts)")
        return singles
    planned, reasons = [], []
    for unit in units:  # each cohort's first cell stands for the others: they differ only in seed and lr
        problem = cohort_problem(CellCLI(cell_args[unit[0]], defaults)) if len(unit) > 1 else None
        planned += [[cell] for cell in unit] if problem else [unit]
        reasons += [problem] if problem and problem not in reasons else []
    for reason in reasons:
        print(f"cohorts off: {reason}; the cells run one by one")
    cohorts = [unit for unit in planned if len(unit) > 1]
    if cohorts:
        cells = sum(len(unit) for unit in cohorts)
        print(f"{cells} cells in {len(cohorts)} cohorts (vectorized fits; --cohorts off runs them one by one)")
    return planned


def cohort_problem(cli: Any) -> str | None:
    """Why these cells cannot train as a cohort, or None if they can (checked on one instantiated cell)."""
    model, trainer = cli.model, cli.trainer
    if not has_loss(model):
        return f"{type(model).__name__} has no loss(batch) method"
    if cli.config.get("optimizer") or cli.config.get("lr_scheduler"):
        return "the config gives an optimizer or lr_scheduler (cohorts vectorize the model's plain SGD only)"
    if model.hparams.get("lr_scaling", "none") != "none":
        return "lr_scaling is not none"
    optimizer = model.configure_optimizers()
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return "configure_optimizers does not return one plain torch.optim.SGD"
    group = optimizer.param_groups[0]
    if group["momentum"] or group["weight_decay"] or group["nesterov"] or group["maximize"]:
        return "the SGD has momentum, weight decay, nesterov or maximize"
    problem = _trainer_problem(trainer) or _callback_problem(trainer)
    return problem or _model_problem(cli)


def _trainer_problem(trainer: Trainer) -> str | None:
    checks = {
        "several devices": trainer.num_devices != 1 or trainer.num_nodes != 1,
        f"the {trainer.strategy.root_device.type} device (cohorts run on the CPU)": (
            trainer.strategy.root_device.type != "cpu"
        ),
        "accumulate_grad_batches": trainer.accumulate_grad_batches != 1,
        "gradient clipping": bool(trainer.gradient_clip_val),
        f"precision {trainer.precision}": trainer.precision != "32-true",
        "val_check_interval or limits on batches": trainer.val_check_interval != 1.0
        or not trainer.check_val_every_n_epoch
        or any(limit != 1.0 for limit in (trainer.limit_train_batches, trainer.limit_val_batches)),
        "min_epochs or min_steps": bool(trainer.fit_loop.min_epochs or trainer.fit_loop.epoch_loop.min_steps),
        "max_time": any(type(c).__name__ == "Timer" for c in trainer.callbacks),
        "fast_dev_run": bool(trainer.fast_dev_run),
    }
    found = [name for name, bad in checks.items() if bad]
    return f"the trainer sets {found[0]}" if found else None


def _callback_problem(trainer: Trainer) -> str | None:
    for callback in trainer.callbacks:
        if not isinstance(callback, KNOWN_CALLBACKS) and type(callback).__module__.split(".")[0] != "lightning":
            return f"the callback {type(callback).__name__} runs per fit"
    history, early = find_callback(trainer, RunHistory), find_callback(trainer, EarlyStopping)
    checkpoint, noise = find_callback(trainer, ModelCheckpoint), find_callback(trainer, GradientNoiseScale)
    target = find_callback(trainer, StepsToTarget)
    if history is None:
        return "the run history is off"
    if checkpoint is not None and (checkpoint.save_top_k != 0 or checkpoint.save_last):
        return "checkpoints are saved (cohorts need checkpoint.save_top_k: 0 and save_last: false)"
    if early is not None and (early.stopping_threshold is not None or early.divergence_threshold is not None):
        return "early_stopping sets a stopping or divergence threshold"
    if early is not None and early.monitor != history.monitor:
        return "early stopping monitors another metric than the history"
    if noise is not None and (noise.every_n_steps or noise.every_n_epochs):
        return "GradientNoiseScale measures during training (cohorts measure it at the target only)"
    monitor = target and (target.monitor or (early.monitor if early is not None else "val_loss"))  # as its setup
    if target is not None and not target.every_n_steps and monitor != history.monitor:
        return f"StepsToTarget monitors {monitor}, not the validated {history.monitor}"
    return None


def _model_problem(cli: Any) -> str | None:
    """Whether training_step is loss(batch) and logs nothing, validation logs just the monitor as the mean of
    loss(batch) (or, for a model with batch_metrics, just the means of those), and vmap runs the model: tried on
    the first cell's first batches, leaving no trace."""
    model, datamodule = cli.model, cli.datamodule
    with isolate_rng(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            datamodule.setup("fit")
            batch = next(iter(datamodule.train_dataloader()))
            if not torch.equal(model.training_step(batch, 0), model.loss(batch)):
                return "training_step does more than return loss(batch)"
            if any("self.log" in str(warning.message) for warning in caught):
                return "training_step logs its own metrics"
            stacked = StackedModel([model])
            stacked.loss_and_grad(stack_batches([batch]))
            stacked.metrics([0], stack_batches([batch]), "val")
            loggers, cli.trainer.loggers = cli.trainer.loggers, []
            logged = cli.trainer.validate(model, datamodule, verbose=False)[0]
            cli.trainer.loggers = loggers
        except Exception as error:
            return f"the model cannot run vectorized ({one_line(error)})"
    return _validation_problem(cli, logged)


def _validation_problem(cli: Any, logged: dict[str, float]) -> str | None:
    """Whether the model's validation logged just the monitor as the mean of loss(batch) over the validation
    batches, or, where the model has batch_metrics, just the monitor and the others as the means of those."""
    model, monitor = cli.model, find_callback(cli.trainer, RunHistory).monitor
    batches = list(cli.datamodule.val_dataloader())
    sizes = [batch_samples(batch) for batch in batches]
    own = has_batch_metrics(model)
    with torch.no_grad():
        found = [model.batch_metrics(b, "val") if own else {monitor: model.loss(b)} for b in batches]
    means = {name: sum(float(f[name]) * n for f, n in zip(found, sizes, strict=True)) / sum(sizes) for name in found[0]}
    if set(logged) != set(means) or monitor not in means:
        given = f"its batch_metrics give {', '.join(sorted(means))}" if own else f"not just {monitor}"
        return f"validation logs {', '.join(sorted(logged))}, {given}"
    for name, mean in means.items():
        if abs(mean - logged[name]) > 1e-4 * max(1.0, abs(mean)):
            source = "batch_metrics(batch)" if own else "loss(batch)"
            return f"the logged {name} is not the mean of {source} over the validation batches"
    return None


def run_unit(unit: dict[str, list[str]], folder: Path, defaults: Defaults) -> list[dict[str, Any]]:
    """Run one cell, or a cohort of cells as one vectorized fit; returns their rows."""
    return run_one(unit, folder, defaults) if len(unit) == 1 else run_cohort(unit, folder, defaults)


def run_cohort(unit: dict[str, list[str]], folder: Path, defaults: Defaults) -> list[dict[str, Any]]:
    """Fit the cells of a cohort as one vectorized fit; write each cell's folder as its own fit would."""
    quiet_lightning()
    started = time.perf_counter()
    members, loaders = [], []
    for name, args in unit.items():
        cli = CellCLI(args, defaults)  # seeds the global generator and builds the model, as the cell's own fit
        members.append(Member(name, cli))
        cli.before_fit()  # config.yaml
        members[-1].stream.run(lambda cli=cli: cli.datamodule.setup("fit"))
        loaders.append(cli.datamodule.train_dataloader())  # while PL_GLOBAL_SEED is this cell's seed
    lrs = [float(m.cli.model.configure_optimizers().param_groups[0]["lr"]) for m in members]
    stacked = StackedModel([m.cli.model for m in members])
    loader = CohortLoader(loaders, [m.stream for m in members])
    trainer = None
    try:
        bookkeeping = Members(members, stacked, lrs)
        trainer = Trainer(
            accelerator="cpu", devices=1, max_epochs=members[0].cli.trainer.max_epochs, max_steps=-1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            num_sanity_val_steps=0,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`LightningModule.configure_optimizers` returned `None`")
            trainer.fit(CohortModule(stacked, lrs, bookkeeping, loader))
    except SystemExit as exit_info:
        if not is_sigterm(exit_info) and trainer is not None and trainer.interrupted:  # Ctrl-C: the study stops too
            raise KeyboardInterrupt from None
        if not is_sigterm(exit_info):
            raise
        for member in members:  # SIGTERM: every unfinished member is recorded as interrupted, then the study stops
            if member.running:
                member.status = "interrupted"
        on_sigterm = WATCH.note_only()  # those that stopped before the signal are whole cells: finished, then kept
        try:
            bookkeeping.finish_stopped()
        finally:
            WATCH.restore(on_sigterm)
    except Exception as error:  # the cohort's cells are recorded failed, as a cell's own fault is
        text, cohort = traceback.format_exc(), f"cohort of {', '.join(unit)}"
        for member in members:
            member.status = "failed"
            record_failure(folder / member.name, text, one_line(error) if member is members[0] else None, cohort)
    tested = _tests(members, bookkeeping, stacked) if trainer is not None else None
    seconds = (time.perf_counter() - started) / len(members)
    rows = [
        _finish_member(member, k, stacked, lrs[k], (folder, unit[member.name]), seconds, tested)
        for k, member in enumerate(members)
    ]
    if any(member.status == "interrupted" for member in members):
        raise Terminated(f"cohort of {', '.join(unit)}")
    return rows


def _tests(members: list[Member], bookkeeping: Members, stacked: StackedModel) -> dict[int, dict] | None:
    """The test metrics of the finished members, computed together where the model's test logs one metric and it
    is the mean of loss(batch) over the test batches (checked on the first against its own trainer.test); None
    where each member is tested by its own trainer instead. A trainer.test costs about 7 ms a member on CPU."""
    ok = [k for k, member in enumerate(members) if member.status == "ok"]
    first = members[ok[0]].cli if ok else None
    if first is None or not (is_overridden("test_step", first.model) and _has_test_data(first)):
        return {}
    if not is_overridden("test_dataloader", first.datamodule):
        return None
    stacked.load_into(ok[0])
    logged = _test(first)
    own = has_batch_metrics(first.model)
    if not own and len(logged) != 1:
        return None
    found = bookkeeping.mean_metrics(ok, "test")
    if not own:
        found = [{next(iter(logged)): metrics["loss"]} for metrics in found]
    if set(found[0]) != set(logged):
        return None
    if any(not abs(found[0][name] - value) <= 1e-6 * max(1.0, abs(value)) for name, value in logged.items()):
        return None
    return dict(zip(ok, found, strict=True))


def _test(cli: Any) -> dict[str, float]:
    """A cell's own test, its metrics kept out of its event file as run_cell keeps them."""
    metrics: dict[str, float] = {}
    loggers, cli.trainer.loggers = cli.trainer.loggers, []
    for results in cli.trainer.test(cli.model, cli.datamodule, verbose=False):
        metrics.update(scalar_metrics(results))
    cli.trainer.loggers = loggers
    return metrics


def _finish_member(
    member: Member, k: int, stacked: StackedModel, lr: float, where: tuple, seconds: float, tested: dict | None
) -> dict:
    """The member's final weights into its model, its test, hparams and result.json, as run_cell writes them."""
    cli, metrics = member.cli, {}
    member.flush()  # whatever the fit left kept, an interrupted or failed member's too
    stacked.load_into(k)
    if member.status == "ok":
        metrics.update(member.metrics)
        if tested is None:
            metrics.update(_test(cli))
        else:
            metrics.update(tested.get(k, {}))
        _log_hparams(member, lr)
    for logger in member.loggers:
        logger.finalize("success" if member.status == "ok" else "failed")
    row = result_row(cli, member.name, member.status, seconds, metrics)
    row.update(steps=member.step, lr_effective=lr)
    if row["lr"] is None:
        row["lr"] = lr
    folder, args = where
    write_result(folder / member.name, {"row": row, "history": member.history.history, "args": args})
    return row


def _log_hparams(member: Member, lr: float) -> None:
    """The hparams tab, as RunHistory writes it at the end of a fit."""
    cli, history = member.cli, member.history
    run = {
        "seed_everything": member.seed,
        "batch_size": cli.datamodule.hparams.get("batch_size"),
        "global_batch_size": global_batch_size(cli.trainer, cli.datamodule),
        "lr_effective": lr,
        "max_epochs": cli.trainer.max_epochs,
    }
    params = tab_params(cli.model, cli.datamodule, run, history.hparam_keys)
    best = history.best()
    log_tab(member.loggers, params, history.monitor, best[0] if best else None, history.last("train_loss"), member.step)
