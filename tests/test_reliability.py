"""Faults lose nothing: Ctrl-C leaves a usable last.ckpt, resuming gives the uninterrupted result; DDP; determinism."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from batchsize_lit.callbacks import RunHistory
from batchsize_lit.trainer_info import find_callback

from helpers import CONFIGS, QUIET, ROOT, bundled_cli, hparams, run_cli

# 40k points at batch 16: 2000 steps, about a second, an epoch; long enough to interrupt in the middle of one.
SLOW_FIT = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--data.n_samples=40000", "--trainer.max_epochs=4"]
SLOW_FIT += ["--early_stopping.patience=2", "--seed_everything=5"]


def checkpoint(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_ctrl_c_then_resume_gives_the_uninterrupted_result(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    uninterrupted = run_cli("fit", *SLOW_FIT, cwd=straight)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    process = subprocess.Popen(
        [sys.executable, "-m", "batchsize_lit", "fit", *SLOW_FIT],
        cwd=broken,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job ignores it
    )
    last = broken / "lightning_logs/b16/version_0/checkpoints/last.ckpt"
    deadline = time.monotonic() + 60
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)  # into the second epoch
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Interrupted in epoch 2" in stderr and "resume with --ckpt_path last" in stderr
    interrupted = torch.load(last, weights_only=True)
    assert interrupted["epoch"] == 0  # the end of epoch 1, loadable

    resumed = run_cli("fit", *SLOW_FIT, "--ckpt_path", "last", cwd=broken)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in (broken / "lightning_logs/b16").iterdir()) == ["version_0"]  # resumed in place

    a, b = checkpoint(straight / "lightning_logs/b16/version_0"), checkpoint(broken / "lightning_logs/b16/version_0")
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    stopper_a, stopper_b = (next(v for k, v in c["callbacks"].items() if "EarlyStopping" in k) for c in (a, b))
    assert stopper_a["best_epoch"] == stopper_b["best_epoch"] and stopper_a["wait_count"] == stopper_b["wait_count"]
    for name in stopper_a["best_weights"]:
        assert torch.equal(stopper_a["best_weights"][name], stopper_b["best_weights"][name])
    # The summaries, printed from the restored best weights, agree too.
    assert summary(resumed.stdout) == summary(uninterrupted.stdout)
    assert "weights restored" in summary(resumed.stdout)


def summary(stdout: str) -> str:
    keep = ("Fit finished", "  best ", "  weights ", "  learned ")
    return "\n".join(line for line in stdout.splitlines() if line.startswith(keep))


def test_same_seed_gives_identical_curves(workdir):
    histories = []
    for _ in range(2):
        cli = bundled_cli(["--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=3"])
        cli.trainer.fit(cli.model, cli.datamodule)
        histories.append(
            [(row["train_loss"], row["val_loss"]) for row in find_callback(cli.trainer, RunHistory).history]
        )
    assert histories[0] == histories[1]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    recorder = '{"class_path": "fork.recorder.ShardRecorder", "init_args": {"out": "' + str(tmp_path) + '"}}'
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=3"]
    args += ["--trainer.devices=2", "--trainer.strategy=ddp", f"--trainer.callbacks+={recorder}"]
    result = run_cli("fit", *args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    seen = [set(rank["seen"].tolist()) for rank in ranks]
    assert len(seen[0]) == len(seen[1]) == 400 and seen[0].isdisjoint(seen[1])  # 800 training points, halved
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert [p.name for p in (tmp_path / "lightning_logs/b16").iterdir()] == ["version_0"]  # one run, not one a rank
    hp = hparams(tmp_path / "lightning_logs/b16/version_0")
    assert hp["batch_size"] == 16 and hp["global_batch_size"] == 32
    assert "Fit finished" in result.stdout and result.stdout.count("Fit finished") == 1  # rank 0 alone reports
    assert "warn" not in result.stderr.lower() and ".py:" not in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_a_study_and_a_rerun_finishes_it(tmp_path, jobs):
    from helpers import write_study

    base = {"trainer": {"accelerator": "cpu", "max_epochs": 30}, "data": {"n_samples": 4000}}
    base["early_stopping"] = {"patience": None}
    config = write_study(tmp_path, {"data.batch_size": [256, 128, 64, 32, 16, 8]}, base=base)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    process = subprocess.Popen(
        [sys.executable, "-m", "batchsize_lit", "study", "--config", str(config), "--jobs", jobs],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which a terminal's Ctrl-C signals as a whole
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job ignores it
    )
    first = process.stdout.readline()  # the first finished cell
    assert first.startswith("[1/6] "), first
    os.killpg(process.pid, signal.SIGINT)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - started < 20  # it stops, it does not run the queued cells
    assert process.returncode == 130
    assert stderr.splitlines()[-1].startswith("interrupted: ") and "run the same command again" in stderr
    assert "Traceback" not in stderr and "resume with --ckpt_path" not in stderr
    folder = tmp_path / "lightning_logs/tiny"
    finished = sorted(p.parent.name for p in folder.glob("*/result.json"))
    assert 1 <= len(finished) < 6 and not (folder / "results.csv").exists()
    time.sleep(2)
    assert sorted(p.parent.name for p in folder.glob("*/result.json")) == finished  # no worker went on

    again = run_cli("study", "--config", str(config), "--jobs", jobs, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{len(finished)} cell(s) already done" in again.stdout
    assert len(list(folder.glob("*/result.json"))) == 6 and (folder / "results.csv").is_file()
