"""--record: what a benchmark prints, and its key numbers, written under docs/results/benchmarks/ with the machine."""

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "docs" / "results" / "benchmarks"


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The --record flag, documented in the script's --help."""
    parser.add_argument(
        "--record",
        nargs="?",
        const=str(FOLDER),
        default=None,
        metavar="FOLDER",
        help="also write what it prints, under a header with the command and the machine (CPUs, load, torch and"
        " lightning versions, date, commit), to FOLDER/<script>.txt and its key numbers to FOLDER/<script>.json;"
        " FOLDER is docs/results/benchmarks/ when not given, where the README reads them (cog -r README.md)",
    )


class _Tee(io.TextIOBase):
    """Writes to the console and keeps a copy, so that --record changes nothing the script prints."""

    def __init__(self, console: TextIO) -> None:
        self.console, self.copy = console, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.console.write(text)

    def flush(self) -> None:
        self.console.flush()


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _gpu() -> str:
    """The GPU torch sees, if any; torch is imported only now, after the measurements."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"


def machine(load_at_start: float) -> dict[str, Any]:
    """The facts a reader needs to weigh the numbers: cores, load, versions, the code's commit."""
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--", "batchsize_lit", "benchmarks", "configs"):
        commit += " with uncommitted changes"
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_start": round(load_at_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "gpu": _gpu(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "lightning": _version("lightning"),
        "commit": commit,
    }


def header(command: str, started: str, ended: str, facts: dict[str, Any]) -> str:
    """The .txt file's first lines, each starting with '# '."""
    lines = [
        command,
        f"recorded {started} to {ended} at commit {facts['commit'] or 'unknown'}",
        f"{facts['cpus']} CPUs ({facts['cpus_usable']} usable), {facts['cpu_model']}; load average (1 min)"
        f" {facts['load_average_start']} at the start, {facts['load_average_end']} at the end; GPU: {facts['gpu']}",
        f"{facts['system']}, Python {facts['python']}, torch {facts['torch']}, lightning {facts['lightning']}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def _rounded(value: Any) -> Any:
    """Floats to 5 significant digits, far below the noise of any timing here, so the JSON reads easily."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


class Recording:
    """Context that tees stdout and, with a folder, writes <folder>/<name>.txt and .json when the block succeeds.

    Args:
        name: The files' name: the script's name without .py, or that with what sets its run apart.
        folder: Where to write, or None to record nothing.
    """

    def __init__(self, name: str, folder: str | None) -> None:
        self.name, self.folder = name, Path(folder) if folder else None
        self.numbers: dict[str, Any] = {}
        self.command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])

    def __enter__(self) -> dict[str, Any]:
        self.started = datetime.now(UTC)
        self.load = os.getloadavg()[0]
        if self.folder:
            self.console, sys.stdout = sys.stdout, _Tee(sys.stdout)
        return self.numbers

    def __exit__(self, kind: type | None, error: BaseException | None, trace: Any) -> None:
        if not self.folder:
            return
        tee, sys.stdout = sys.stdout, self.console
        if kind is not None:  # a failed or interrupted run leaves the last record as it was
            return
        ended = datetime.now(UTC)
        facts = machine(self.load)
        self.folder.mkdir(parents=True, exist_ok=True)
        end = ended.strftime("%H:%M UTC" if ended.date() == self.started.date() else "%Y-%m-%d %H:%M UTC")
        text = header(self.command, self.started.strftime("%Y-%m-%d %H:%M"), end, facts) + tee.copy.getvalue()
        (self.folder / f"{self.name}.txt").write_text(text)
        record = {
            "command": self.command,
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round((ended - self.started).total_seconds(), 1),
            "machine": facts,
            "numbers": _rounded(self.numbers),
        }
        (self.folder / f"{self.name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"recorded in {self.folder / self.name}.txt and .json")
