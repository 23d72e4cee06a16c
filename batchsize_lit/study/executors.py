"""Where a study's tasks run (this process, worker processes, Ray), behind one interface; the bookkeeping shared."""

import gc
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from batchsize_lit.errors import WorkerDied
from batchsize_lit.signals import SIGTERM_STATUS, Terminated, worker_sigterm
from batchsize_lit.study.cell_cli import Defaults

Task = dict[str, list[str]]  # a cohort's cells, or one cell: each cell's fit command line by its name
OnRow = Callable[[dict[str, Any]], None]
TaskRunner = Callable[[Task, Path, Defaults], list[dict[str, Any]]]


class Executor(Protocol):
    """Runs a study's tasks and calls ``on_row`` with each cell's row as the cell finishes, in any order."""

    def run(self, tasks: list[Task], folder: Path, defaults: Defaults, on_row: OnRow) -> None: ...


def run_tasks(executor: Executor, tasks: list[Task], folder: Path, defaults: Defaults, on_row: OnRow) -> None:
    """Run the tasks with an executor: each cell's folder emptied first (an unfinished cell of an interrupted run,
    or one to redo), and an interruption turned into one line saying how many cells finished and how to go on.

    Ctrl-C and SIGTERM stop the study: the finished cells are kept, the running ones recorded as interrupted
    where they could be, and the same command runs the others.
    """
    cells = [cell for task in tasks for cell in task]
    for cell in cells:
        shutil.rmtree(folder / cell, ignore_errors=True)
    done = 0

    def record(row: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        on_row(row)

    finished = "{} of {} cells finished, kept in {}; run the same command again to run the others"
    try:
        executor.run(tasks, folder, defaults, record)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(finished.format(done, len(cells), folder)) from None
    except Terminated:
        raise Terminated("stopped by SIGTERM: " + finished.format(done, len(cells), folder)) from None


@dataclass
class InProcess:
    """Every task in this process, one after another, on one torch thread (as in a worker: the same sums in the
    same order, whatever --jobs)."""

    run_task: TaskRunner

    def run(self, tasks: list[Task], folder: Path, defaults: Defaults, on_row: OnRow) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for task in tasks:
                for row in self.run_task(task, folder, defaults):
                    on_row(row)
        finally:
            torch.set_num_threads(threads)


@dataclass
class WorkerPool:
    """Each task in one of ``jobs`` fresh worker processes (spawned: no forked torch threads or CUDA state), each
    pinned to its own GPU where there are several. Worker processes ignore Ctrl-C; the study's process ends them."""

    jobs: int
    run_task: TaskRunner

    def run(self, tasks: list[Task], folder: Path, defaults: Defaults, on_row: OnRow) -> None:
        spawn = multiprocessing.get_context("spawn")
        gpus = gpu_count()
        devices = spawn.Queue()  # each worker takes one index as it starts
        for index in range(self.jobs):
            devices.put(index % gpus if gpus > 1 else None)
        pool = ProcessPoolExecutor(self.jobs, mp_context=spawn, initializer=_init_worker, initargs=(devices,))
        with pool:
            futures = [pool.submit(_worker_task, self.run_task, task, folder, defaults) for task in tasks]
            try:
                for future in as_completed(futures):  # each row as its task finishes, whatever the grid order
                    for row in future.result():
                        on_row(row)
            except BaseException as error:  # Ctrl-C, a dead worker, bad input: no task starts after it
                pool.shutdown(wait=False, cancel_futures=True)
                _stop_workers(graceful=isinstance(error, Terminated))
                if isinstance(error, BrokenProcessPool):
                    raise WorkerDied(
                        "a worker process died (killed, out of memory, or failed to start: see above); the finished"
                        f" cells are kept in {folder}: run the same command again to run the others"
                    ) from None
                raise


def _stop_workers(graceful: bool) -> None:
    """End the pool's processes, mid-task. On SIGTERM each is sent it too and given time to record its cells as
    interrupted (a fit stops at its next step); any still running after that is killed."""
    workers = multiprocessing.active_children()
    for worker in workers:
        if graceful:
            worker.terminate()  # SIGTERM
        else:
            worker.kill()
    for worker in workers:
        worker.join(timeout=60 if graceful else None)
        if worker.is_alive():
            worker.kill()
            worker.join()


def _worker_task(run_task: TaskRunner, task: Task, folder: Path, defaults: Defaults) -> list[dict[str, Any]]:
    """A task in a worker process; a worker whose task SIGTERM stopped ends, as the study does, once its cells are
    recorded, rather than take the next task from the queue."""
    try:
        return run_task(task, folder, defaults)
    except Terminated:
        sys.stderr.flush()
        os._exit(SIGTERM_STATUS)


def _init_worker(devices: Any) -> None:
    gc.freeze()  # what the worker imported lives as long as it does: out of every collection, as in __main__
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the study's own process, which ends the workers
    signal.signal(signal.SIGTERM, worker_sigterm)  # between cells it ends the worker; in a fit, Lightning stops it
    torch.set_num_threads(1)
    device = devices.get()
    if device is not None:  # one GPU per worker
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)


@dataclass
class RayTasks:
    """Each cell a Ray task (see ray_executor.run_cells_on_ray), on a local Ray instance or a cluster."""

    address: str | None = None
    resources: dict[str, float] | None = None

    def run(self, tasks: list[Task], folder: Path, defaults: Defaults, on_row: OnRow) -> None:
        from batchsize_lit.study.ray_executor import run_cells_on_ray

        cells = {cell: args for task in tasks for cell, args in task.items()}
        run_cells_on_ray(cells, folder, defaults, on_row, self.address, self.resources)


def choose(
    kind: str, jobs: int, run_task: TaskRunner, address: str | None, resources: dict[str, float] | None
) -> Executor:
    """The executor a study's settings ask for: Ray tasks, a pool of ``jobs`` workers, or this process."""
    if kind == "ray":
        return RayTasks(address, resources)
    return WorkerPool(jobs, run_task) if jobs > 1 else InProcess(run_task)


def default_jobs() -> int:
    """One worker per GPU where there are several, else one per two CPU cores (a tiny model runs best on one)."""
    gpus = gpu_count()
    return gpus if gpus > 1 else max(1, (os.cpu_count() or 1) // 2)


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
