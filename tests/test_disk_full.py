"""A full disk (ENOSPC) while writing a checkpoint, result.json or results.csv: one line naming the file, the previous
checkpoint still loadable, nothing half-written left as if whole, and a study stops."""

import errno
import json

import torch

from helpers import CONFIGS, QUIET, exit_code, write_study

FIT = ["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=3", "--early_stopping.patience=null"]


def fill_disk_after(monkeypatch, saves: int) -> None:
    """torch.save writes ``saves`` checkpoints, then half of the next one before the disk is full."""
    real_save, calls = torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= saves:
            return real_save(obj, path, *args, **kwargs)
        with open(path, "wb") as file:
            file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(workdir, monkeypatch):
    fill_disk_after(monkeypatch, 2)  # epoch 1: best and last; epoch 2's best fails
    code = exit_code(FIT)
    folder = "lightning_logs/b16/version_0/checkpoints"
    assert (
        code == f"error: no space left on the device writing {folder}/best-epoch=1.ckpt (No space left on device);"
        " free some space and rerun"
    ), code
    monkeypatch.undo()
    last = torch.load(workdir / folder / "last.ckpt", weights_only=True)  # the previous one, whole
    assert last["epoch"] == 0
    assert not list((workdir / folder).glob("*.tmp*"))  # the half-written file is gone


def test_a_full_disk_in_a_study_records_the_cell_as_failed_and_stops(workdir, monkeypatch):
    base = {"trainer": {"accelerator": "cpu", "max_epochs": 2}, "data": {"n_samples": 200}}
    config = write_study(workdir, {"data.batch_size": [64, 32, 16]}, base=base)
    fill_disk_after(monkeypatch, 4)  # the first cell's two epochs: best and last each; the second cell's first fails
    code = exit_code(["study", "--config", str(config), "--jobs", "1"])
    assert isinstance(code, str) and code.startswith("error: no space left on the device writing "), code
    monkeypatch.undo()
    folder = workdir / "lightning_logs/tiny"
    statuses = {p.parent.name: json.loads(p.read_text())["row"]["status"] for p in folder.glob("*/result.json")}
    assert statuses == {"bs64": "ok", "bs32": "failed"}, statuses  # the third never started
    assert not (folder / "results.csv").exists()


def test_a_full_disk_while_writing_results_csv_leaves_none(workdir, monkeypatch):
    base = {"trainer": {"accelerator": "cpu", "max_epochs": 1}, "data": {"n_samples": 200}}
    config = write_study(workdir, {"data.batch_size": [64]}, base=base)

    def full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("csv.DictWriter.writerows", full)
    code = exit_code(["study", "--config", str(config), "--jobs", "1"])
    folder = workdir / "lightning_logs/tiny"
    assert code == (
        "error: no space left on the device writing lightning_logs/tiny/results.csv (No space left on device); "
        "free some space and rerun"
    )
    assert not list(folder.glob("results.csv*"))
