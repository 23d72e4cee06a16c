"""The end-of-fit summary: how and why the fit stopped, the best epoch, what the model and data add, where to look."""

import lightning.pytorch as pl

from batchsize_lit import runs
from batchsize_lit.early_stopping import EarlyStopping
from batchsize_lit.problem import reference_facts, run_report
from batchsize_lit.run_history import RunHistory
from batchsize_lit.trainer_info import find_callback
from batchsize_lit.weight_averaging import added_epochs


def fit_summary(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule | None,
    log_dir: str | None,
    seconds: float,
) -> str:
    """The end-of-fit report: how and why it stopped, the best epoch, what the model and data add."""
    history = find_callback(trainer, RunHistory)
    stopper = find_callback(trainer, EarlyStopping)
    added = added_epochs(trainer, model)  # StochasticWeightAveraging's batch-norm epoch: trains nothing
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
    facts = reference_facts(datamodule, model)
    lines += [f"  {line}" for line in run_report(facts, model, datamodule).lines]
    lines.append(f"  {trainer.global_step} steps, {history.samples} samples seen, {seconds:.1f} s")
    lines += [f"  {line}" for line in runs.where_to_look(trainer, log_dir)]
    return "\n".join(lines)
