"""Helpers the tests share: running the command line as a user does, and reading back what a run wrote."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.__main__ import main
from batchsize_lit.cli import BatchSizeCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Forced onto the CPU and kept quiet; each test adds what defines its run.
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m batchsize_lit ARGS` in a fresh process, as a user would run it; tests/ is importable, so a config
    can name the fork package's classes."""
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


# A tiny study's base config: 200 points, 3 epochs, no early stopping.
BASE = {
    "data": {"n_samples": 200},
    "early_stopping": {"patience": None, "restore_best_weights": False},
    "trainer": {"accelerator": "cpu", "max_epochs": 3},
}


def write_study(folder: Path, grid: dict, base: dict | None = None, name: str = "tiny") -> Path:
    """A study config file with this grid and base (BASE by default)."""
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps({"base": base or BASE, "grid": grid}))
    return path


def exit_code(args: list[str]) -> int | str:
    """The command's exit status, run in this process: 0, or what it exited with."""
    try:
        main(args)
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def run(*args: str) -> int | str:
    """The study command's exit status, run in this process."""
    return exit_code(["study", *args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as file:
        return list(csv.DictReader(file))


def bundled_cli(args: list[str]) -> BatchSizeCLI:
    """The CLI with the bundled problem as its default, parsed and instantiated but not run."""
    return BatchSizeCLI(LinearRegressor, RegressionDataModule, args=args, run=False)


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run folder, read back with TensorBoard's own reader."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def hparams(run: Path) -> dict[str, float | str | bool]:
    """The hparams tab of a run folder: its hyperparameters, read back with TensorBoard's own reader."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in info.hparams.items()}  # 0 and "" too
