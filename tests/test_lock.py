"""The lock file that `make run`, `make test` and CI install with: within pyproject.toml's ranges, and rewritable."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCKS = sorted((ROOT / "requirements").glob("lock-py*.txt"))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines, by canonical name; comments left out."""
    pairs = (line.split("==") for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {canonical(name): version for name, version in pairs}


def test_there_is_a_lock_for_the_python_make_uses_by_default():
    assert ROOT / "requirements" / "lock-py3.11.txt" in LOCKS


@pytest.mark.parametrize("lock", LOCKS, ids=lambda path: path.name)
def test_the_lock_pins_every_dependency_within_its_range(lock):
    """A range changed in pyproject.toml without `make lock` would make the pinned install fail: caught here."""
    pinned = pins(lock.read_text())
    for line in metadata.requires("batchsize_lit"):
        requirement = Requirement(line)
        name = canonical(requirement.name)
        if name in ("torch", "batchsize-lit"):  # installed on its own; the project itself
            continue
        locked = ("", "dev", "digits", "ray")  # what the lock covers; other extras (mlflow) install from the ranges
        if requirement.marker and not any(requirement.marker.evaluate({"extra": extra}) for extra in locked):
            continue
        assert name in pinned, f"{lock.name} has no pin for {requirement}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), f"{lock.name}: {name}=={pinned[name]}"
    assert not {"torch", "batchsize-lit", "setuptools", "pip"} & set(pinned)
    assert not [name for name in pinned if name.startswith(("nvidia-", "cuda-", "triton"))]


def test_the_lock_writer_pins_this_environment():
    """`make lock`'s last step: the project's closure with its dev and Ray extras, at the installed versions."""
    pytest.importorskip("ray")
    written = subprocess.run(
        [sys.executable, str(ROOT / "requirements" / "write_lock.py")], capture_output=True, text=True, check=True
    ).stdout
    pinned = pins(written)
    for name in ("lightning", "jsonargparse", "ray", "pytest", "scikit-learn", "docstring-parser", "grpcio"):
        assert pinned[name] == metadata.version(name), name  # docstring-parser and grpcio: the extras' own packages
    assert "torch" not in pinned and "batchsize-lit" not in pinned
