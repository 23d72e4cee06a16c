"""ThrottledProgressBar: one terminal line redrawn a few times a second, or one plain line per epoch to a file."""

import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from torch import Tensor

from batchsize_lit.outputs import logged_train_loss, unscaled_loss


@dataclass(slots=True)
class _Pass:
    """Counters of one pass: an epoch of training, or one validation, test or predict loop."""

    stage: str
    total: float  # batches expected; inf when unknown
    started: float  # time.monotonic() at its start
    done: int = 0  # batches finished in this pass
    index: int = 0  # the last finished batch_idx + 1; a resumed epoch starts past 0
    paused: float = 0.0  # seconds of validation inside this training epoch, left out of its speed


class TerminalLine:
    """Where a progress bar writes: in a terminal, one line redrawn in place with a carriage return and cut to the
    terminal's width; anywhere else, whole lines only."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self.tty = False  # this run redraws a line in place
        self.width = 0  # characters of the open line; 0 when none is open
        self.columns = 80

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def start(self, live: bool | None) -> None:
        """At the start of each run: redraw in place (live; null decides by stream.isatty()), and the width."""
        self.tty = live if live is not None else _isatty(self.stream)
        self.columns = shutil.get_terminal_size().columns

    def redraw(self, *parts: str) -> None:
        """Draw the open line over the last one, cut to the terminal's width."""
        line = _join(parts)[: max(self.columns - 1, 20)]
        self.write("\r" + line.ljust(self.width))
        self.width = len(line)

    def end(self, *parts: str) -> None:
        """A finished line: over the open one in a terminal, else a plain line."""
        line = _join(parts)
        self.write(("\r" + line.ljust(self.width) if self.tty else line) + "\n")
        self.width = 0

    def clear(self) -> bool:
        """Blank the open line, so that other output starts on a clean line; whether one was open."""
        if not self.width:
            return False
        self.write("\r" + " " * self.width + "\r")
        self.width = 0
        return True

    def close(self) -> None:
        """End the open line where it stands."""
        if self.width:
            self.write("\n")
            self.width = 0

    def write(self, text: str) -> None:
        stream = self.stream
        stream.write(text)
        stream.flush()


class ThrottledProgressBar(ProgressBar):
    """A progress bar whose cost does not grow with the step rate.

    In a terminal (``stream.isatty()``), one line is redrawn with a carriage return at most every
    ``refresh_seconds``: stage, epoch, batch, speed, the last step's train loss and the shown metrics. Each epoch
    ends with a newline, so finished epochs stay on screen. Anywhere else (a file, a pipe, CI logs) there are no
    redraws: one line per training epoch, printed at its end after its validation, and one line at the end of a
    validate or test run, none for predict. Epochs count from 1. A training step costs a counter, a reference to
    its loss and, in a terminal only, one ``time.monotonic()`` comparison; the loss becomes a number only when a
    line is drawn.

    Only global rank zero writes, to sys.stdout unless ``stream`` says otherwise, as TQDMProgressBar does. The
    shown metrics are the train loss, the progress-bar metrics (``self.log(..., prog_bar=True)``), and those of
    ``metrics`` and of any callback's ``monitor`` that are logged.
    """

    def __init__(
        self,
        refresh_seconds: float = 0.1,
        stream: IO[str] | None = None,
        live: bool | None = None,
        metrics: Sequence[str] = ("val_loss",),
    ) -> None:
        """
        Args:
            refresh_seconds: Least time between two redraws of the terminal line.
            stream: Where to write; null is sys.stdout, looked up at each write.
            live: Redraw one line in place (true) or print one line per epoch (false); null decides by
                stream.isatty() when each fit, validate, test or predict run starts.
            metrics: Logged metrics to show besides the progress-bar ones, when logged, e.g. val_loss.
        """
        super().__init__()
        if not refresh_seconds >= 0:
            raise ValueError(f"refresh_seconds={refresh_seconds!r} must be >= 0")
        self.refresh_seconds = refresh_seconds
        self.live = live
        self.metrics = tuple(metrics)
        self._line = TerminalLine(stream)
        self._enabled = True
        self._rank_zero = True  # global rank zero, as the trainer of the last setup says; only it writes
        self._live = False  # redraws on now: enabled, rank zero and a terminal; read once a step
        self._monitored: tuple[str, ...] = ()
        self._train: _Pass | None = None
        self._eval: _Pass | None = None
        self._outputs: Any = None  # the last training_step output; its loss is read only when drawn
        self._next_draw = 0.0
        self._shown = ""  # the metrics of the last train redraw, kept on the line while validating

    @property
    def stream(self) -> IO[str]:
        return self._line.stream

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._rank_zero

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        self._enabled = False
        self._live = False

    def enable(self) -> None:
        self._enabled = True
        self._live = self._line.tty and self.is_enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print above the live line, which comes back at the next redraw."""
        if self._line.clear():
            self._next_draw = 0.0
        kwargs.setdefault("file", self.stream)
        print(*args, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._rank_zero = trainer.is_global_zero
        self._line.start(self.live)
        self._live = self._line.tty and self.is_enabled
        self._monitored = tuple(
            callback.monitor for callback in trainer.callbacks if isinstance(getattr(callback, "monitor", None), str)
        )

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The last step's train loss (returned by training_step, else as the model logs it), the progress-bar
        metrics, and the logged ones of metrics and monitors."""
        items: dict[str, Any] = {}
        loss = unscaled_loss(self._outputs, trainer, pl_module)
        if loss is None and (logged := logged_train_loss(trainer)) is not None:  # training_step returned none
            loss = logged[1]
        if loss is not None:
            items["train_loss"] = loss.item()
        items.update(super().get_metrics(trainer, pl_module))
        items.pop("v_num", None)
        logged = trainer.callback_metrics
        for name in (*self.metrics, *self._monitored):
            if name not in items and name in logged:
                items[name] = _scalar(logged[name])
        return items

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.on_train_epoch_start(trainer, pl_module)  # a fit resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train = _Pass("train", self.total_train_batches, time.monotonic())
        self._outputs = None
        self._shown = ""
        self._next_draw = self._train.started + self.refresh_seconds

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        train = self._train
        train.done += 1
        train.index = batch_idx + 1
        if outputs is not None:
            self._outputs = outputs
        if self._live and time.monotonic() >= self._next_draw:
            self._shown = _format(self.get_metrics(trainer, pl_module))
            self._line.redraw(_epoch(trainer), f"train {_of(train.index, train.total)}", _speed(train), self._shown)
            self._next_draw = time.monotonic() + self.refresh_seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank reads the metrics here, so a sync_dist metric's epoch reduction runs on all ranks at once.
        metrics = _format(self.get_metrics(trainer, pl_module))
        if self.is_enabled and self._train is not None:
            train = self._train
            self._line.end(_epoch(trainer), f"{train.done} batches", _speed(train), metrics)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._line.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._line.close()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._eval = None
        else:
            total = self.total_val_batches if trainer.state.fn == "fit" else _sum(trainer.num_val_batches)
            self._start_eval("validate", total)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        run = self._eval
        if run is None:
            return
        run.done += 1
        if self._live and time.monotonic() >= self._next_draw:
            fit = trainer.state.fn == "fit"  # validating inside fit: the epoch's line keeps its train metrics
            where, shown = (_epoch(trainer), self._shown) if fit else ("", "")
            self._line.redraw(where, f"{run.stage} {_of(run.done, run.total)}", _speed(run), shown)
            self._next_draw = time.monotonic() + self.refresh_seconds

    on_test_batch_end = on_predict_batch_end = on_validation_batch_end  # every evaluation loop counts alike

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._eval is None:
            return
        if trainer.state.fn == "fit":
            if self._train is not None:
                self._train.paused += time.monotonic() - self._eval.started
            self._eval, self._next_draw = None, 0.0
        else:
            self._end_eval(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_eval("test", _sum(trainer.num_test_batches))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_eval(trainer)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_eval("predict", _sum(trainer.num_predict_batches))

    on_predict_end = on_test_end

    def _start_eval(self, stage: str, total: float) -> None:
        self._eval = _Pass(stage, total, time.monotonic())
        self._next_draw = self._eval.started + self.refresh_seconds

    def _end_eval(self, trainer: pl.Trainer) -> None:
        """The line of a validate, test or predict run; predict prints one in a terminal only."""
        run, self._eval = self._eval, None
        if run is None or not self.is_enabled or (run.stage == "predict" and not self._line.tty):
            return
        self._line.end(*_eval_line(run, trainer))


def _eval_line(run: _Pass, trainer: pl.Trainer) -> tuple[str, ...]:
    """The parts of a finished validate, test or predict run's line: its batches, speed and logged metrics."""
    logged = {} if run.stage == "predict" else trainer.callback_metrics
    metrics = _format({name: _scalar(value) for name, value in logged.items()})
    return f"{run.stage}: {run.done} batches", _speed(run), metrics


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, Tensor) and value.numel() == 1 else value


def _sum(batches: float | list[float]) -> float:
    """Batches of all dataloaders; Lightning gives a list, one count per dataloader."""
    return sum(batches) if isinstance(batches, list) else batches


def _epoch(trainer: pl.Trainer) -> str:
    """'epoch k/max', counted from 1; without /max when there is no epoch limit."""
    limit = trainer.max_epochs
    return f"epoch {trainer.current_epoch + 1}" + (f"/{limit}" if limit is not None and limit > 0 else "")


def _of(count: int, total: float) -> str:
    return f"{count}/{int(total)}" if math.isfinite(total) and total > 0 else str(count)


def _speed(run: _Pass) -> str:
    seconds = time.monotonic() - run.started - run.paused
    if run.done == 0 or seconds <= 0:
        return ""
    rate = run.done / seconds
    if rate >= 100:
        return f"{rate:.0f} it/s"
    return f"{rate:.3g} it/s" if rate >= 1 else f"{1 / rate:.3g} s/it"


def _format(metrics: Mapping[str, Any]) -> str:
    """'name value' pairs, numbers to 4 significant digits."""
    return "  ".join(f"{name} {_number(value)}" for name, value in metrics.items())


def _number(value: Any) -> str:
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)


def _join(parts: Sequence[str]) -> str:
    return "  ".join(part for part in parts if part)
