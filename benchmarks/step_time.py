"""µs per training step: plain PyTorch loops, Lightning's floor and the template's fit, side by side in one run."""

import argparse
import contextlib
import functools
import logging
import math
import os
import statistics
import tempfile
import time
import warnings

import lightning
import record
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.cli import BatchSizeCLI


def data(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    dm = RegressionDataModule(n_samples=n, batch_size=1)
    dm.setup()
    x, y = dm.train_set.tensors
    return x.to(device), y.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_dataloader(n: int, batch: int, steps: int, device: str) -> float:
    """(a) The textbook loop: DataLoader(TensorDataset, shuffle=True), batches moved to the device each step."""
    x, y = data(n, "cpu")
    model = nn.Linear(1, 1).to(device)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)

    def batches():
        while True:
            for xb, yb in loader:
                yield xb.to(device), yb.to(device)

    return sgd_steps(model, batches(), steps, device)


def plain_resident(n: int, batch: int, steps: int, device: str) -> float:
    """(b) The same loop on tensors already on the device, each batch cut by an index slice of a permutation."""
    x, y = data(n, device)
    model = nn.Linear(1, 1).to(device)

    def batches():
        while True:
            for index in torch.randperm(len(x), device=device).split(batch):
                yield x[index], y[index]

    return sgd_steps(model, batches(), steps, device)


def sgd_steps(model: nn.Module, batches, steps: int, device: str) -> float:
    """Seconds per step of the textbook loop: forward, MSE, zero_grad, backward, SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    started = time.perf_counter()
    for _, (xb, yb) in zip(range(steps), batches, strict=False):
        loss = F.mse_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - started) / steps


class Bare(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.linear(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TrainTimer(Callback):
    """Wall time of training, from its start to its end, less the time spent validating: the step loop with its
    logging, callbacks and end-of-epoch checkpoints, but not the validation batches (work, not overhead)."""

    def on_train_start(self, trainer, pl_module):
        self.validating = 0.0
        self.started = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        self.validation_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validating += time.perf_counter() - self.validation_started

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device.type)
        self.seconds = time.perf_counter() - self.started - self.validating


def lightning_floor(n: int, batch: int, steps: int, device: str) -> float:
    """(c) Trainer(barebones=True): no logging, checkpoints, validation or progress bar; the same resident data."""
    timer = TrainTimer()
    trainer = Trainer(barebones=True, max_steps=steps, accelerator=device, devices=1, callbacks=[timer])
    trainer.fit(Bare(), RegressionDataModule(n_samples=n, batch_size=batch))
    return timer.seconds / trainer.global_step


def template_fit(n: int, batch: int, steps: int, device: str, progress_bar: bool = False) -> float:
    """(d) batchsize_lit fit with its defaults: step and epoch logging to TensorBoard, validation every epoch,
    best and last checkpoints, early stopping with restore_best_weights; the progress bar as asked."""
    epochs = math.ceil(steps / RegressionDataModule(n_samples=n, batch_size=batch).batches_per_epoch())
    with tempfile.TemporaryDirectory() as folder:
        args = [f"--data.n_samples={n}", f"--data.batch_size={batch}", f"--trainer.max_epochs={epochs}"]
        args += [f"--trainer.max_steps={steps}", f"--trainer.accelerator={device}", "--trainer.devices=1"]
        args += [f"--trainer.enable_progress_bar={str(progress_bar).lower()}", "--trainer.enable_model_summary=false"]
        args += [f"--trainer.logger.init_args.save_dir={folder}", "--early_stopping.patience=null"]
        cli = BatchSizeCLI(LinearRegressor, RegressionDataModule, args=args, run=False)
        timer = TrainTimer()
        cli.trainer.callbacks.append(timer)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the bar's drawing is timed
            cli.trainer.fit(cli.model, cli.datamodule)
        return timer.seconds / cli.trainer.global_step


def interleaved(loops: dict, repeats: int) -> dict[str, list[float]]:
    """Each loop once per round, round after round, so that machine noise hits them alike; µs per step."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            times[name].append(loop() * 1e6)
    return times


def ratio(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median of the ratios within each round."""
    if top not in times:
        return math.nan
    return statistics.median(x / y for x, y in zip(times[top], times[bottom], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="n_samples values, comma-separated")
    parser.add_argument("--batches", default="16,128,1024", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per cell; the median is shown")
    parser.add_argument("--skip_dataloader", action="store_true", help="leave out (a)")
    record.add_argument(parser)
    args = parser.parse_args()
    with record.Recording("step_time", args.record) as numbers:
        numbers["rows"] = measure(args)


def measure(args: argparse.Namespace) -> list[dict[str, float]]:
    """The table, printed row by row; its rows returned (µs per step, medians, and the ratios)."""
    rows = []
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "LightningCLI's args parameter")
    seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    device, steps, repeats = args.device, args.steps, args.repeats
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} torch thread"
    print(f"µs per training step, median of {repeats} interleaved rounds, {steps} steps each; {name}")
    print(f"torch {torch.__version__}, lightning {lightning.__version__}; ratios are medians of per-round ratios")
    print("(a) plain loop, default DataLoader  (b) plain loop, resident tensors  (c) Lightning barebones floor")
    print("(d) batchsize_lit fit, defaults without progress bar  (d+bar) the same with its progress display")
    print("(c), (d): training time less validation time, over the steps run\n")
    header = f"{'n':>8} {'batch':>5} {'(a)':>8} {'(b)':>8} {'(c)':>8} {'(d)':>8} {'(d+bar)':>8}"
    print(header + f" {'d/c':>5} {'(d+bar)/c':>9} {'c/b':>5} {'a/b':>5}")
    for n in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            if batch > RegressionDataModule(n_samples=n, batch_size=1).n_train:
                continue
            a_steps = max(50, min(steps, 200_000 // batch))  # per-sample collation makes (a) slow at large batches
            size = {"n": n, "batch": batch, "device": device}
            loops = {
                "a": functools.partial(plain_dataloader, steps=a_steps, **size),
                "b": functools.partial(plain_resident, steps=steps, **size),
                "c": functools.partial(lightning_floor, steps=steps, **size),
                "d": functools.partial(template_fit, steps=steps, **size),
                "bar": functools.partial(template_fit, steps=steps, progress_bar=True, **size),
            }
            if args.skip_dataloader:
                del loops["a"]
            times = interleaved(loops, repeats)
            med = {name: statistics.median(values) for name, values in times.items()}
            a = med.get("a", math.nan)

            print(
                f"{n:>8} {batch:>5} {a:>8.0f} {med['b']:>8.0f} {med['c']:>8.0f} {med['d']:>8.0f} {med['bar']:>8.0f}"
                f" {ratio(times, 'd', 'c'):>5.2f} {ratio(times, 'bar', 'c'):>9.2f} {ratio(times, 'c', 'b'):>5.2f}"
                f" {ratio(times, 'a', 'b'):>5.2f}",
                flush=True,
            )
            rows.append({"n": n, "batch": batch, **med, "a": a, "d/c": ratio(times, "d", "c")})
            rows[-1] |= {
                "bar/c": ratio(times, "bar", "c"),
                "c/b": ratio(times, "c", "b"),
                "a/b": ratio(times, "a", "b"),
            }
    return rows


if __name__ == "__main__":
    main()
