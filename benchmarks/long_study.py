"""Resident memory and open files across a long study: cells run in one process must leave nothing behind."""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import record

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.study.grid import expand, fit_args
from batchsize_lit.study.run import run_cell


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def measure(cells: int, folder: Path) -> list[tuple[int, float, int, float]]:
    """Run `cells` tiny cells in this process; (cell, RSS MiB, open files, seconds) after each."""
    base = {"data": {"n_samples": 64}, "trainer": {"accelerator": "cpu", "max_epochs": 2}}
    grid = {"data.batch_size": [4, 8, 16, 32], "seed_everything": list(range(-(-cells // 4)))}
    samples = []
    for index, cell in enumerate(expand(grid)[:cells]):
        name = f"cell{index}"
        started = time.perf_counter()
        row = run_cell(name, fit_args(base, cell, folder, name), folder, (LinearRegressor, RegressionDataModule))["row"]
        assert row["status"] == "ok", row
        samples.append((index + 1, rss_mib(), open_files(), time.perf_counter() - started))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=120)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.Recording("long_study", args.record) as numbers, tempfile.TemporaryDirectory() as tmp:
        report(measure(args.cells, Path(tmp)), numbers)


def report(samples: list[tuple[int, float, int, float]], numbers: dict) -> None:
    """The table and the summary lines; their numbers into `numbers`."""
    print(f"{'cells':>6} {'RSS MiB':>8} {'open files':>10} {'s/cell':>7}")
    for index, rss, files, seconds in samples:
        if index in (1, 5, 10) or index % 20 == 0 or index == len(samples):
            print(f"{index:>6} {rss:>8.1f} {files:>10} {seconds:>7.2f}")
    reference = samples[9][1]
    print(f"RSS after cell {len(samples)} / after cell 10: {samples[-1][1] / reference:.3f}")
    print(f"open files after cell 10: {samples[9][2]}, after cell {len(samples)}: {samples[-1][2]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.1f} MiB")
    numbers |= {"cells": len(samples), "rss_mib_10": reference, "rss_mib_last": samples[-1][1], "peak_rss_mib": peak}
    numbers |= {"rss_ratio": samples[-1][1] / reference, "files_10": samples[9][2], "files_last": samples[-1][2]}


if __name__ == "__main__":
    main()
