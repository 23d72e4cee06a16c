"""Times a study with cohorts, the same study with --cohorts off, and (for the critical-batch grid) the plain
vectorized script, in one run, and checks that their steps to target agree.

    python benchmarks/cohorts.py                                   # configs/study_critical_batch.yaml
    python benchmarks/cohorts.py --config configs/study_digits_critical_batch.yaml
    python benchmarks/cohorts.py --repeat 3                        # each three times in turn; medians quoted

Each is timed by wall clock and by the CPU time of its process (user + system), which a machine shared with other
work does not inflate as much.
"""

import argparse
import csv
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "benchmarks" / "plain_critical_batch.py"


def timed(command: list[str]) -> tuple[str, float, float]:
    """The command's stdout, wall seconds and CPU seconds (its own and its children's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def steps_of(folder: Path, suffix: str = "") -> dict[str, int | None]:
    """Each cell's steps to the target of this suffix (the hardest by default; _1, _2, ... easiest first)."""
    rows = [json.loads(path.read_text())["row"] for path in sorted(folder.glob("*/result.json"))]
    return {row["cell"]: row.get(f"steps_to_target{suffix}") for row in rows}


def b_crits(folder: Path) -> list[float]:
    """B_crit of each target, easiest first, from the study's critical_batch.csv (none where no B_crit was fit)."""
    if not (folder / "critical_batch.csv").exists():
        return []
    with open(folder / "critical_batch.csv") as file:
        return [float(row["b_crit"]) for row in csv.DictReader(file)]


def compare_targets(root: Path, numbers: dict) -> None:
    """Steps to each target, and each target's B_crit, of the cohorts against --cohorts off."""
    count = targets(root / "off")
    rows = []
    for index, (off, cohorts) in enumerate(zip(b_crits(root / "off"), b_crits(root / "cohorts"), strict=True), 1):
        suffix = f"_{index}" if count > 1 else ""
        same, close, beyond = agreement(steps_of(root / "off", suffix), steps_of(root / "cohorts", suffix))
        rows.append({"target": index, "identical": same, "within_2pc": close, "beyond": len(beyond),
                     "b_crit_off": off, "b_crit_cohorts": cohorts, "b_crit_change": cohorts / off - 1})  # fmt: skip
        print(f"target {index}: steps {same} identical, {close} within 2%, {len(beyond)} beyond; B_crit {off:.4g} off,"
              f" {cohorts:.4g} cohorts ({100 * (cohorts / off - 1):+.2f}%)")  # fmt: skip
        for line in beyond[:5]:
            print(f"  {line}")
    numbers["by_target"] = rows


def agreement(one: dict[str, int | None], two: dict[str, int | None]) -> tuple[int, int, list[str]]:
    """Cells with identical steps, cells within 2%, and the cells beyond."""
    same = close = 0
    beyond = []
    for cell, steps in one.items():
        other = two.get(cell)
        if steps == other:
            same += 1
        elif steps is not None and other is not None and abs(steps - other) <= 0.02 * max(steps, other):
            close += 1
        else:
            beyond.append(f"{cell}: {steps} vs {other}")
    return same, close, beyond


def b_crit(output: str) -> float | None:
    found = re.search(r"B_crit = ([\d.e+-]+)", output)
    return float(found.group(1)) if found else None


def cohort_line(output: str) -> str | None:
    """The study's line saying how its cells were run together, or why not."""
    found = re.search(r"^(\d+ cells in \d+ cohorts|cohorts off: .*)", output, re.MULTILINE)
    return found.group(1) if found else None


def targets(folder: Path) -> int:
    """How many targets the study's rows carry steps for (steps_to_target_1, _2, ...; one when unnumbered)."""
    row = json.loads(next(folder.glob("*/result.json")).read_text())["row"]
    return max(1, sum(re.fullmatch(r"steps_to_target_\d+", key) is not None for key in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/study_critical_batch.yaml")
    parser.add_argument("--jobs", default="1", help="--jobs of both studies")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, in turn; their medians are quoted")
    record.add_argument(parser)
    args = parser.parse_args()
    name = "cohorts" if Path(args.config).name == "study_critical_batch.yaml" else f"cohorts_{Path(args.config).stem}"
    with record.Recording(name, args.record) as numbers:
        measure(args, numbers)


def measure(args: argparse.Namespace, numbers: dict) -> None:
    """The studies and the plain script, timed ``--repeat`` times in turn; their medians and key numbers into
    `numbers`. A repeat runs each into a folder of its own: a study skips the cells it finds finished."""
    root = Path(tempfile.mkdtemp(prefix="cohorts-"))
    plain_too = Path(args.config).name == "study_critical_batch.yaml"
    runs: dict[str, list[dict]] = {"cohorts": [], "off": [], "plain": []}
    for repeat in range(args.repeat):
        folder = root / f"repeat{repeat}"
        for name, extra in (("cohorts", []), ("off", ["--cohorts", "off"])):
            runs[name].append(run_study(args, folder, name, extra))
        if plain_too:
            output, wall, cpu = timed([sys.executable, str(PLAIN)])
            runs["plain"].append({"wall": wall, "cpu": cpu, "steps": json.loads(output)["steps_to_target"]})
            print(f"plain script     {wall:7.1f} s wall {cpu:7.1f} s CPU")
    results = {name: median_run(found) for name, found in runs.items() if found}
    first = root / "repeat0"
    same, close, beyond = agreement(results["off"]["steps"], results["cohorts"]["steps"])
    cells = len(results["off"]["steps"])
    print(f"steps to target, cohorts vs off: {same}/{cells} identical, {close} within 2%, {len(beyond)} beyond")
    for line in beyond[:10]:
        print(f"  {line}")
    compare_targets(first, numbers)
    ratio = results["cohorts"]["wall"] / results["off"]["wall"]
    cpu_ratio = results["cohorts"]["cpu"] / results["off"]["cpu"]
    print(f"cohorts / off: {ratio:.3f} wall, {cpu_ratio:.3f} CPU (medians of {args.repeat})")
    numbers |= {"config": args.config, "cells": cells, "targets": targets(first / "off"), "wall_ratio": ratio}
    numbers |= {"cpu_ratio": cpu_ratio, "agreement": {"identical": same, "within_2pc": close, "beyond": len(beyond)}}
    numbers |= {"repeats": args.repeat}
    numbers |= {key: {k: v for k, v in results[key].items() if k != "steps"} for key in ("cohorts", "off")}
    if plain_too:
        plain, cohorts = results["plain"], results["cohorts"]
        same, close, beyond = agreement(results["off"]["steps"], plain["steps"])  # cells named bs8_lr0.1_seed2 in both
        print(f"steps to target, plain vs off: {same}/{cells} identical, {close} within 2%, {len(beyond)} beyond")
        print(f"cohorts / plain: {cohorts['wall'] / plain['wall']:.2f} wall, {cohorts['cpu'] / plain['cpu']:.2f} CPU")
        agree = {"identical": same, "within_2pc": close, "beyond": len(beyond)}
        numbers["plain"] = {"wall": plain["wall"], "cpu": plain["cpu"], "walls": plain["walls"]}
        numbers["plain"] |= {"cells": len(plain["steps"]), "agreement": agree}
        numbers["plain"] |= {"wall_ratio": cohorts["wall"] / plain["wall"], "cpu_ratio": cohorts["cpu"] / plain["cpu"]}
    print(f"runs kept in {root}")


def run_study(args: argparse.Namespace, root: Path, name: str, extra: list[str]) -> dict:
    """One study, timed: its wall and CPU seconds, B_crit, event files, steps to target and cohort line."""
    study = [sys.executable, "-m", "batchsize_lit", "study", "--config", args.config, "--root", str(root)]
    output, wall, cpu = timed([*study, "--name", name, "--jobs", args.jobs, *extra])
    events = len(list((root / name).glob("*/events.out.tfevents.*")))
    found = {"wall": wall, "cpu": cpu, "b_crit": b_crit(output), "events": events, "steps": steps_of(root / name)}
    found["line"] = cohort_line(output)
    print(f"study {name:<8} {wall:7.1f} s wall {cpu:7.1f} s CPU  B_crit {found['b_crit']}  {events} event files")
    return found


def median_run(runs: list[dict]) -> dict:
    """The first run's numbers with the median wall and CPU seconds of all, and every run's wall seconds."""
    return {**runs[0], "wall": statistics.median(r["wall"] for r in runs),
            "cpu": statistics.median(r["cpu"] for r in runs), "walls": [r["wall"] for r in runs]}  # fmt: skip


if __name__ == "__main__":
    main()
