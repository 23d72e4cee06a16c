"""Fixtures: CPU only, quiet Lightning, every run in its own temporary folder."""

import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI(args=...) warns when sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["batchsize-lit"])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, so lightning_logs/ lands in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
