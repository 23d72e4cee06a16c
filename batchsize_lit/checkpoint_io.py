"""Checkpoint files written whole or not at all: each saved beside its place, then renamed into it."""

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from batchsize_lit.disk import saving, torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a write cut off by a kill
    or a full disk leaves the previous checkpoint whole, never a truncated one.

    Until the run's teardown, the renames (and removals of old best checkpoints, in order after them) run on a
    background thread: replacing a file on ext4 waits for its data to be flushed, from a fraction of a millisecond
    to tens of milliseconds, every epoch. The checkpoint itself is written before ``save_checkpoint`` returns.
    A load, the teardown at the end of each fit, validate or test, and interpreter exit wait for what is pending,
    and an error there is raised at the next save or at teardown. After teardown, renames are immediate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.background = True
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._saves = 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        self._raise_failed()
        if "://" in str(path) or storage_options is not None:  # remote file systems: Lightning's own write
            self.wait()
            return super().save_checkpoint(checkpoint, path, storage_options)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._saves += 1
        temporary = f"{path}.tmp{os.getpid()}-{self._saves}"  # one per save: the previous may still be pending
        try:
            saving(path, lambda: torch_save(checkpoint, temporary))  # a full disk: DiskFull, naming the checkpoint
        except BaseException:
            _remove(temporary)
            raise
        self._run(_replace, temporary, str(path))

    def remove_checkpoint(self, path: Any) -> None:
        self._run(super().remove_checkpoint, path)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()
        return super().load_checkpoint(*args, **kwargs)

    def teardown(self) -> None:
        self.background = False
        try:
            self.wait()
        finally:
            if self._executor is not None:  # its thread ends with it: a study of many cells keeps none
                self._executor.shutdown()
                self._executor = None

    def wait(self) -> None:
        """Block until every pending rename and removal is done; raise the first error among them."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _run(self, function: Callable[..., None], *args: Any) -> None:
        if not self.background:
            return function(*args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-rename")
        self._pending = [future for future in self._pending if not future.done() or future.exception()]
        self._pending.append(self._executor.submit(function, *args))

    def _raise_failed(self) -> None:
        if any(future.done() and future.exception() for future in self._pending):
            self.wait()

    def __getstate__(self) -> dict[str, Any]:  # a spawned process gets its own thread and nothing pending
        self.wait()
        return {**self.__dict__, "_executor": None, "_pending": []}


def _replace(temporary: str, path: str) -> None:
    try:
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)
