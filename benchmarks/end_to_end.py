"""Whole commands, as a user runs them: the 2×2 study against a plain PyTorch script, and start-up time."""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(command: list[str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def compare(name: str, ours: list[str], reference: list[str], repeats: int, fresh_dir: bool = False) -> None:
    """Median wall times of both commands, run in turn, and the median of their per-round ratios."""
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(repeats):
        for key, command in (("ours", ours), ("reference", reference)):
            with tempfile.TemporaryDirectory() as folder:
                times[key].append(wall(command, folder if fresh_dir else str(ROOT)))
    ratio = statistics.median(a / b for a, b in zip(times["ours"], times["reference"], strict=True))
    print(
        f"{name:<44} {statistics.median(times['ours']):>7.2f} s {statistics.median(times['reference']):>7.2f} s"
        f" {ratio:>6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    print(f"median of {args.repeats} rounds; each round runs both commands; wall time includes interpreter start\n")
    print(f"{'':<44} {'ours':>9} {'reference':>9} {'ratio':>6}")
    study = [python, "-m", "batchsize_lit", "study", "--config", str(ROOT / "configs/study_seed.yaml")]
    plain = [python, str(ROOT / "benchmarks/plain_2x2.py")]
    compare("study_seed.yaml vs plain_2x2.py", study, plain, args.repeats, fresh_dir=True)
    compare(
        "--help vs import lightning.pytorch",
        [python, "-m", "batchsize_lit", "--help"],
        [python, "-c", "import lightning.pytorch"],
        args.repeats,
    )
    compare(
        "import lightning.pytorch vs import torch",
        [python, "-c", "import lightning.pytorch"],
        [python, "-c", "import torch"],
        args.repeats,
    )


if __name__ == "__main__":
    main()
