"""Whole fit processes against Lightning's barebones floor, start-up cancelled by the difference of two sizes."""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def wall(command: list[str]) -> float:
    """Seconds a command takes as a whole process, run in a fresh folder with its output to a pipe."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(command, cwd=folder, check=True, capture_output=True)
        return time.perf_counter() - started


def ours(n_samples: int, batch_size: int, epochs: int) -> list[str]:
    """`fit` as a user runs it: defaults, progress display on, early stopping off so every epoch runs."""
    return [PYTHON, "-m", "batchsize_lit", "fit", "--config", str(ROOT / "configs/b16.yaml"), "--trainer.accelerator",
            "cpu", f"--data.n_samples={n_samples}", f"--data.batch_size={batch_size}", f"--trainer.max_epochs={epochs}",
            "--early_stopping.patience=null"]  # fmt: skip


def floor(n_samples: int, batch_size: int, epochs: int) -> list[str]:
    return [PYTHON, str(ROOT / "benchmarks/floor_fit.py"), f"--n_samples={n_samples}", f"--batch_size={batch_size}",
            f"--max_epochs={epochs}"]  # fmt: skip


def steps(n_samples: int, batch_size: int, epochs: int) -> int:
    train = n_samples - 2 * round(n_samples * 0.1)
    return epochs * -(-train // batch_size)


def compare(name: str, small: tuple[int, int, int], big: tuple[int, int, int], rounds: int) -> None:
    """Per-step cost of each side as (T_big − T_small) / (steps_big − steps_small), medians over rounds."""
    extra_steps = steps(*big) - steps(*small)
    costs: dict[str, list[float]] = {"ours": [], "floor": []}
    for _ in range(rounds):
        for side, make in (("ours", ours), ("floor", floor)):
            costs[side].append((wall(make(*big)) - wall(make(*small))) / extra_steps * 1e6)
    ratios = [a / b for a, b in zip(costs["ours"], costs["floor"], strict=True)]
    print(f"{name:<52} {statistics.median(costs['ours']):>9.1f} {statistics.median(costs['floor']):>9.1f}"
          f" {statistics.median(ratios):>6.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"µs per training step, whole processes; median of {args.rounds} rounds, each running every command once")
    print("ours: python -m batchsize_lit fit, default flags, progress display on, output to a pipe")
    print("floor: Trainer(barebones=True), same model and data, validation every epoch\n")
    print(f"{'':<52} {'ours':>9} {'floor':>9} {'ratio':>6}")
    compare("long: 800k vs 4k points, batch 128, 1 epoch", (4000, 128, 1), (800_000, 128, 1), args.rounds)
    compare("short: 1000 points, batch 16, 40 vs 2 epochs", (1000, 16, 2), (1000, 16, 40), args.rounds)


if __name__ == "__main__":
    main()
