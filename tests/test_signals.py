"""SIGTERM, as a scheduler sends it at a time limit or on preemption: a fit or a study stops at a step, saves it,
says how to go on and exits 143; going on gives the uninterrupted result."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, QUIET, ROOT, read_csv, run_cli, write_study

# 50k points at batch 16: 2500 steps an epoch, a second or two; long enough to stop in the middle of one.
LONG_FIT = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--data.n_samples=50000", "--trainer.max_epochs=3"]
LONG_FIT += ["--early_stopping.patience=2", "--seed_everything=5", "--trainer.log_every_n_steps=500"]
LONG_FIT += ["--trainer.enable_progress_bar=true"]  # a resumed epoch's progress line too


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    env.pop("JSONARGPARSE_DEBUG", None)
    command = [sys.executable, "-m", "batchsize_lit", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def summary(stdout: str) -> list[str]:
    keep = ("Fit finished", "  best ", "  weights ", "  learned ", "  fitted")
    return [line for line in stdout.splitlines() if line.startswith(keep)]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_step_exits_143_and_resumes_exactly(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    process = start(["fit", *LONG_FIT], broken)
    run = broken / "lightning_logs/b16/version_0"
    wait_for(run / "checkpoints/last.ckpt")  # the end of epoch 1
    time.sleep(0.3)  # into epoch 2
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("Stopped by SIGTERM")]
    assert len(lines) == 1 and "Traceback" not in stderr and "Received SIGTERM" not in stderr, stderr
    stopped = weights(run / "checkpoints/last.ckpt")
    step = stopped["global_step"]
    assert 2500 < step < 5000  # within epoch 2, not at its end
    assert lines[0] == (
        f"Stopped by SIGTERM in epoch 2 at step {step}: lightning_logs/b16/version_0/checkpoints/last.ckpt holds step"
        f" {step}; resume with --ckpt_path last"
    )
    assert not list(run.glob("checkpoints/*.tmp*"))

    resumed = run_cli("fit", *LONG_FIT, "--ckpt_path", "last", cwd=broken)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumable" not in resumed.stderr and "warn" not in resumed.stderr.lower(), resumed.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # the same run folder
    uninterrupted = run_cli("fit", *LONG_FIT, cwd=straight)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    a, b = (weights(folder / "lightning_logs/b16/version_0/checkpoints/last.ckpt") for folder in (straight, broken))
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    stopper_a, stopper_b = (next(v for k, v in c["callbacks"].items() if "EarlyStopping" in k) for c in (a, b))
    for key in ("best_epoch", "wait_count", "stopped_epoch", "best_score"):
        assert stopper_a[key] == stopper_b[key], key
    history_a, history_b = (next(v for k, v in c["callbacks"].items() if "RunHistory" in k) for c in (a, b))
    assert history_a["history"] == history_b["history"]  # the mean train loss of the cut epoch included
    assert summary(resumed.stdout) == summary(uninterrupted.stdout) and summary(resumed.stdout)


def test_sigterm_before_training_exits_143_and_leaves_no_run_folder(tmp_path):
    """Stopped while the run is built, before a step: nothing trained, nothing to resume, still 143."""
    process = start(["fit", *LONG_FIT, "--data.class_path=fork.slow_setup.SlowSetupData"], tmp_path)
    wait_for(tmp_path / "setup_started")  # the run folder is made; setup then waits 30 s
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.splitlines()[-1] == "terminated: stopped by SIGTERM before training started; nothing to resume"
    assert "Traceback" not in stderr and not (tmp_path / "lightning_logs").exists(), stderr


def executor(jobs: str) -> list[str]:
    return ["--executor", "ray"] if jobs == "ray" else ["--jobs", jobs]


def start_study(config: Path, jobs: str, cwd: Path) -> subprocess.Popen:
    return start(["study", "--config", str(config), *executor(jobs)], cwd)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2", "ray"])
def test_sigterm_stops_a_study_and_the_same_command_finishes_it(tmp_path, jobs):
    base = {"trainer": {"accelerator": "cpu", "max_epochs": 3, "log_every_n_steps": 500}}
    base |= {"data": {"n_samples": 20000}, "early_stopping": {"patience": None}}
    grid = {"data.batch_size": [512, 8, 256]}
    config = write_study(tmp_path, grid, base=base)
    clean = tmp_path / "clean"
    clean.mkdir()
    process = start_study(config, jobs, tmp_path)
    first = process.stdout.readline()  # the first finished cell
    assert first.startswith("[1/3] "), first
    time.sleep(1.0)  # into the batch-8 cell
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and "resume with --ckpt_path" not in stderr, stderr
    last = stderr.splitlines()[-1]
    assert last.startswith("terminated: ") and "cells finished" in last and "run the same command again" in last, last
    folder = tmp_path / "lightning_logs/tiny"
    statuses = {p.parent.name: read_status(p) for p in folder.glob("*/result.json")}
    assert "interrupted" in statuses.values() and not (folder / "results.csv").exists(), statuses

    again = run_cli("study", "--config", str(config), *executor(jobs), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    fresh = run_cli("study", "--config", str(config), *executor(jobs), cwd=clean)
    assert fresh.returncode == 0, fresh.stderr
    rows, clean_rows = (read_csv(root / "lightning_logs/tiny/results.csv") for root in (tmp_path, clean))
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in clean_rows
    ]
    assert all(row["status"] == "ok" for row in rows)


def read_status(path: Path) -> str:
    import json

    return json.loads(path.read_text())["row"]["status"]


def test_lightning_calls_the_handler_it_replaced_and_stops_at_the_step(workdir, capsys):
    """What SIGTERM handling relies on in Lightning: during a fit its handler calls the one installed before it
    (signals.WATCH, which then only notes the signal), and the fit stops at the end of that step with a
    SIGTERMException, which the checkpoint callback saves at; the loader is resumable (no warning on resume)."""
    from lightning.pytorch import Callback
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from batchsize_lit.signals import WATCH

    from helpers import bundled_cli

    class Terminate(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    cli = bundled_cli(["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=2"])
    cli.trainer.callbacks.append(Terminate())
    with WATCH.installed(), pytest.raises(SIGTERMException):
        cli.trainer.fit(cli.model, cli.datamodule)
    assert WATCH.received
    last = torch.load(workdir / "lightning_logs/b16/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 3}]
    assert "Stopped by SIGTERM in epoch 1 at step 3" in capsys.readouterr().err


# Three epochs of 50 steps, validated after each: a run a signal can cut anywhere, and that a resume must reproduce.
SHORT_FIT = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=3", "--seed_everything=5"]


def signal_at(hook: str, signum: int, epoch: int) -> list[str]:
    """A callback (tests/fork/signal_at.py) that sends the signal in the hook, once: on the rerun it does nothing."""
    callback = ["--trainer.callbacks+=fork.signal_at.SignalAt", f"--trainer.callbacks.hook={hook}"]
    return [*callback, f"--trainer.callbacks.signum={signum}", f"--trainer.callbacks.epoch={epoch}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Callable[[tuple[str, ...]], dict]:
    """The last checkpoint of SHORT_FIT with the extra arguments, run once for each."""
    runs: dict[tuple[str, ...], dict] = {}

    def run(extra: tuple[str, ...]) -> dict:
        if extra not in runs:
            folder = tmp_path_factory.mktemp("uninterrupted")
            result = run_cli("fit", *SHORT_FIT, *extra, cwd=folder)
            assert result.returncode == 0, result.stderr
            runs[extra] = weights(folder / "lightning_logs/b16/version_0/checkpoints/last.ckpt")
        return runs[extra]

    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hook", "signum", "epoch", "extra", "status", "line"),
    [
        # before the first last.ckpt: the one SIGTERM writes names itself last, so that the resume overwrites it
        ("on_train_start", signal.SIGTERM, 1, (), 143, "Stopped by SIGTERM in epoch 1 at step 1: "),
        # in the middle of a validation, which Lightning's resume would skip: it runs again, whole
        ("on_validation_batch_end", signal.SIGTERM, 2, (), 143, "Stopped by SIGTERM in epoch 2 at step 100: "),
        # one batch into an accumulation window of four: its gradients are kept, and the window goes on from them
        ("on_train_batch_end", signal.SIGTERM, 2, ("--trainer.accumulate_grad_batches=4",), 143, "Stopped by SIGTERM"),
        # a hook the callback sets on itself is called; Lightning stops on Ctrl-C, and the status is 130, not 1
        ("on_train_batch_end", signal.SIGINT, 2, (), 130, "Interrupted in epoch 2: "),
        # after the last step: the run is whole, and the status still says that a signal came
        ("on_train_end", signal.SIGTERM, 1, (), 143, "terminated: SIGTERM arrived as the command was ending"),
    ],
    ids=["sigterm-first-step", "sigterm-validation", "sigterm-accumulating", "sigint-mid-epoch", "sigterm-train-end"],
)
def test_a_signal_at_an_awkward_moment_exits_non_zero_and_the_resume_gives_the_uninterrupted_run(
    tmp_path, uninterrupted, hook, signum, epoch, extra, status, line
):
    reference = uninterrupted(extra)
    cut = run_cli("fit", *SHORT_FIT, *extra, *signal_at(hook, signum, epoch), cwd=tmp_path)
    assert cut.returncode == status, cut.stderr
    assert "Traceback" not in cut.stderr and any(row.startswith(line) for row in cut.stderr.splitlines()), cut.stderr
    resumed = run_cli("fit", *SHORT_FIT, *extra, *signal_at(hook, signum, epoch), "--ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run = tmp_path / "lightning_logs/b16/version_0"
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert sorted(p.name for p in run.glob("checkpoints/last*")) == ["last.ckpt"]
    got = weights(run / "checkpoints/last.ckpt")
    assert got["global_step"] == reference["global_step"]
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    for kind in ("EarlyStopping", "RunHistory"):
        a, b = (next(v for k, v in c["callbacks"].items() if kind in k) for c in (got, reference))
        assert same(a, b), kind


def same(a: object, b: object) -> bool:
    """Equal, tensors by value, in nested dicts and lists."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_sigterm_while_lightning_is_imported_exits_143_in_one_line(tmp_path):
    """Before the command's own handler is in place: Lightning's import takes seconds, and the signal comes in them."""
    process = start(["fit", *SHORT_FIT], tmp_path)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr == "terminated: stopped by SIGTERM before training started; nothing to resume\n"
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["term", "int"])
def test_a_signal_in_the_sanity_check_leaves_no_run_folder(tmp_path, signum, status):
    """Stopped by Lightning before the first step: nothing trained, so nothing is kept, as before the fit began."""
    cut = run_cli("fit", *SHORT_FIT, *signal_at("on_sanity_check_start", signum, 1), cwd=tmp_path)
    assert cut.returncode == status and "Traceback" not in cut.stderr, cut.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_ctrl_c_while_lightning_is_imported_exits_130_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    process = subprocess.Popen(
        [sys.executable, "-m", "batchsize_lit", "fit", *SHORT_FIT],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job ignores it
    )  # fmt: skip
    time.sleep(0.5)  # Lightning's import takes seconds
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr == "interrupted before training started; nothing to resume\n"
    assert not (tmp_path / "lightning_logs").exists()
