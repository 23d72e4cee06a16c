"""The per-member bookkeeping of a cohort fit: what each cell's own callbacks would record, log and decide."""

import math
import time
from typing import Any

import torch
from torch import Tensor

from batchsize_lit.callbacks import DivergenceCheck, EarlyStopping, RunHistory
from batchsize_lit.cohort_module import (
    MemberStream,
    StackedModel,
    member_batch_size,
    stack_batches,
)
from batchsize_lit.hparams_tab import global_seed
from batchsize_lit.outputs import batch_samples
from batchsize_lit.problem import has_batch_metrics, reference_facts, run_report
from batchsize_lit.run_history import epoch_log_interval
from batchsize_lit.science import GradientNoiseScale, StepsToTarget, noise_scales_in_eval
from batchsize_lit.trainer_info import find_callback

FLUSH_SECONDS = 30.0  # how often the members' kept metrics reach their loggers during a fit


class Member:
    """One cell of a cohort: its CLI objects (model, data, trainer config, loggers, callbacks) and its progress."""

    def __init__(self, name: str, cli: Any) -> None:
        self.name, self.cli = name, cli
        trainer = cli.trainer
        self.loggers = list(trainer.loggers)  # all of them, as the cell's own fit logs to each
        self.history = find_callback(trainer, RunHistory)
        self.target = find_callback(trainer, StepsToTarget)
        self.noise = find_callback(trainer, GradientNoiseScale)
        self.early = find_callback(trainer, EarlyStopping)
        self.divergence = find_callback(trainer, DivergenceCheck)
        self.stream = MemberStream()  # the global generator as this cell's fit starts: after its seed and init
        self.seed = global_seed()
        self.step, self.status, self.running = 0, "ok", True
        self.should_stop = False
        self.validated: int | None = None
        self.last_loss: float | None = None
        self.monitor_value: float | None = None  # the monitor's latest value, as callback_metrics holds it
        self.metrics: dict[str, float] = {}  # the latest validation's metrics, the monitor among them
        self.best_weights: dict[str, Tensor] | None = None
        self.pending: list[tuple[dict[str, float], int]] = []  # logged metrics not yet given to the loggers

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Kept until ``flush``: a TensorBoard logger's writer thread wakes for every event and takes the GIL from
        the training step, which made a cohort's steps up to twice as slow; written in bursts, it costs the events
        alone."""
        if self.loggers and metrics:
            self.pending.append((metrics, step))

    def flush(self) -> None:
        """The kept metrics given to the loggers, in the order they were logged."""
        pending, self.pending = self.pending, []
        for metrics, step in pending:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)

    def as_trainer(self) -> "MemberTrainer":
        return MemberTrainer(self)


class MemberTrainer:
    """What StepsToTarget's and GradientNoiseScale's train-start, train-end and fit-end hooks read of a trainer,
    for one member: its callbacks, data, step and logger. The member's own callbacks then run their own code."""

    def __init__(self, member: Member) -> None:
        trainer = member.cli.trainer
        self.callbacks, self.datamodule, self.global_step = trainer.callbacks, member.cli.datamodule, member.step
        self.accumulate_grad_batches = trainer.accumulate_grad_batches  # where a failed measurement settles on another
        self.loggers = member.loggers


class Members:
    """Drives the members through one cohort fit in the order a serial cell's callbacks run, step by step: the
    target check, the train loss, the divergence check, validation with early stopping, then the epoch's end."""

    def __init__(self, members: list[Member], stacked: StackedModel, lrs: list[float]) -> None:
        self.members, self.stacked, self.lrs = members, stacked, lrs
        first = members[0].cli
        self.trainer, self.datamodule = first.trainer, first.datamodule
        self.max_steps, self.max_epochs = self.trainer.max_steps, self.trainer.max_epochs
        self.val_every = self.trainer.check_val_every_n_epoch
        n_batches = len(first.datamodule.train_dataloader())
        every = self.trainer.log_every_n_steps
        self.log_every = epoch_log_interval(every, n_batches) if members[0].history.log_every_epoch else every
        self.early_at_epoch_end = self.val_every == 1 and self.trainer.val_check_interval == 1.0
        self.facts = reference_facts(first.datamodule, first.model)
        self.own_metrics = has_batch_metrics(first.model)  # else the validation logs the mean loss alone
        self.loss_sums: Tensor | None = None  # per member, this epoch's
        self.batches: list[int] = []
        self.stopped: list[int] = []  # members stopped, their train and fit ends still to run (finish_stopped)
        self.flushed = time.monotonic()
        self._start()

    def _start(self) -> None:
        """What each cell's fit does before its first step: hyperparameters logged, the target set, the examples
        of the noise scale and the concatenated validation data read (each draw from the member's own stream)."""
        for member in self.members:
            cli = member.cli
            hparams = {**cli.model.hparams_initial, **(getattr(cli.datamodule, "hparams_initial", None) or {})}
            for logger in member.loggers:
                logger.log_hyperparams(hparams)
                logger.save()
            if member.target is not None:  # its targets, and the validation data it checks every_n_steps on
                member.target.setup(cli.trainer, cli.model, "fit")
                start = member.target.on_train_start
                member.stream.run(lambda start=start, member=member: start(member.as_trainer(), member.cli.model))
            if member.noise is not None:  # as GradientNoiseScale reads them: drawing nothing training would see
                member.noise.use_examples(cli.datamodule.train_dataloader())

    def finish_stopped(self) -> None:
        _finish_stopped(self)

    def active(self) -> list[int]:
        return [k for k, member in enumerate(self.members) if member.running]

    def after_step(self, losses: Tensor, batch: Any, active: list[int], epoch: int, last: bool) -> bool:
        """Each active member's bookkeeping after a step; True once every member has stopped.

        The per-step work is done on all members at once where it can be (the epoch's loss sums are one tensor,
        the losses are read as floats in one call); a member's own callbacks decide only where their state can
        change. Per member and step, Python costs about a microsecond a line, and a critical-batch cohort has 50
        members and 1000 steps."""
        size = member_batch_size(batch)
        for k in active:
            member = self.members[k]
            member.step += 1
            member.history.samples += size
        self._target_checks(active)
        self._train_losses(losses, active)
        validating = []
        for k in active:
            member = self.members[k]
            if member.running and _epoch_due(epoch, self.val_every) and (last or member.should_stop):
                validating.append(k)
        if validating:
            self._validate(validating, epoch)
        for k in active:
            member = self.members[k]
            at_max = 0 < self.max_steps <= member.step or (last and epoch + 1 == self.max_epochs)
            if member.running and (last or member.should_stop or at_max):
                self._epoch_end(k, epoch)
                if member.running and (member.should_stop or at_max):
                    member.running = False  # updated no more; its train and fit ends come at the fit's train end
                    self.stopped.append(k)
        if time.monotonic() - self.flushed > FLUSH_SECONDS:
            self.flush()
        return not self.active()

    def flush(self) -> None:
        """Every member's kept metrics given to its logger, so TensorBoard shows a long fit as it goes."""
        for member in self.members:
            member.flush()
        self.flushed = time.monotonic()

    def _target_checks(self, active: list[int]) -> None:
        target = self.members[active[0]].target
        if target is None or not target.every_n_steps or self.members[active[0]].step % target.every_n_steps:
            return
        with torch.no_grad():
            ks = None if len(active) == len(self.members) else active  # the stopped members left out
            values = self.stacked.loss(target.validation_data, shared=True, ks=ks).tolist()
        for k, value in zip(active, values, strict=True):
            self._target_check(k, value)

    def _target_check(self, k: int, value: float) -> None:
        """The member's own StepsToTarget decides, given the member's weights as its state_dict."""
        member = self.members[k]
        if member.target.unchanged_by(value):  # most checks: far from every target, nothing to record
            return
        if member.target.check(value, member.step, member.history.samples, lambda: self.stacked.state_dict(k)):
            member.should_stop = True

    def _train_losses(self, losses: Tensor, active: list[int]) -> None:
        """The epoch's loss sums of the active members, in float32 as RunHistory sums each cell's; the train loss
        logged every log_every steps, and the divergence check, as a cell's own callbacks do them."""
        if self.loss_sums is None:
            self.loss_sums, self.batches = torch.zeros_like(losses), [0] * len(self.members)
        mask = torch.zeros(len(self.members), dtype=torch.bool)
        mask[active] = True
        self.loss_sums = torch.where(mask, self.loss_sums + losses, self.loss_sums)
        values = losses.tolist()
        for k in active:
            member = self.members[k]
            self.batches[k] += 1
            member.last_loss = values[k]
            if member.step % self.log_every == 0:
                member.log({"train_loss_step": values[k]}, member.step)
            divergence = member.divergence
            every = (divergence.every_n_steps if divergence else None) or self.log_every or 1
            if divergence is not None and member.step % every == 0 and not math.isfinite(values[k]):
                self._diverge(member)

    def _diverge(self, member: Member) -> None:
        member.running, member.status = False, "diverged"

    def mean_metrics(self, ks: list[int], stage: str) -> list[dict[str, float]]:
        """Each member's metrics over its own ``stage`` batches (val or test): the mean of each of the model's
        batch_metrics (else of its loss, named ``loss``) weighted by the batches' sizes, summed in float32 as a
        MeanMetric sums; all members' batches in one vmap per batch."""
        loaders = [getattr(self.members[k].cli.datamodule, f"{stage}_dataloader")() for k in ks]
        batches = [
            self.members[k].stream.run(lambda loader=loader: list(loader))
            for k, loader in zip(ks, loaders, strict=True)
        ]
        totals: dict[str, Tensor] = {}
        count = 0
        for parts in zip(*batches, strict=True):
            size = batch_samples(parts[0])
            for name, values in self.stacked.metrics(ks, stack_batches(list(parts)), stage).items():
                totals[name] = values * size if name not in totals else totals[name] + values * size
            count += size
        means = {name: (total / count).tolist() for name, total in totals.items()}
        return [{name: values[i] for name, values in means.items()} for i in range(len(ks))]

    def _validate(self, ks: list[int], epoch: int) -> None:
        """The metrics of each validating member, the monitor among them: the means of the model's batch_metrics,
        or of loss(batch) under the monitor's name, over its validation batches (the model's own validation was
        checked to log just these, when the cohort was formed)."""
        for k, found in zip(ks, self.mean_metrics(ks, "val"), strict=True):
            member = self.members[k]
            history = member.history
            metrics = found if self.own_metrics else {history.monitor: found["loss"]}
            value = metrics[history.monitor]
            member.monitor_value, member.metrics, member.validated = value, metrics, epoch
            # the calls a cell's fit makes to its loggers, in its order: Lightning's, then RunHistory's
            member.log({**metrics, "epoch": epoch}, member.step - 1)  # where Lightning logs them
            member.log({f"by_epoch/{history.monitor}": value}, epoch + 1)
            member.log({f"by_samples/{history.monitor}": value}, history.samples)
            if member.target is not None and not member.target.every_n_steps:
                self._target_check(k, value)
            if not self.early_at_epoch_end:
                self._early_stopping(k, epoch)

    def _early_stopping(self, k: int, epoch: int) -> None:
        member, early = self.members[k], self.members[k].early
        if early is None or member.monitor_value is None:
            return
        current = torch.tensor(member.monitor_value)
        if early.check_finite and not torch.isfinite(current):
            member.should_stop = True
        elif early.monitor_op(current - early.min_delta, early.best_score):
            early.best_score, early.wait_count, early.best_epoch = current, 0, epoch
            if early.restore_best_weights:
                member.best_weights = self.stacked.snapshot(k)
        else:
            early.wait_count += 1
            if early.wait_count >= early.patience:
                member.should_stop = True

    def _epoch_end(self, k: int, epoch: int) -> None:
        member, history = self.members[k], self.members[k].history
        if self.early_at_epoch_end:
            self._early_stopping(k, epoch)
        row: dict[str, float] = {"epoch": epoch + 1, "step": member.step, "samples": history.samples}
        model = self.stacked.load_into(k)
        at_step = run_report(self.facts, model, member.cli.datamodule).columns
        if self.batches[k]:
            row["train_loss"] = float(self.loss_sums[k] / self.batches[k])
            member.log({"train_loss_epoch": row["train_loss"]}, member.step)
            member.log({"by_epoch/train_loss": row["train_loss"]}, epoch + 1)
            member.log({"by_samples/train_loss": row["train_loss"]}, history.samples)
        member.log(at_step, member.step)
        if member.validated == epoch and member.monitor_value is not None:
            row[history.monitor] = member.monitor_value
        history.history.append(row)
        self.loss_sums[k], self.batches[k] = 0.0, 0
        if member.divergence is not None and member.last_loss is not None and not math.isfinite(member.last_loss):
            self._diverge(member)


def _epoch_due(epoch: int, every: int | None) -> bool:
    return bool(every) and (epoch + 1) % every == 0


def _finish_stopped(bookkeeping: Members) -> None:
    """The train end and fit end of each member that stopped, as its cell's callbacks run them: StepsToTarget's
    own train end (a target still within its hold not reached; the noise scale measured at each reached target's
    weights, for all these members in one vectorized call), the best weights restored, StepsToTarget's own fit end
    (the target/ tags). Run at the fit's train end (or after a SIGTERM): a stopped member is updated and logged no
    more, so waiting for the others moves nothing."""
    done, bookkeeping.stopped = bookkeeping.stopped, []
    members, stacked = bookkeeping.members, bookkeeping.stacked
    for k in done:  # the training's metrics before those of the train and fit ends, as a cell's event file has them
        members[k].flush()
    pending = [
        (k, index, weights)
        for k in done
        if members[k].target is not None
        for index, weights in members[k].target.end_holds(members[k].noise)
    ]
    measured = _noise_scales(members, stacked, pending)
    for k in done:
        member, trainer = members[k], members[k].as_trainer()
        if mine := [(n, index, weights) for n, (j, index, weights) in enumerate(pending) if j == k]:
            if measured:  # logged under gns/ at the member's step, as its cell's measurement is
                values = [member.noise.record(trainer, measured[n]) for n, _, _ in mine]
            else:  # one by one, where the members could not be measured together
                values = member.noise.measure_at(trainer, stacked.models[k], [weights for _, _, weights in mine])
            member.target.take([(index, weights) for _, index, weights in mine], values)
        if member.early is not None and member.early.restore_best_weights and member.best_weights is not None:
            stacked.restore(k, member.best_weights)
        if member.target is not None:
            member.target.on_fit_end(trainer, stacked.models[k])


def _noise_scales(members: list[Member], stacked: StackedModel, pending: list[tuple]) -> list[dict[str, float]]:
    """The noise scales at the pending (member, target, weights), each on its member's examples, in one call; [] if
    there are none, or the members' examples stand for data sets of different sizes, or the call fails."""
    found = [members[k].noise.examples for k, _, _ in pending]
    if not pending or len({population for _, population in found}) != 1:
        return []
    pairs = [  # with the member's own buffers where the state_dict leaves some out (non-persistent ones)
        ({**stacked.buffers_of(k), **weights}, examples)
        for (k, _, weights), (examples, _) in zip(pending, found, strict=True)
    ]
    try:
        return noise_scales_in_eval(stacked.models[pending[0][0]], pairs, found[0][1])
    except Exception:  # each member's own measurement then says what failed, as its cell's would
        return []
