"""Shared fixtures: CPU only, quiet Lightning, every run in its own temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Forced onto the CPU and kept quiet; each test adds what defines its run.
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m batchsize_lit ARGS` in a fresh process, as a user would run it."""
    full_env = {key: value for key, value in os.environ.items() if key != "JSONARGPARSE_DEBUG"}
    full_env.update({"PYTHONPATH": str(ROOT / "tests"), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "batchsize_lit", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI(args=...) warns when sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["batchsize-lit"])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, so lightning_logs/ lands in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
