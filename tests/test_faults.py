"""Faults beyond bad flags: broken checkpoints, finished runs, concurrent runs, hard kills, unwritable folders."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from batchsize_lit.__main__ import main
from batchsize_lit.callbacks import AtomicCheckpointIO

from helpers import CONFIGS, QUIET, ROOT, run_cli

FIT = ["--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=2"]


def exit_line(args: list[str]) -> str:
    """The one line a failing command exits with."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    line = str(exit_info.value.code)
    assert line.startswith("error: ") and "\n" not in line, line
    return line


def summary(stdout: str) -> list[str]:
    """The end-of-fit summary without its wall time."""
    lines = stdout[stdout.index("Fit finished") :].splitlines()
    return [line for line in lines if " samples seen, " not in line]


@pytest.fixture
def finished_run(workdir):
    main(["fit", *FIT])
    return workdir / "lightning_logs/b128/version_0"


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_truncated_checkpoint_is_named_in_one_line(finished_run, subcommand):
    last = finished_run / "checkpoints/last.ckpt"
    broken = finished_run.parent / "broken.ckpt"
    broken.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    line = exit_line([subcommand, *FIT, f"--ckpt_path={broken}"])
    assert f"{broken} cannot be read, it may be truncated" in line
    assert "best-epoch=1.ckpt can be used instead" not in line  # it is in another folder


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"data:\n  batch_size: 16\n", "is not a checkpoint: torch.save did not write it"),
        (
            {"state_dict": {"w": torch.ones(1)}},
            "is a torch file but not a Lightning checkpoint (Trainer.save_checkpoint)",
        ),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(workdir, content, message):
    path = workdir / "given.ckpt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    for subcommand in ["fit", "test"]:
        assert (
            exit_line([subcommand, *FIT, "--ckpt_path=given.ckpt"])
            == f"error: ckpt_path='given.ckpt': given.ckpt {message}"
        )
    assert not (workdir / "lightning_logs").exists()


def test_an_unreadable_last_checkpoint_names_a_usable_one(finished_run):
    last = finished_run / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    line = exit_line(["fit", *FIT, "--ckpt_path=last"])
    assert "ckpt_path='last': lightning_logs/b128/version_0/checkpoints/last.ckpt cannot be read" in line
    assert "best-epoch=1.ckpt can be used instead" in line


def test_truncated_checkpoint_gives_no_traceback_in_a_subprocess(tmp_path):
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    result = run_cli("test", *FIT, "--ckpt_path=broken.ckpt", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ckpt_path='broken.ckpt': broken.ckpt cannot be")


@pytest.mark.parametrize("early_stop", [False, True])
def test_resuming_a_finished_run_changes_nothing(workdir, capsys, early_stop):
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=9"]
    args += ["--early_stopping.patience=1"] if early_stop else ["--early_stopping.patience=null"]
    main(["fit", *args])
    first = capsys.readouterr().out
    weights = torch.load(workdir / "lightning_logs/b16/version_0/checkpoints/last.ckpt", weights_only=True)
    main(["fit", *args, "--ckpt_path=last"])
    again = capsys.readouterr().out
    assert summary(again) == summary(first)
    assert "weights restored to the best epoch" in again
    assert ("early stop" in again) == early_stop
    after = torch.load(workdir / "lightning_logs/b16/version_0/checkpoints/last.ckpt", weights_only=True)
    assert after["global_step"] == weights["global_step"]


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails part-way through the write
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3), "bad": lambda: None}, path)
    io.teardown()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_background_renames_keep_their_order_and_their_errors(tmp_path):
    io = AtomicCheckpointIO()
    for epoch in range(1, 21):  # each save renames over the previous one, in the background
        io.save_checkpoint({"epoch": epoch}, tmp_path / "last.ckpt")
        io.save_checkpoint({"epoch": epoch}, tmp_path / f"best-{epoch}.ckpt")
        io.remove_checkpoint(tmp_path / f"best-{epoch - 1}.ckpt")
    assert io.load_checkpoint(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 20  # a load waits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-20.ckpt", "last.ckpt"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("a folder that a rename cannot replace")
    io.save_checkpoint({"epoch": 21}, tmp_path / "taken")
    with pytest.raises(OSError):
        io.teardown()
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("checkpoint-rename")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-20.ckpt", "last.ckpt", "taken"]  # no temporary
    io.save_checkpoint({"epoch": 22}, tmp_path / "last.ckpt")  # after teardown the rename is immediate
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 22


def test_a_log_folder_that_cannot_be_made_is_named(workdir):
    (workdir / "lightning_logs").write_text("a file where the log folder should be")
    line = exit_line(["fit", *FIT])
    assert "cannot write the log folder lightning_logs/b128" in line
    assert (workdir / "lightning_logs").is_file()


def test_a_log_folder_on_a_read_only_file_system_is_named(workdir):
    line = exit_line(["fit", *FIT, "--trainer.logger.init_args.save_dir=/proc/batchsize_lit"])
    assert "cannot write the log folder /proc/batchsize_lit/b128" in line


@pytest.mark.slow
def test_concurrent_runs_under_one_name_each_get_a_whole_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, "-m", "batchsize_lit", "fit", *FIT]
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]  # fmt: skip
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in outputs]
    folders = sorted((tmp_path / "lightning_logs/b128").iterdir())
    assert [folder.name for folder in folders] == [f"version_{k}" for k in range(4)]
    assert sorted(out.split("run folder: ")[1].split()[0] for out, _ in outputs) == [
        f"lightning_logs/b128/version_{k}" for k in range(4)
    ]
    for folder in folders:
        assert (folder / "config.yaml").is_file() and len(list(folder.glob("events.out.tfevents.*"))) == 1
        assert torch.load(folder / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1


def study_config(folder) -> str:
    path = folder / "killed.yaml"
    base = {"data": {"n_samples": 40000}, "early_stopping": {"patience": None}, "trainer": {"max_epochs": 3}}
    path.write_text(json.dumps({"base": base, "grid": {"data.batch_size": [32, 64, 128]}}))
    return str(path)


def rows_without_time(path) -> list[dict[str, str]]:
    with open(path) as file:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(file)]


@pytest.mark.slow
def test_a_hard_killed_study_resumes_to_a_clean_runs_results(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir(), killed.mkdir()
    args = ["study", "--config", study_config(tmp_path), "--jobs", "1"]
    assert run_cli(*args, cwd=clean, timeout=300).returncode == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    process = subprocess.Popen([sys.executable, "-m", "batchsize_lit", *args], cwd=killed, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    folder = killed / "lightning_logs/killed"
    deadline = time.monotonic() + 120
    while not list(folder.glob("bs64/events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.02)  # until the second cell is training
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert (folder / "bs32/result.json").exists() and not (folder / "bs64/result.json").exists()
    assert not (folder / "results.csv").exists()

    resumed = run_cli(*args, cwd=killed, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 cell(s) already done" in resumed.stdout
    assert rows_without_time(folder / "results.csv") == rows_without_time(clean / "lightning_logs/killed/results.csv")


@pytest.mark.parametrize("step", [0, 5])
def test_an_error_in_model_code_during_training_keeps_the_run_and_its_traceback(tmp_path, step):
    """A ValueError raised by the model's own code once training runs is a fault, not bad input: at its first step
    (a shape bug) as later."""
    args = ["fit", *FIT, "--model=fork.broken.FlakyRegressor", "--model.hidden=13", "--early_stopping.monitor=val/loss"]
    args += [f"--model.init_args.fail_at_step={step}"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and f"ValueError: a bug at step {step}" in result.stderr
    assert f"fit failed at step {step}; the run folder lightning_logs/b128/version_0 is kept" in result.stderr
    assert (tmp_path / "lightning_logs/b128/version_0/config.yaml").is_file()


def test_a_hyperparameter_the_model_and_data_share_with_two_values_is_one_line(workdir):
    args = ["fit", "--model=fork.regression.SineRegressor", "--data=fork.regression.SineData", *QUIET]
    args += ["--early_stopping.monitor=val/loss", "--data.init_args.noise=0.2"]
    line = exit_line([*args, "--model=fork.broken.NoisyRegressor", "--model.init_args.noise=0.1"])
    assert line == (
        "error: model.noise=0.1 and data.noise=0.2: the model's and the data's hyperparameters are logged together,"
        " so a name they share needs one value"
    )
    assert not (workdir / "lightning_logs").exists()
    main([*args, "--model=fork.broken.NoisyRegressor", "--model.init_args.noise=0.2", "--trainer.max_epochs=1"])


def test_a_loss_module_attribute_is_not_the_loss_method():
    from torch import nn

    from batchsize_lit import LinearRegressor
    from batchsize_lit.problem import has_loss

    class WithLossModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.loss = nn.MSELoss()

    assert has_loss(LinearRegressor()) and not has_loss(WithLossModule())
