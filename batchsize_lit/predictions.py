"""predict's output: every prediction, with its index and input where it has one, written to the run folder."""

import csv
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor


def one_per_example(value: Any) -> bool:
    """Whether a batch's output is one number per example: a tensor of shape [B] or [B, 1]."""
    return isinstance(value, Tensor) and (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1))


def batch_input(batch: Any) -> Any:
    """The input of a batch: the batch itself, or the first item of a tuple or list (x, y)."""
    return batch[0] if isinstance(batch, list | tuple) and batch else batch


class PredictionWriter(BasePredictionWriter):
    """Keeps every batch's predictions, with the batch's input when that is one number per example, and writes them
    at the end: a CSV (index, [dataloader,] [x,] prediction) when every output is one number per example, else the
    outputs as trainer.predict returns them, with torch.save.

    Args:
        folder: Where the file goes; made only when there is something to write.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self.batches: list[tuple[int, Any, Tensor | None]] = []  # (dataloader_idx, prediction, input column)
        self.examples = 0
        self.path: Path | None = None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        x = batch_input(batch)
        column = x.detach().reshape(-1).cpu() if one_per_example(x) else None
        sized = x if isinstance(x, Tensor) and x.ndim else prediction
        self.examples += len(sized) if isinstance(sized, Tensor) and sized.ndim else 1
        if isinstance(prediction, Tensor):
            prediction = prediction.detach().cpu()
        self.batches.append((dataloader_idx, prediction, column))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""  # each process writes its share
        if any(prediction is not None for _, prediction, _ in self.batches):
            self.path = self.write(f"predictions{rank}")

    def write(self, stem: str) -> Path:
        """Write the predictions to <folder>/<stem>.csv (or .pt), or -v1, -v2, ... where that exists already."""
        tabular = all(one_per_example(prediction) for _, prediction, _ in self.batches)
        self.folder.mkdir(parents=True, exist_ok=True)
        path, version = self.folder / f"{stem}{'.csv' if tabular else '.pt'}", 0
        while path.exists():
            version += 1
            path = path.with_stem(f"{stem}-v{version}")
        partial = path.with_name(f".{path.name}.partial")  # renamed into place when whole
        if tabular:
            self._write_csv(partial)
        else:
            loaders = sorted({index for index, _, _ in self.batches})
            outputs = [[p for i, p, _ in self.batches if i == loader] for loader in loaders]
            torch.save(outputs[0] if len(outputs) == 1 else outputs, partial)
        os.replace(partial, path)
        return path

    def _write_csv(self, path: Path) -> None:
        several = len({index for index, _, _ in self.batches}) > 1
        with_x = all(column is not None for _, _, column in self.batches)
        header = ["index", *(["dataloader"] if several else []), *(["x"] if with_x else []), "prediction"]
        counts: dict[int, int] = {}
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for loader, prediction, column in self.batches:
                values = prediction.reshape(-1).tolist()
                inputs = column.tolist() if with_x and column is not None else [None] * len(values)
                start = counts.get(loader, 0)
                counts[loader] = start + len(values)
                for offset, (x, value) in enumerate(zip(inputs, values, strict=True)):
                    row = [start + offset, *([loader] if several else []), *([x] if with_x else []), value]
                    writer.writerow(row)

    def report(self) -> str:
        """One line: how many predictions, and where they are."""
        if self.path is None:
            return "predict_step returned nothing: no predictions written"
        return f"{self.examples} predictions written to {self.path}"


def predictions_folder(ckpt_path: str | None, run: Path | None, runs_parent: Path) -> Path:
    """Where predict writes: the run folder the checkpoint came from, the folder of a checkpoint kept elsewhere, or,
    with the model's initial weights, <runs of this config>/initial_weights."""
    if run is not None:
        return run
    if ckpt_path:
        return Path(ckpt_path).parent
    return runs_parent / "initial_weights"
