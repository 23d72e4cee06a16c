"""Each reliance in batchsize_lit.compat holds for the installed Lightning; a release that changes one fails here."""

import csv
import warnings

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from batchsize_lit import compat
from batchsize_lit.compat import checkpoint_run_folder, open_csv_keeping_rows


@pytest.mark.parametrize("logger", ["tensorboard", "csv", "none", "versioned"])
def test_checkpoint_run_folder_is_where_model_checkpoint_writes(tmp_path, logger):
    loggers = {
        "tensorboard": TensorBoardLogger(tmp_path, name="b16"),
        "csv": CSVLogger(tmp_path, name="b16", version=3),
        "none": False,
        "versioned": TensorBoardLogger(tmp_path, name="", version="run_a"),
    }[logger]
    trainer = Trainer(
        default_root_dir=tmp_path, logger=loggers, max_steps=1, limit_val_batches=0, enable_progress_bar=False
    )
    expected = checkpoint_run_folder(trainer)  # asked before the fit, as the CLI does
    trainer.fit(BoringModel())
    assert trainer.checkpoint_callback.dirpath == str(expected / "checkpoints")


def test_a_csv_log_continued_keeps_its_rows_and_columns(tmp_path):
    first = CSVLogger(tmp_path, name="run", version=0)
    first.log_metrics({"train_loss": 1.0}, step=0)
    first.save()
    (tmp_path / "run/version_0/config.yaml").write_text("x: 1\n")  # the folder is not empty
    again = CSVLogger(tmp_path, name="run", version=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "exists and is not empty" warning is not let through
        open_csv_keeping_rows(again)
    again.log_metrics({"test_loss": 2.0}, step=1)
    again.save()
    with open(tmp_path / "run/version_0/metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows == [
        {"step": "0", "test_loss": "", "train_loss": "1.0"},
        {"step": "1", "test_loss": "2.0", "train_loss": ""},
    ]


def test_lightning_s_csv_writer_still_deletes_an_existing_log(tmp_path):
    """The reason for open_csv_keeping_rows: without it, a CSVLogger started in a run's folder loses its rows."""
    first = CSVLogger(tmp_path, name="run", version=0)
    first.log_metrics({"train_loss": 1.0}, step=0)
    first.save()
    with pytest.warns(UserWarning, match="exists and is not empty"):
        writer = CSVLogger(tmp_path, name="run", version=0).experiment
    assert not (tmp_path / "run/version_0/metrics.csv").exists()
    assert writer.metrics_keys == []  # the undocumented attribute open_csv_keeping_rows seeds


def _connected(callback: ModelCheckpoint) -> Trainer:
    trainer = Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(BoringModel())
    return trainer


def test_checkpoint_skips_saving_outside_a_fit(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path)
    assert compat.checkpoint_skips_saving(callback, _connected(callback)) is True  # not fitting: nothing is saved


def test_save_last_checkpoint_formats_versions_and_records_the_path(tmp_path):
    """Lightning's own last save: CHECKPOINT_NAME_LAST's template is formatted, an existing file of another run gets
    a version suffix, and last_model_path (part of the callback's state) names what was written."""
    for expected in ("epoch=0-last.ckpt", "epoch=0-last-v1.ckpt"):
        callback = ModelCheckpoint(dirpath=tmp_path, save_last=True)
        callback.CHECKPOINT_NAME_LAST = "{epoch}-last"
        callback._last_global_step_saved = -1  # what Lightning would decide by stays as it was
        compat.save_last_checkpoint(callback, _connected(callback))
        assert callback._last_global_step_saved == -1
        assert callback.last_model_path == str(tmp_path / expected)
        assert (tmp_path / expected).is_file()


def test_skipping_absent_callback_factories_keeps_what_a_trainer_gets(monkeypatch):
    import inspect

    from lightning.pytorch.trainer.connectors import callback_connector

    # Lightning still loads the factories through this name, with this group, at every Trainer()
    assert f'_load_external_callbacks("{compat.CALLBACKS_FACTORY}")' in inspect.getsource(callback_connector)
    before = [type(c) for c in Trainer(logger=False, enable_progress_bar=False).callbacks]
    monkeypatch.setattr(callback_connector, "_load_external_callbacks", callback_connector._load_external_callbacks)
    compat.skip_absent_callback_factories()
    assert getattr(callback_connector._load_external_callbacks, "skips", None) == compat.CALLBACKS_FACTORY
    assert [type(c) for c in Trainer(logger=False, enable_progress_bar=False).callbacks] == before
    assert callback_connector._load_external_callbacks("another.group") == []  # other groups still looked up


def test_a_registered_callback_factory_is_still_loaded(monkeypatch):
    from lightning.pytorch.trainer.connectors import callback_connector

    original = callback_connector._load_external_callbacks
    monkeypatch.setattr(callback_connector, "_load_external_callbacks", original)
    monkeypatch.setattr(compat, "entry_points", lambda group: ["a factory"])
    compat.skip_absent_callback_factories()
    assert callback_connector._load_external_callbacks is original


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_lightning_s_slurm_requeue_saves_and_restores_in_default_root_dir(tmp_path, monkeypatch):
    """The reason for keep_hpc_checkpoints_in: on SLURM, Lightning's SIGUSR1 handler saves hpc_ckpt_1.ckpt in the
    trainer's default_root_dir and calls `scontrol requeue <job>`, and the fit goes on (SLURM's SIGTERM ends it); a
    later fit with no ckpt_path restores the newest hpc checkpoint found in its default_root_dir."""
    import os
    import signal

    from jsonargparse import Namespace
    from lightning.pytorch import Callback

    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "fit", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)

    class Warn(Callback):  # SLURM's signal before the time limit, at step 2
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    started = []

    class Start(Callback):
        def on_train_start(self, trainer, *args) -> None:
            started.append(trainer.global_step)

    config = Namespace(default_root_dir=None)
    compat.keep_hpc_checkpoints_in(config, tmp_path / "run")
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    quiet |= {"enable_model_summary": False, "limit_val_batches": 0}
    trainer = Trainer(default_root_dir=config.default_root_dir, max_steps=4, callbacks=[Warn()], **quiet)
    trainer.fit(BoringModel())
    assert trainer.global_step == 4  # Lightning's handler does not stop the fit
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert sorted(p.name for p in (tmp_path / "run").glob("*.ckpt")) == ["hpc_ckpt_1.ckpt"]
    Trainer(default_root_dir=tmp_path / "run", max_steps=6, callbacks=[Start()], **quiet).fit(BoringModel())
    assert started == [2]  # restored from it, with no ckpt_path given


def test_a_tensorboard_writer_thread_names_its_file_and_raises_the_error_it_holds(tmp_path):
    """What the full-disk handling of event files relies on: tensorboard's writer thread holds its file and the
    error it died of, and the main thread raises that very error at its next write or flush."""
    import threading

    from torch.utils.tensorboard import SummaryWriter

    from batchsize_lit.errors import DiskFull

    writer = SummaryWriter(tmp_path)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    (thread,) = [t for t in threading.enumerate() if compat.event_writer_file(t) == str(events)]
    assert compat.event_writer_file(threading.main_thread()) is None
    compat.set_event_writer_error(thread, DiskFull("full"))
    with pytest.raises(DiskFull, match="full"):
        writer.add_scalar("loss", 1.0, 0)
    compat.set_event_writer_error(thread, None)
    writer.close()


# --- cohorts ---


def test_a_plain_dataloader_over_tensors_yields_indexed_tensors_drawing_only_at_iter_and_through_its_sampler():
    """What a cohort's batches of plain DataLoaders rely on: the batches equal the tensors indexed by the
    batch_sampler's indices, and the global generator ends in the same state, when the sampler is iterated apart
    from the loader's own iterator."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.randn(23, 3), torch.arange(23))
    for shuffle in (True, False):
        loader = DataLoader(dataset, batch_size=5, shuffle=shuffle)
        assert compat.indexes_tensors(loader)
        torch.manual_seed(7)
        batches = [list(batch) for _ in range(2) for batch in loader]
        state = torch.get_rng_state()
        torch.manual_seed(7)
        cut = []
        for _ in range(2):
            iter(loader)
            cut += [[t[indices] for t in dataset.tensors] for indices in loader.batch_sampler]
        assert torch.equal(torch.get_rng_state(), state)
        assert all(type(b) is list for b in batches)
        assert all(
            torch.equal(a, b) for one, two in zip(batches, cut, strict=True) for a, b in zip(one, two, strict=True)
        )
    assert not compat.indexes_tensors(DataLoader(dataset, batch_size=5, collate_fn=lambda items: items))


def test_a_random_sampler_pass_is_a_randperm_seeded_from_the_global_generator():
    """What a cohort's plain DataLoaders rely on: the order sampler_order gives is the sampler's own, and the global
    generator ends in the same state."""
    import torch
    from torch.utils.data import RandomSampler, SequentialSampler

    data = list(range(23))
    for sampler in (RandomSampler(data), SequentialSampler(data)):
        torch.manual_seed(3)
        order, state = list(sampler), torch.get_rng_state()
        torch.manual_seed(3)
        assert compat.sampler_order(sampler).tolist() == order
        assert torch.equal(torch.get_rng_state(), state)
    assert compat.sampler_order(RandomSampler(data, replacement=True)) is None
    assert compat.sampler_order(RandomSampler(data, num_samples=5)) is None
