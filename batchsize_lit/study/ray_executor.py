"""The Ray executor: each study cell a Ray task, with its result gathered where the study command runs."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchsize_lit.study.run import Defaults


def run_cells_on_ray(
    cell_args: dict[str, list[str]],
    folder: Path,
    defaults: Defaults,
    on_row: Callable[[dict[str, Any]], None],
    address: str | None = None,
    resources: dict[str, float] | None = None,
) -> None:
    """Run each cell as a Ray task; write each result.json where this command runs, and call on_row as rows come."""
    raise NotImplementedError("the Ray executor is not written yet")
