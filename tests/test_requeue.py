"""SLURM requeue: SIGUSR1 before the time limit saves and requeues the job, and the requeued job, the same command
under the same job id, continues the same run folder and TensorBoard run to the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_signals import LONG_FIT, summary, wait_for, weights

from helpers import CONFIGS, QUIET, ROOT, exit_code, run_cli, scalars

# What a batch job's environment holds, as far as Lightning's SLURM detection reads it.
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "b16-fit", "SLURM_NODELIST": "localhost",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


def slurm_env(folder: Path) -> dict[str, str]:
    """SLURM's variables, and a fake scontrol first on PATH: it records its arguments and, as SLURM does to a
    running job it requeues, sends SIGTERM to the job's process (the fit that called it)."""
    scontrol = folder / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    path = f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}"
    return {**SLURM, "PATH": path, "SCONTROL_LOG": str(folder / "scontrol.log")}


@pytest.mark.slow
def test_sigusr1_requeues_and_the_requeued_job_continues_its_run_to_the_uninterrupted_result(tmp_path):
    job, straight = tmp_path / "job", tmp_path / "straight"
    job.mkdir(), straight.mkdir()
    env = {**os.environ, **slurm_env(tmp_path), "PYTHONPATH": str(ROOT / "tests")}
    env.pop("JSONARGPARSE_DEBUG", None)
    command = [sys.executable, "-m", "batchsize_lit", "fit", *LONG_FIT]
    process = subprocess.Popen(command, cwd=job, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = job / "lightning_logs/b16/version_0"
    wait_for(run / "checkpoints/last.ckpt")  # the end of epoch 1
    process.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit (#SBATCH --signal=SIGUSR1@90)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr  # SLURM's SIGTERM after the requeue stopped the fit at a step
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert "Requeued SLURM job: 4242" in stderr and "Traceback" not in stderr, stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("Stopped by SIGTERM")]
    step = weights(run / "checkpoints/last.ckpt")["global_step"]
    assert stopped == [
        f"Stopped by SIGTERM in epoch 2 at step {step}: lightning_logs/b16/version_0/checkpoints/last.ckpt holds step"
        f" {step}; resume with --ckpt_path last (the same command in SLURM job 4242, requeued, resumes it too)"
    ], stderr
    assert (run / "hpc_ckpt_1.ckpt").is_file() and not list(job.glob("*.ckpt"))  # Lightning's, in the run folder
    before = scalars(run)

    again = run_cli("fit", *LONG_FIT, cwd=job, env=slurm_env(job))  # the requeued job: the same command
    assert again.returncode == 0, again.stderr
    assert "SLURM job 4242 continues lightning_logs/b16/version_0 from its last.ckpt" in again.stderr, again.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # the same run folder
    assert not (job / "scontrol.log").exists()  # nothing requeued the second time
    uninterrupted = run_cli("fit", *LONG_FIT, cwd=straight)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    a = weights(straight / "lightning_logs/b16/version_0/checkpoints/last.ckpt")
    b = weights(run / "checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    assert summary(again.stdout) == summary(uninterrupted.stdout) and summary(again.stdout)

    # One TensorBoard run: each curve goes on past the stop, at the steps and values of the uninterrupted run.
    curves, clean = scalars(run), scalars(straight / "lightning_logs/b16/version_0")
    assert curves.keys() == clean.keys() and "train_loss_step" in curves
    for tag, points in curves.items():
        assert [s for s, _ in points] == [s for s, _ in clean[tag]], tag
        assert [v for _, v in points] == pytest.approx([v for _, v in clean[tag]], rel=1e-6), tag
        assert points[: len(before.get(tag, []))] == before.get(tag, []), tag  # what was written before is kept
    assert max(s for s, _ in curves["train_loss_step"]) > step > max(s for s, _ in before["train_loss_step"])


TINY = ["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, "--data.n_samples=200", "--trainer.max_epochs=1"]


def test_a_requeued_job_continues_only_the_run_its_own_command_started(workdir, monkeypatch, capsys):
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    runs = workdir / "lightning_logs/b16"
    assert exit_code(TINY) == 0
    marker = json.loads((runs / "version_0/slurm_job.json").read_text())
    assert marker == {"job": "4242", "command": TINY}
    capsys.readouterr()

    assert exit_code(TINY) == 0  # requeued after it finished: continues it, and trains nothing more
    assert "SLURM job 4242 continues lightning_logs/b16/version_0 from its last.ckpt" in capsys.readouterr().err
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"]

    assert exit_code([*TINY, "--seed_everything=3"]) == 0  # another command in the same job: a run of its own
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    assert exit_code(TINY) == 0  # the same command in another job: a run of its own
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert exit_code(TINY) == 0
    assert json.loads((runs / "version_3/slurm_job.json").read_text())["job"] == "4240_3"  # as scontrol names it
    for key in SLURM:
        monkeypatch.delenv(key)
    assert exit_code(TINY) == 0  # outside SLURM: no record
    assert sorted(p.name for p in runs.iterdir()) == [f"version_{n}" for n in range(5)]
    assert not (runs / "version_4/slurm_job.json").exists()


def test_a_requeued_job_whose_run_saved_nothing_starts_afresh(workdir, monkeypatch):
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    assert exit_code(TINY) == 0
    runs = workdir / "lightning_logs/b16"
    for checkpoint in runs.glob("version_0/checkpoints/*.ckpt"):  # as if killed before its first epoch ended
        checkpoint.unlink()
    assert exit_code(TINY) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
