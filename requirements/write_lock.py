"""Print the lock file: the installed version of every package the project needs, with its dev and ray extras."""

import platform
import re
import sys
from importlib import metadata

from packaging.requirements import Requirement

PROJECT = "batchsize_lit"
EXTRAS = ("dev", "ray")
# torch is installed on its own, first, in the build that suits the machine (CPU or CUDA), so the lock leaves it
# and the packages only a CUDA build pulls in to that step; setuptools and pip are the installer's own tools (a
# pinned setuptools in a constraints file can hold back the build of the project itself).
LEFT_OUT = re.compile(r"torch|nvidia-.*|triton|cuda-.*|setuptools|pip")


def canonical(name: str) -> str:
    """A package name as pip compares them: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """Every installed distribution `root[extras]` needs, directly or not, by canonical name: its version.

    Requirements are followed with their extras (``ray[client]`` brings the client's packages) and their markers
    evaluated for this interpreter, as pip does when it installs them.
    """
    versions: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(root, extra) for extra in ("", *extras)]
    while todo:
        name, extra = todo.pop()
        if (canonical(name), extra) in seen:
            continue
        seen.add((canonical(name), extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"error: {name} is not installed; install {root}[{','.join(extras)}] first (make lock does)")
        versions[canonical(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            if not extra or (requirement.marker and "extra" in str(requirement.marker)):
                todo += [(requirement.name, wanted) for wanted in ("", *requirement.extras)]
    return versions


def main() -> None:
    """Write the lock to stdout: a header that says how it was made, then one ``name==version`` a line."""
    versions = closure(PROJECT, EXTRAS)
    python = ".".join(platform.python_version_tuple()[:2])
    print(f"# The versions the tests passed with on Python {python} ({sys.platform}): {PROJECT}[{','.join(EXTRAS)}]")
    print("# and everything it needs, less torch (installed first, CPU or CUDA build) and its CUDA-only packages.")
    print("# `make run`, `make test` and .ci/run install with it (pip install -c). Refresh it with `make lock`.")
    for name in sorted(versions):
        if name != canonical(PROJECT) and not LEFT_OUT.fullmatch(name):
            print(f"{name}=={versions[name]}")


if __name__ == "__main__":
    main()
