"""ThrottledProgressBar: a line per epoch in a file, few redraws in a terminal, one line per validate or test run."""

import io
import itertools
import os
import pickle
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset, RandomIterableDataset
from torch.utils.data import DataLoader

from batchsize_lit import progress
from batchsize_lit.progress import ThrottledProgressBar

from helpers import ROOT

NUMBER = r"-?\d[\d.e+-]*"


class Terminal(io.StringIO):
    """What a terminal's stream says about itself."""

    def isatty(self) -> bool:
        return True


class Model(BoringModel):
    """BoringModel that logs val_loss and test_loss and remembers its last training loss."""

    def __init__(self, train_batches: int = 64) -> None:
        super().__init__()
        self.train_batches = train_batches
        self.last_loss = None

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.last_loss = out["loss"].item()
        return out

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("val_loss", out["x"])
        return out

    def test_step(self, batch, batch_idx):
        out = super().test_step(batch, batch_idx)
        self.log("test_loss", out["y"])
        return out

    def train_dataloader(self):
        return DataLoader(RandomDataset(32, self.train_batches))

    def configure_optimizers(self):
        return torch.optim.SGD(self.layer.parameters(), lr=0.01)


def trainer(tmp_path, bar: ThrottledProgressBar, **kwargs) -> Trainer:
    defaults = dict(max_epochs=3, limit_train_batches=20, limit_val_batches=3, logger=False)
    return Trainer(
        **{**defaults, **kwargs},
        accelerator="cpu",
        callbacks=[bar],
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def fake_clock(monkeypatch, tick: float = 0.001) -> None:
    """The bar's clock advances `tick` seconds each time it is read, so redraws come at fixed steps."""
    ticks = itertools.count()
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: next(ticks) * tick))


def shown(text: str) -> list[str]:
    """The lines a terminal shows: each line's text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]


def test_a_file_gets_one_line_per_epoch_with_the_loss_and_val_loss(tmp_path):
    stream = io.StringIO()
    model = Model()
    fit = trainer(tmp_path, ThrottledProgressBar(stream=stream))
    fit.fit(model)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3  # nothing for the sanity check
    for epoch, line in enumerate(lines, 1):
        assert re.fullmatch(
            rf"epoch {epoch}/3  20 batches  {NUMBER} it/s  train_loss {NUMBER}  val_loss {NUMBER}", line
        ), line
    assert f"train_loss {model.last_loss:.4g}  " in lines[-1]
    assert lines[-1].endswith(f"val_loss {fit.callback_metrics['val_loss'].item():.4g}")


def test_the_loss_shown_is_the_step_loss_under_gradient_accumulation(tmp_path):
    stream = io.StringIO()
    model = Model()
    trainer(tmp_path, ThrottledProgressBar(stream=stream), max_epochs=1, accumulate_grad_batches=4).fit(model)
    assert f"train_loss {model.last_loss:.4g}  " in stream.getvalue()


def test_a_terminal_gets_few_redraws_and_one_kept_line_per_epoch(tmp_path, monkeypatch):
    fake_clock(monkeypatch)
    stream = Terminal()
    model = Model(train_batches=2000)
    bar = ThrottledProgressBar(refresh_seconds=0.05, stream=stream)
    trainer(tmp_path, bar, max_epochs=2, limit_train_batches=None).fit(model)
    text = stream.getvalue()
    # About one clock reading a step, 50 to a redraw: some 40 redraws an epoch, not 2000.
    assert 20 <= text.count("\r") <= 2 * 100, text.count("\r")
    assert re.search(rf"\repoch 1/2  train 1\d\d\d/2000  {NUMBER} it/s  train_loss {NUMBER}\r", text)
    lines = shown(text)
    assert lines[-1] == ""
    assert [line.split("  ")[:2] for line in lines[:-1]] == [[f"epoch {k}/2", "2000 batches"] for k in (1, 2)]
    assert all(re.search(rf"train_loss {NUMBER}  val_loss {NUMBER}$", line) for line in lines[:-1])


def test_validate_and_test_print_one_line_each_and_predict_none(tmp_path):
    stream = io.StringIO()
    model = Model()
    evaluate = trainer(tmp_path, ThrottledProgressBar(stream=stream), limit_test_batches=7, limit_predict_batches=5)
    evaluate.validate(model, verbose=False)
    evaluate.test(model, verbose=False)
    evaluate.predict(model)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(rf"validate: 3 batches  {NUMBER} it/s  val_loss {NUMBER}", lines[0]), lines[0]
    assert re.fullmatch(rf"test: 7 batches  {NUMBER} it/s  test_loss {NUMBER}", lines[1]), lines[1]


def test_a_terminal_ends_each_run_with_its_line(tmp_path, monkeypatch):
    fake_clock(monkeypatch)
    stream = Terminal()
    evaluate = trainer(tmp_path, ThrottledProgressBar(refresh_seconds=0.01, stream=stream), limit_test_batches=40)
    evaluate.test(Model(), verbose=False)
    evaluate.predict(Model())
    text = stream.getvalue()
    assert re.search(r"\rtest \d+/40  ", text)
    lines = shown(text)
    assert re.fullmatch(rf"test: 40 batches  {NUMBER} it/s  test_loss {NUMBER}", lines[0]), lines[0]
    assert re.fullmatch(rf"predict: 64 batches  {NUMBER} it/s", lines[1]), lines[1]
    assert lines[2:] == [""]


@pytest.mark.parametrize(("max_epochs", "epoch", "count"), [(-1, "epoch 1", r"\d+/60"), (2, "epoch 1/2", r"\d+")])
def test_without_epoch_limit_or_batch_count(tmp_path, monkeypatch, max_epochs, epoch, count):
    """An iterable dataset of unknown length, stopped by max_steps: no '/max' without max_epochs; the batch total is
    what max_steps leaves when there is no max_epochs, and unknown (not shown) when there is."""
    fake_clock(monkeypatch)

    class Endless(Model):
        def train_dataloader(self):
            return DataLoader(RandomIterableDataset(32, 10**9))

    stream = Terminal()
    bar = ThrottledProgressBar(refresh_seconds=0.01, stream=stream)
    fit = trainer(tmp_path, bar, max_epochs=max_epochs, max_steps=60, limit_train_batches=None, limit_val_batches=0)
    fit.fit(Endless())
    assert fit.num_training_batches == float("inf")
    text = stream.getvalue()
    assert re.search(rf"\r{epoch}  train {count}  {NUMBER} it/s  ", text), text
    assert re.fullmatch(rf"{epoch}  60 batches  {NUMBER} it/s  train_loss {NUMBER}", shown(text)[0]), shown(text)
    assert shown(text)[1:] == [""]


def test_module_print_lands_on_its_own_line(tmp_path, monkeypatch):
    fake_clock(monkeypatch)

    class Talks(Model):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            if batch_idx == 10:
                self.print("hello from step 10")

    stream = Terminal()
    trainer(tmp_path, ThrottledProgressBar(refresh_seconds=0.005, stream=stream), max_epochs=1).fit(Talks())
    lines = shown(stream.getvalue())
    assert lines[0] == "hello from step 10"
    assert lines[1].startswith("epoch 1/1  20 batches  ")


def test_disabled_bar_writes_nothing(tmp_path):
    stream = io.StringIO()
    bar = ThrottledProgressBar(stream=stream)
    bar.disable()
    fit = trainer(tmp_path, bar, max_epochs=1)
    fit.fit(Model())
    fit.test(Model(), verbose=False)
    assert stream.getvalue() == ""
    assert bar.is_disabled
    bar.enable()
    assert bar.is_enabled


def test_pickles_after_a_fit(tmp_path):
    """ddp_spawn pickles the trainer with its callbacks."""
    bar = ThrottledProgressBar(stream=io.StringIO())
    trainer(tmp_path, bar, max_epochs=1).fit(Model())
    assert pickle.loads(pickle.dumps(bar)).refresh_seconds == bar.refresh_seconds


def test_rejects_a_negative_refresh():
    with pytest.raises(ValueError, match="refresh_seconds"):
        ThrottledProgressBar(refresh_seconds=-1)


SCRIPT = """
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from batchsize_lit.progress import ThrottledProgressBar

Trainer(accelerator="cpu", max_epochs=5, callbacks=[ThrottledProgressBar()], logger=False,
        enable_checkpointing=False, enable_model_summary=False).fit(BoringModel())
"""


def test_stdout_to_a_file_gets_a_few_lines(tmp_path):
    """The default stream, sys.stdout, redirected to a file: a line per epoch, where TQDM writes one per step."""
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "\r" not in text
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[:2] for line in epochs] == [[f"epoch {k}/5", "64 batches"] for k in range(1, 6)]
    assert len(text.splitlines()) <= 5 + 3


def test_a_progress_bar_and_model_summary_of_the_users_own_are_kept(workdir):
    from helpers import CONFIGS, bundled_cli

    own = ["--trainer.callbacks+=TQDMProgressBar", "--trainer.callbacks+=ModelSummary"]
    own.append("--trainer.callbacks.max_depth=2")
    cli = bundled_cli(["--config", str(CONFIGS / "b16.yaml"), "--trainer.accelerator=cpu", *own])
    kinds = [type(callback).__name__ for callback in cli.trainer.callbacks]
    assert "TQDMProgressBar" in kinds and "ModelSummary" in kinds
    assert "ThrottledProgressBar" not in kinds and "BriefModelSummary" not in kinds


def test_with_rich_installed_the_defaults_are_still_replaced(workdir):
    pytest.importorskip("rich")  # Lightning's defaults become RichProgressBar and RichModelSummary
    from helpers import CONFIGS, bundled_cli

    cli = bundled_cli(["--config", str(CONFIGS / "b16.yaml"), "--trainer.accelerator=cpu"])
    kinds = {type(callback).__name__ for callback in cli.trainer.callbacks}
    assert {"ThrottledProgressBar", "BriefModelSummary"} <= kinds
    assert not kinds & {"RichProgressBar", "RichModelSummary", "TQDMProgressBar", "ModelSummary"}


def test_a_bar_set_up_off_global_rank_zero_stays_silent():
    bar = ThrottledProgressBar(stream=io.StringIO())
    assert bar.is_enabled  # no trainer yet
    bar.setup(SimpleNamespace(is_global_zero=False, callbacks=[]), None, "fit")
    bar.enable()  # Lightning's setup disables the bar on other ranks; enabling it again does not let it write
    assert bar.is_disabled
    bar.setup(SimpleNamespace(is_global_zero=True, callbacks=[]), None, "fit")
    bar.enable()
    assert bar.is_enabled
