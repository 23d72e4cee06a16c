"""The optional interface through which a model or data module adds its problem's facts, report and loss."""

import functools
import inspect
from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor


class RunReport(NamedTuple):
    """What a model or data module adds to the end of a run."""

    columns: dict[str, float]
    """Extra results.csv columns of a study cell, e.g. the learned weight and bias."""
    lines: list[str]
    """Extra lines of the end-of-fit summary."""


@runtime_checkable
class ReferenceFacts(Protocol):
    """Numbers that describe the problem, fixed for a run: computed from the data, never hard-coded.

    Any key may appear; every study row gets them as columns, and ``run_report`` receives them. The template
    itself reads a few names where they exist:

    - ``noise_floor``: the lowest loss any model can reach; the study plots draw it.
    - ``lr_max_stable``: the largest stable learning rate of plain SGD (no momentum); with that optimizer, the fit
      warns before training when its lr is at or above it, and a diverged fit names it as the likely cause.
    - ``<metric>_at_optimum``, e.g. ``val_loss_at_optimum``: the metric's value at the best possible fit;
      ``StepsToTarget`` sets its default target from it.
    """

    def reference_facts(self) -> dict[str, float]: ...


@runtime_checkable
class Reports(Protocol):
    """Adds result columns and summary lines, given the run's reference facts.

    A class may also name its columns in advance, in a class attribute ``report_columns`` (a tuple of names): a
    study's results.csv and table then show them right after the losses, in that order; other columns follow the
    documented ones.
    """

    def run_report(self, facts: dict[str, float]) -> RunReport: ...


class HasLoss(Protocol):
    """The mean loss of a batch as a pure function of the parameters: no logging, no metric updates, no module that
    mixes examples (BatchNorm in train mode). ``GradientNoiseScale`` takes exact per-example gradients through it
    with ``torch.func``, and ``StepsToTarget`` evaluates it on the validation split between validations."""

    def loss(self, batch: Any) -> Tensor: ...


def has_loss(model: Any) -> bool:
    """Whether the model implements HasLoss: its class defines a ``loss(batch)`` method (a loss module kept as
    ``self.loss`` is not one)."""
    return inspect.isfunction(getattr(type(model), "loss", None))


class HasBatchMetrics(Protocol):
    """What a model whose validation (or test) logs more than the mean of ``loss(batch)`` gives a study's cohorts:
    the metrics that stage logs, of one batch, each the mean over the batch's examples (``val_loss`` and
    ``val_acc`` for stage ``val``, say), as pure functions of the parameters and the batch, as HasLoss's ``loss``.
    A cohort computes every member's with vmap, and a logged value as the mean over the stage's batches weighted by
    their sizes; it checks, on one member, that these equal what the model's own validation logs."""

    def batch_metrics(self, batch: Any, stage: str) -> dict[str, Tensor]: ...


def has_batch_metrics(model: Any) -> bool:
    """Whether the model's class defines HasBatchMetrics' ``batch_metrics(batch, stage)``."""
    return inspect.isfunction(getattr(type(model), "batch_metrics", None))


@functools.cache
def _provides(cls: type, protocol: type) -> bool:
    """Whether a class implements a method-only protocol: asked once per class, since a runtime protocol check
    costs tens of microseconds and a run's history asks at every epoch's end."""
    return issubclass(cls, protocol)


def reference_facts(*parts: Any) -> dict[str, float]:
    """The reference facts of every part (model, data module) that provides them, merged."""
    facts: dict[str, float] = {}
    for part in parts:
        if _provides(type(part), ReferenceFacts):
            facts.update(part.reference_facts())
    return facts


def run_report(facts: dict[str, float], *parts: Any) -> RunReport:
    """The run reports of every part that provides one, merged."""
    report = RunReport({}, [])
    for part in parts:
        if _provides(type(part), Reports):
            one = part.run_report(facts)
            report.columns.update(one.columns)
            report.lines.extend(one.lines)
    return report


def report_columns(*classes: Any) -> list[str]:
    """The run report columns that the classes (model or data module classes, or None) name in advance, in order."""
    return list(dict.fromkeys(name for cls in classes for name in getattr(cls, "report_columns", ())))
