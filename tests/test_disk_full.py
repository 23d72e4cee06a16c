"""A full disk (ENOSPC) while writing a checkpoint, an event file, result.json or results.csv: one line naming the file,
the previous checkpoint still loadable, nothing half-written left as if whole, and a study stops."""

import errno
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, QUIET, exit_code, run_cli, write_study

FIT = ["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=3", "--early_stopping.patience=null"]


def fill_disk_after(monkeypatch, saves: int) -> None:
    """torch.save writes ``saves`` checkpoints, then half of the next one before the disk is full."""
    real_save, calls = torch.save, []

    def save(obj, file, *args, **kwargs):
        calls.append(file)
        if len(calls) <= saves:
            return real_save(obj, file, *args, **kwargs)
        file.write(b"PK\x03\x04 half a checkpoint")  # the template saves through a file it opened
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


def test_a_full_disk_while_writing_an_event_file_is_one_line_naming_it(workdir, monkeypatch, capsys):
    """TensorBoard writes event files on a thread of its own; its error ends the fit at the next log or flush."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    real_write, calls = RecordWriter.write, []

    def write(self, data):
        calls.append(data)
        if len(calls) > 40:  # a few epochs in
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(RecordWriter, "write", write)
    code = exit_code([*FIT[:-1], "--trainer.max_epochs=8", "--early_stopping.patience=null"])
    (events,) = (workdir / "lightning_logs/b16/version_0").glob("events.out.tfevents.*")
    assert code == (
        f"error: no space left on the device writing {events.relative_to(workdir)} (No space left on device); free"
        " some space and rerun"
    ), code
    assert "Traceback" not in capsys.readouterr().err  # nor the writer thread's
    last = torch.load(workdir / "lightning_logs/b16/version_0/checkpoints/last.ckpt", weights_only=True)
    assert 0 <= last["epoch"] < 7  # the previous checkpoint, whole


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB file system (a tmpfs), where this process may mount one (as root); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("full", ["event file", "checkpoint"])
def test_a_real_full_disk_is_one_line_and_the_previous_checkpoint_loads(tmp_path, tiny_disk, full):
    """The run folder on a full tmpfs: with the checkpoints elsewhere, the event file fills it; with them there, a
    checkpoint does (torch's own file writer would report that as a RuntimeError, not a full disk)."""
    where = ["--checkpoint.dirpath=checkpoints"] if full == "event file" else []
    result = run_cli(*FIT[:-1], "--early_stopping.patience=null", "--trainer.max_epochs=60",
                     "--trainer.log_every_n_steps=1", f"--trainer.logger.init_args.save_dir={tiny_disk}", *where,
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = result.stderr.splitlines()[-1]
    written = re.fullmatch(r"error: no space left on the device writing (\S+) \(No space left on device\); free some"
                           r" space and rerun", line)  # fmt: skip
    assert written and "Traceback" not in result.stderr, result.stderr
    run = tiny_disk / "b16/version_0"
    assert Path(written.group(1)).parent == (run if full == "event file" else run / "checkpoints"), line
    folder = tmp_path / "checkpoints" if full == "event file" else run / "checkpoints"
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] >= 0
    assert not list(folder.glob("*.tmp*"))
