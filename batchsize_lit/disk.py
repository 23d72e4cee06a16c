"""Files written whole or not at all, and a full disk (ENOSPC, EDQUOT) told in one line that names the file."""

import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from batchsize_lit import compat
from batchsize_lit.errors import DiskFull

FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: OSError, path: str | os.PathLike) -> DiskFull:
    """The one-line error for a write that found the disk (or the quota) full."""
    return DiskFull(f"no space left on the device writing {path} ({error.strerror}); free some space and rerun")


@contextmanager
def whole_file(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing, and rename it into place once written: a reader never
    sees half a file. A full disk removes the temporary file and raises DiskFull naming ``path``."""
    temporary = Path(f"{path}.tmp{os.getpid()}")
    try:
        with open(temporary, mode, **kwargs) as file:
            yield file
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in FULL:
            raise disk_full(error, path) from None
        raise


def saving(path: str | os.PathLike, write: Callable[[], None]) -> None:
    """Run ``write`` (which writes path, or a temporary file for it) and turn a full disk into DiskFull."""
    try:
        write()
    except OSError as error:
        if error.errno in FULL:
            raise disk_full(error, path) from None
        raise


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a Python file: a full disk is then an OSError (ENOSPC), which saving() names; torch's own
    file writer reports it as a RuntimeError ("unexpected pos"), measured on a full tmpfs."""
    with open(path, "wb") as file:
        torch.save(obj, file)


def _event_writer_died(args: threading.ExceptHookArgs) -> None:
    """A TensorBoard event file's writer thread that found the disk full: tensorboard raises its error again in the
    main thread at the logger's next write or flush (Lightning's teardown flushes too), so the fit stops there;
    here that error becomes DiskFull, naming the event file, and the thread's own traceback is not printed."""
    error = args.exc_value
    path = compat.event_writer_file(args.thread) if isinstance(error, OSError) and error.errno in FULL else None
    if path is None:
        _previous_hook(args)
        return
    compat.set_event_writer_error(args.thread, disk_full(error, path))


_previous_hook = threading.excepthook
threading.excepthook = _event_writer_died
