"""SLURM requeue: the same command in a requeued job continues its own run folder, from its last.ckpt."""

import json
import logging
import os
import sys
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

# Which job and command started a run under SLURM: a requeued job (same job id, same command) finds its run by it.
MARKER = "slurm_job.json"

# Lightning's requeue handler saves its hpc checkpoint without saying weights_only, and Lightning then logs that it
# took the default: a line no user of this template can act on.
logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
    lambda record: "`weights_only` was not set" not in str(record.msg)
)


def slurm_job() -> str | None:
    """The SLURM job this process runs in, named as ``scontrol requeue`` names it (``<array job>_<task>`` for an
    array task); None outside a batch job, by Lightning's own test (SLURM_NTASKS set, a job name other than bash or
    interactive), which is also what turns its SLURM environment and requeue handler on."""
    if "SLURM_NTASKS" not in os.environ or not SLURMEnvironment.detect():  # the first test: no srun warning
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def mark(run: Path, argv: list[str]) -> None:
    """Record in a new run's folder the SLURM job and the command that started it (nothing outside SLURM)."""
    job = slurm_job()
    if job is None:
        return
    temporary = run / f"{MARKER}.tmp{os.getpid()}"
    temporary.write_text(json.dumps({"job": job, "command": argv}) + "\n")
    os.replace(temporary, run / MARKER)  # whole or not at all: a requeued job reads it


def requeued_checkpoint(parent: Path | None, argv: list[str]) -> str | None:
    """The last.ckpt of the run that this SLURM job started with this same command, when the job was requeued:
    the newest version_N under ``parent`` whose marker records both and that holds a last.ckpt. None outside SLURM,
    for another command, or when that run saved nothing (it is then started afresh, in a new folder)."""
    job = slurm_job()
    if job is None or parent is None:
        return None
    numbered = [p for p in parent.glob("version_*") if p.name[8:].isdigit()]
    for run in sorted(numbered, key=lambda p: int(p.name[8:]), reverse=True):
        try:
            record = json.loads((run / MARKER).read_text())
        except (OSError, ValueError):
            continue
        last = run / "checkpoints" / "last.ckpt"
        if record == {"job": job, "command": argv} and last.is_file():
            if rank_zero_only.rank == 0:
                print(f"SLURM job {job} continues {run} from its last.ckpt", file=sys.stderr)
            return str(last)
    return None
