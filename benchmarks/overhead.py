"""Whole fit processes against Lightning's barebones floor, start-up cancelled by the difference of two sizes."""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def wall(command: list[str]) -> tuple[float, float]:
    """Seconds a command takes as a whole process, run in a fresh folder with its output to a pipe: wall time, and
    the CPU time (user + system) of the process, which other work on a shared machine disturbs less."""
    with tempfile.TemporaryDirectory() as folder:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, cwd=folder, check=True, capture_output=True)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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


def compare(name: str, small: tuple[int, int, int], big: tuple[int, int, int], rounds: int) -> dict[str, float]:
    """Per-step cost of each side as (T_big − T_small) / (steps_big − steps_small), medians over rounds, in wall
    time and in CPU time; prints them and returns them (µs) with their ratios."""
    extra_steps = steps(*big) - steps(*small)
    costs: dict[str, list[tuple[float, float]]] = {"ours": [], "floor": []}
    for _ in range(rounds):
        for side, make in (("ours", ours), ("floor", floor)):
            (big_wall, big_cpu), (small_wall, small_cpu) = wall(make(*big)), wall(make(*small))
            costs[side].append(((big_wall - small_wall) / extra_steps * 1e6, (big_cpu - small_cpu) / extra_steps * 1e6))
    columns, found = [], {}
    for kind, label in ((0, "wall"), (1, "cpu")):
        ours_cost = [cost[kind] for cost in costs["ours"]]
        floor_cost = [cost[kind] for cost in costs["floor"]]
        ratio = statistics.median(a / b for a, b in zip(ours_cost, floor_cost, strict=True))
        columns.append(f"{statistics.median(ours_cost):>9.1f} {statistics.median(floor_cost):>9.1f} {ratio:>6.2f}")
        found |= {f"{label}_ours": statistics.median(ours_cost), f"{label}_floor": statistics.median(floor_cost)}
        found[f"{label}_ratio"] = ratio
    print(f"{name:<46} {'   '.join(columns)}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.Recording("overhead", args.record) as numbers:
        measure(args.rounds, numbers)


def measure(rounds: int, numbers: dict) -> None:
    """Both comparisons, their key numbers into `numbers`."""
    print(f"µs per training step, whole processes; median of {rounds} rounds, each running every command once")
    print("ours: python -m batchsize_lit fit, default flags, progress display on, output to a pipe")
    print("floor: Trainer(barebones=True), same model and data, validation every epoch\n")
    print(f"{'':<46} {'wall: ours':>10} {'floor':>9} {'ratio':>6}   {'cpu: ours':>9} {'floor':>9} {'ratio':>6}")
    numbers["long"] = compare("long: 800k vs 4k points, batch 128, 1 epoch", (4000, 128, 1), (800_000, 128, 1), rounds)
    numbers["short"] = compare("short: 1000 points, batch 16, 40 vs 2 epochs", (1000, 16, 2), (1000, 16, 40), rounds)


if __name__ == "__main__":
    main()
