"""Each reliance in batchsize_lit.compat holds for the installed Lightning; a release that changes one fails here."""

import csv
import signal
import sys
import warnings
from typing import ClassVar

import pytest
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
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


# --- cli ---


class _ParseFailed(Exception):
    pass


def _parse_error(tmp_path, *args: str, config: str = "") -> str:
    """The text of the ArgumentError a LightningCLI parser raises for these arguments (and this config file), with
    the settings BatchSizeCLI parses with: no abbreviations, and the history's mode linked to early stopping's."""
    from jsonargparse import ArgumentError
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.cli import LightningCLI

    from batchsize_lit.callbacks import RunHistory

    class Parsing(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            parser.add_lightning_class_args(RunHistory, "history")
            parser.link_arguments("early_stopping.mode", "history.mode")

        def parse_arguments(self, parser, args) -> None:
            try:
                super().parse_arguments(parser, args)
            except ArgumentError as error:
                raise _ParseFailed(str(error)) from None
            raise AssertionError("parsed without an error")

    if config:
        (tmp_path / "given.yaml").write_text(config)
        args = ("--config", str(tmp_path / "given.yaml"), *args)
    with pytest.raises(_ParseFailed) as failed:
        Parsing(BoringModel, args=["fit", *args], parser_kwargs={"exit_on_error": False, "allow_abbrev": False})
    return str(failed.value)


def test_an_unknown_flag_or_config_key_of_a_lightning_cli_is_named(tmp_path):
    assert compat.unknown_key(_parse_error(tmp_path, "--trainer.max_epoch=1")) == "--trainer.max_epoch"
    assert compat.unknown_key(_parse_error(tmp_path, config="trainr:\n  max_epochs: 3\n")) == "trainr.max_epochs"


def test_a_bad_value_of_a_linked_key_is_named_by_the_link_s_target(tmp_path):
    message = _parse_error(tmp_path, "--early_stopping.mode=maxx")
    assert compat.LINKED_HISTORY_KEY.match(message).group(1) == "mode"


def test_lightning_s_device_errors_have_the_device_words_and_others_not():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException) as devices:
        Trainer(accelerator="cpu", devices=0, logger=False)
    with pytest.raises(MisconfigurationException) as epochs:
        Trainer(max_epochs=-2, logger=False)
    assert compat.DEVICE_ERROR.search(str(devices.value))
    assert not compat.DEVICE_ERROR.search(str(epochs.value))


def test_save_hyperparameters_without_the_logger_is_seen(tmp_path):
    class Quiet(BoringModel):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters(logger=False)

    class Logged(Quiet):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()

    assert compat.logs_hyperparameters(Quiet()) is False
    assert compat.logs_hyperparameters(Logged()) is True


def test_lightning_cli_makes_the_subcommand_parsers_after_the_main_one_in_order():
    from lightning.pytorch.cli import LightningCLI

    class Recording(LightningCLI):
        made: ClassVar[list] = []

        def init_parser(self, **kwargs):
            parser = super().init_parser(**kwargs)
            self.made.append(parser)
            return parser

        def parse_arguments(self, parser, args) -> None:
            raise _ParseFailed

    with pytest.raises(_ParseFailed):
        Recording(BoringModel, args=["fit"])
    parsers = compat.subcommand_parsers(Recording.made, list(Recording.subcommands()))
    # Lightning describes each subcommand's parser with the Trainer method's docstring, which tells them apart.
    assert list(parsers) == ["fit", "validate", "test", "predict"]
    for name, parser in parsers.items():
        assert parser.description.startswith(getattr(Trainer, name).__doc__.strip().splitlines()[0].strip())


def test_a_module_s_trainer_property_raises_until_a_trainer_runs_it(tmp_path):
    """The regression's effective_lr asks its trainer through the public property and takes RuntimeError as none."""
    model = BoringModel()
    with pytest.raises(RuntimeError):
        model.trainer  # noqa: B018
    trainer = Trainer(default_root_dir=tmp_path, max_steps=1, logger=False, enable_progress_bar=False)
    trainer.fit(model)
    assert model.trainer is trainer


# --- jsonargparse messages ---


def _fit_error(*args: str, run: bool = False) -> str:
    """jsonargparse's error for a command line, with whitespace collapsed as errors.one_line reads it."""
    from batchsize_lit.cli import BatchSizeCLI

    with pytest.raises((ArgumentError, ValueError)) as caught:  # a class's own check raises a ValueError
        BatchSizeCLI(args=list(args), run=run)
    return compat.PATH_UNREADABLE.sub(r"\1", " ".join(str(caught.value).split()))


def _class_error(*args: str) -> str:
    """What the class of a class-typed key (model, data) said, inside jsonargparse's Union error."""
    return compat.CLASS_UNION_FAILED.match(_fit_error(*args)).group(2)


def test_jsonargparse_s_path_prefix_is_still_dropped(workdir):
    from batchsize_lit.cli import BatchSizeCLI

    with pytest.raises(ArgumentError) as caught:
        BatchSizeCLI(args=["--model=torch.nn.Linear"], run=False)
    found = compat.PATH_UNREADABLE.match(" ".join(str(caught.value).split()))
    assert found and found.group(1) == 'Parser key "model": '


def test_jsonargparse_s_class_union_error_names_the_key_and_the_class_s_reason(workdir):
    found = compat.CLASS_UNION_FAILED.match(_fit_error("--model=batchsize_lit.NoSuch"))
    assert found.groups() == ("model", "Problem with given class_path 'batchsize_lit.NoSuch': module 'batchsize_lit' "
                                       "has no attribute 'NoSuch'")  # fmt: skip


def test_jsonargparse_s_union_error_lists_its_subtypes(workdir):
    found = compat.UNION_SUBTYPES.search(_fit_error("--trainer.max_epochs=abc"))
    assert found.group(1) == "<class 'int'>, <class 'NoneType'>"


def test_jsonargparse_s_plain_subtypes_are_told_from_a_class(workdir):
    plain = compat.UNION_SUBTYPES.search(_fit_error("--trainer.max_epochs=abc")).group(1)
    of_a_class = compat.UNION_SUBTYPES.search(_fit_error("--model=batchsize_lit.NoSuch")).group(1)
    assert compat.PLAIN_SUBTYPES.fullmatch(plain) and not compat.PLAIN_SUBTYPES.fullmatch(of_a_class)


def test_jsonargparse_s_plain_union_error_names_key_types_and_value(workdir):
    found = compat.PLAIN_UNION_FAILED.match(_fit_error("--trainer.max_epochs=abc"))
    assert found.groups() == ("trainer.max_epochs", "<class 'int'>, <class 'NoneType'>", "abc")


def test_jsonargparse_s_subtypes_give_their_names(workdir):
    subtypes = compat.PLAIN_UNION_FAILED.match(_fit_error("--trainer.max_epochs=abc")).group(2)
    assert [compat.SUBTYPE_NAME.sub(r"\1", name) for name in subtypes.split(", ")] == ["int", "NoneType"]


def test_jsonargparse_s_error_for_a_class_path_that_is_not_a_string(workdir):
    found = compat.CLASS_PATH_NOT_A_STRING.fullmatch(_class_error("--model.class_path=null"))
    assert found and found.group(1) == "NoneType"


def test_jsonargparse_s_class_path_problem_names_the_class_path_and_the_reason(workdir):
    found = compat.CLASS_PATH_PROBLEM.match(_class_error("--model=batchsize_lit.NoSuch"))
    assert found.groups() == ("batchsize_lit.NoSuch", "module 'batchsize_lit' has no attribute 'NoSuch'")


def test_jsonargparse_s_errors_start_by_naming_the_key(workdir):
    assert compat.PARSER_KEY.match(_fit_error("--trainer.max_epochs=abc")).group(1) == "trainer.max_epochs"
    args = ("--model=batchsize_lit.LinearRegressor", "--model.init_args.lr=abc")
    inner = compat.CLASS_PATH_PROBLEM.match(_class_error(*args)).group(2)  # the class's own parser
    assert compat.PARSER_KEY.match(inner).group(1) == "lr"


def test_jsonargparse_s_error_for_a_class_of_another_kind(workdir):
    found = compat.NOT_A_SUBCLASS.match(_class_error("--model=torch.nn.Linear"))
    assert found and found.group(1) == "LightningModule"


def test_jsonargparse_s_union_error_ends_with_the_given_value(workdir):
    assert compat.GIVEN_VALUE.search(_fit_error("--model=torch.nn.Linear")).group(1) == "torch.nn.Linear"


def test_jsonargparse_s_errors_for_a_value_that_names_no_class(workdir):
    not_a_class = compat.NOT_A_CLASS_PATH.match(_class_error("--config", "data: 5"))
    assert not_a_class and not_a_class.group(1) == "LightningDataModule"
    not_a_path = compat.NOT_A_CLASS_PATH.match(_class_error("--config", "model: nosuch"))
    assert not_a_path and not_a_path.group(1) is None


def test_jsonargparse_s_errors_for_a_config_that_is_not_keys_and_values(workdir):
    from batchsize_lit.study import build_parser

    assert compat.CONFIG_NOT_READ.search(_fit_error("--config", "[1]"))
    (workdir / "bad.yaml").write_text("grid:\n  data.batch_size: [16\n")
    with pytest.raises(ArgumentError) as caught:
        build_parser().parse_args(["--config", "bad.yaml"])
    assert compat.CONFIG_NOT_READ.search(str(caught.value))


def test_jsonargparse_s_unknown_key_errors_name_the_key(workdir):
    from batchsize_lit.study import build_parser

    assert compat.unknown_key(_fit_error("--nosuch=1")) == "--nosuch"
    assert compat.unknown_key(_fit_error("--config", "trainr:\n  max_epochs: 3\n")) == "trainr.max_epochs"
    assert compat.unknown_key(_fit_error("fit", "--config", "a: 1", run=True)) == "a"  # a subcommand's config
    with pytest.raises(ArgumentError) as caught:
        build_parser().parse_args(["--config", "gird:\n  data.batch_size: [16]\n"])
    assert compat.unknown_key(str(caught.value)) == "gird.data.batch_size"
    args = ("--model=batchsize_lit.LinearRegressor", "--model.init_args.nosuch=1")
    inner = compat.CLASS_PATH_PROBLEM.match(_class_error(*args)).group(2)  # a class's own key, as errors.py reads it
    assert compat.UNKNOWN_KEY.match(inner).group(1) == "nosuch"


def test_jsonargparse_s_error_for_a_class_that_failed_shows_its_init_args(workdir):
    args = ("--model=batchsize_lit.LinearRegressor", "--data=batchsize_lit.RegressionDataModule")
    text = _fit_error(*args, "--data.batch_size=null")
    assert compat.null_init_args(text) == ("batchsize_lit.RegressionDataModule", ["batch_size"])


# --- callbacks ---


def _quiet_trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return Trainer(default_root_dir=tmp_path, callbacks=callbacks, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


def test_a_hook_set_to_none_is_skipped(tmp_path):
    class Fails(Callback):
        def on_train_batch_end(self, *args: object) -> None:
            raise AssertionError("a skipped hook was called")

    callback = Fails()
    compat.skip_hook(callback, "on_train_batch_end")
    trainer = _quiet_trainer(tmp_path, [callback], max_steps=2, limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.global_step == 2


@pytest.mark.parametrize(
    ("given", "trainer_args", "expected"),
    [
        (None, {}, True),
        (None, {"val_check_interval": 0.5}, False),
        (None, {"check_val_every_n_epoch": 2}, False),
        (False, {}, False),
        (True, {"val_check_interval": 0.5}, True),
    ],
)
def test_early_stopping_decides_at_setup_where_it_checks(tmp_path, given, trainer_args, expected):
    callback = EarlyStopping(monitor="val_loss", check_on_train_epoch_end=given)
    assert compat.early_stopping_checks_at_epoch_end(callback) is given  # undecided before setup
    callback.setup(_quiet_trainer(tmp_path, [callback], **trainer_args), BoringModel(), "fit")
    assert compat.early_stopping_checks_at_epoch_end(callback) is expected


def test_early_stopping_replaces_best_score_only_on_an_improvement(tmp_path):
    class Scripted(BoringModel):
        def validation_step(self, batch: object, batch_idx: int) -> None:
            self.log("val_loss", [1.0, 2.0, 0.5, 0.5, 0.4][self.current_epoch])

    class Watched(EarlyStopping):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.improved: list[bool] = []

        def on_validation_end(self, trainer: Trainer, pl_module: BoringModel) -> None:
            before = self.best_score
            super().on_validation_end(trainer, pl_module)
            self.improved.append(compat.improved_best_score(self, before))

    callback = Watched(monitor="val_loss", patience=10, check_on_train_epoch_end=False)
    trainer = _quiet_trainer(tmp_path, [callback], max_epochs=5, limit_train_batches=1, limit_val_batches=1,
                             num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(Scripted())
    assert callback.improved == [True, False, True, False, True]
    assert float(callback.best_score) == pytest.approx(0.4)


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


def test_lightning_exits_1_from_its_ctrl_c_handler_and_a_model_s_own_exit_is_told_apart(tmp_path):
    class CtrlC(Callback):
        def on_train_batch_end(self, trainer, *args: object) -> None:
            raise KeyboardInterrupt

    class Exits(BoringModel):
        def training_step(self, batch, batch_idx):
            sys.exit(1)

    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stopped:
            _quiet_trainer(tmp_path, [CtrlC()], max_steps=3, limit_val_batches=0).fit(BoringModel())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C from its handler on
    assert stopped.value.code == 1 and compat.exit_after_ctrl_c(stopped.value)
    with pytest.raises(SystemExit) as own:
        _quiet_trainer(tmp_path, [], max_steps=3, limit_val_batches=0).fit(Exits())
    assert own.value.code == 1 and not compat.exit_after_ctrl_c(own.value)


@pytest.mark.parametrize("rewind", [False, True])
def test_a_fit_resumed_from_a_checkpoint_saved_in_a_validation_runs_it_again_only_when_rewound(tmp_path, rewind):
    """Lightning skips the rest of a validation that a checkpoint was saved in; rewound, it runs all of it again."""

    class SaveInValidation(Callback):
        def __init__(self) -> None:
            self.saving = False

        def on_validation_batch_end(self, trainer, *args: object) -> None:
            if trainer.current_epoch == 1 and not trainer.sanity_checking and not (tmp_path / "mid.ckpt").exists():
                self.saving = True
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                self.saving = False

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            if self.saving and rewind:
                compat.rerun_validation_on_resume(checkpoint)

    class Counts(Callback):
        def __init__(self) -> None:
            self.batches = 0

        def on_validation_batch_end(self, trainer, *args: object) -> None:
            self.batches += not trainer.sanity_checking

    args = {"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 5, "num_sanity_val_steps": 0}
    _quiet_trainer(tmp_path, [SaveInValidation()], **args).fit(BoringModel())
    counts = Counts()
    _quiet_trainer(tmp_path, [counts], **args).fit(BoringModel(), ckpt_path=tmp_path / "mid.ckpt")
    assert counts.batches == (5 if rewind else 0)
