"""Whole commands, as a user runs them: the 2×2 study against a plain PyTorch script, and start-up time."""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]


def wall(command: list[str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def compare(
    name: str, ours: list[str], reference: list[str], repeats: int, fresh_dir: bool = False
) -> dict[str, float]:
    """Median wall times of both commands, run in turn, and the median of their per-round ratios; printed and
    returned (seconds)."""
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
    return {
        "ours": statistics.median(times["ours"]),
        "reference": statistics.median(times["reference"]),
        "ratio": ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.Recording("end_to_end", args.record) as numbers:
        measure(args.repeats, numbers)


def measure(repeats: int, numbers: dict) -> None:
    """The three comparisons, their key numbers into `numbers`."""
    python = sys.executable
    print(f"median of {repeats} rounds; each round runs both commands; wall time includes interpreter start\n")
    print(f"{'':<44} {'ours':>9} {'reference':>9} {'ratio':>6}")
    study = [python, "-m", "batchsize_lit", "study", "--config", str(ROOT / "configs/study_seed.yaml")]
    plain = [python, str(ROOT / "benchmarks/plain_2x2.py")]
    numbers["study"] = compare("study_seed.yaml vs plain_2x2.py", study, plain, repeats, fresh_dir=True)
    numbers["help"] = compare(
        "--help vs import lightning.pytorch",
        [python, "-m", "batchsize_lit", "--help"],
        [python, "-c", "import lightning.pytorch"],
        repeats,
    )
    numbers["import"] = compare(
        "import lightning.pytorch vs import torch",
        [python, "-c", "import lightning.pytorch"],
        [python, "-c", "import torch"],
        repeats,
    )


if __name__ == "__main__":
    main()
