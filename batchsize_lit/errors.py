"""User-facing errors: one line on stderr, exit status 1, and no traceback unless JSONARGPARSE_DEBUG is set."""

import difflib
import importlib
import inspect
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException

from batchsize_lit import compat
from batchsize_lit.signals import INTERRUPTED_STATUS, SIGTERM_STATUS, WATCH, Terminated


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class WorkerDied(RuntimeError):
    """A study's worker process ended abruptly; what it finished is kept."""


class DiskFull(OSError):
    """A file could not be written: no space left on its device, or the quota is used up."""


class BadInput(ValueError):
    """A value the template's own checks reject: a clean error whenever it is found, even during training."""


# What bad input raises: our own checks (ValueError), jsonargparse's and Lightning's. A run that stops on one of
# these leaves no run folder behind.
BAD_INPUT = (ArgumentError, ValueError, MisconfigurationException)
# What ends a command with one line instead of a traceback: bad input, a fit that diverged, a study worker killed,
# a full disk.
USER_ERRORS = (*BAD_INPUT, Diverged, WorkerDied, DiskFull)


def run_or_exit(command: Callable[[], int | None]) -> None:
    """Run a command and exit with its status; on bad input print one line, ``error: ...``, and exit 1.

    This is the one exit path of the package: the LightningCLI subcommands and the study both end here.
    """
    debug = debug_requested()
    try:
        with WATCH.installed():
            status = command()
    except USER_ERRORS as error:
        if debug:
            raise
        prefix = "training diverged: " if isinstance(error, Diverged) else ""
        sys.exit(f"error: {prefix}{one_line(error)}")
    except SIGTERMException:  # a fit stopped by SIGTERM has printed where it stopped; Lightning's exit would be 0
        sys.exit(SIGTERM_STATUS)
    except Terminated as stopped:
        print(
            f"terminated: {str(stopped) or 'stopped by SIGTERM before training started; nothing to resume'}",
            file=sys.stderr,
        )
        sys.exit(SIGTERM_STATUS)
    except KeyboardInterrupt as interrupt:  # Ctrl-C where no fit handles it: parsing, or a study across its cells
        if debug:
            raise
        print(f"interrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    if WATCH.received and not status:  # Lightning noted it after the last step (the fit's end, an evaluation)
        print("terminated: SIGTERM arrived as the command was ending; it had done its work first", file=sys.stderr)
        sys.exit(SIGTERM_STATUS)
    if status:
        sys.exit(status)


def debug_requested() -> bool:
    """Whether JSONARGPARSE_DEBUG asks for tracebacks. jsonargparse accepts only true or false, and fails on anything
    else; 1, yes and on are rewritten to true, 0, no and off to false, for this process and those it starts."""
    value = os.environ.get("JSONARGPARSE_DEBUG", "").strip().lower()
    if value in ("1", "yes", "on", "true", "0", "no", "off", "false"):
        value = "true" if value in ("1", "yes", "on", "true") else "false"
        os.environ["JSONARGPARSE_DEBUG"] = value
    return value == "true"


def one_line(error: BaseException) -> str:
    """The error as one line. A class-typed key (model, data) fails in jsonargparse as a Union of the class and
    None; only what the class itself said is kept, under its key."""
    text = " ".join(str(error).split())
    text = compat.PATH_UNREADABLE.sub(r"\1", text)
    union = compat.CLASS_UNION_FAILED.match(text)
    subtypes = compat.UNION_SUBTYPES.search(text)
    plain = subtypes and compat.PLAIN_SUBTYPES.fullmatch(subtypes.group(1))
    if not union or plain:  # a Union of plain types: str, Path, None
        return _plain_union(text)
    group, inner = union.group(1) or "", union.group(2)
    given = compat.GIVEN_VALUE.search(text)
    if group and not inner.strip():  # jsonargparse gave no reason (a class_path it cannot read, such as '..')
        inner = f"expected the import path of a class, package.module.Name ({given.group(0) if given else text})"
    not_a_string = compat.CLASS_PATH_NOT_A_STRING.fullmatch(inner)
    if group and not_a_string:  # class_path: null, or a number
        inner = f"class_path must be an import path, package.module.Name (got {not_a_string.group(1)})"
    class_path = compat.CLASS_PATH_PROBLEM.match(inner)
    if class_path:
        inner = class_path.group(2)
        inner = compat.PARSER_KEY.sub(lambda m: f'Parser key "{group}.{m.group(1)}"', inner)
        unknown = compat.UNKNOWN_KEY.match(inner)
        name = unknown.group(1) if unknown else None
        if name and "." not in name:  # a key of the class's own; a nested one is left as jsonargparse words it
            known = inspect.signature(import_class(class_path.group(1))).parameters
            inner = f"unknown key {group}.{name}{did_you_mean(name, known)}"
        elif not compat.PARSER_KEY.match(inner):  # the class cannot be imported
            inner = f"{group or 'class_path'}={class_path.group(1)!r}: {inner}"
    if "NoneType" in inner and not (compat.PARSER_KEY.match(inner) or inner.startswith("unknown key")):
        base = "data" if "LightningDataModule" in text else "model" if "LightningModule" in text else "class"
        inner = _null_init_arg(group or base, text, inner)
    subclass = compat.NOT_A_SUBCLASS.match(inner)
    value = given and _cut(given.group(1))
    if subclass and value:
        inner = f"{group or 'class_path'}={value!r} is not a {subclass.group(1)}"
    not_a_class = compat.NOT_A_CLASS_PATH.match(inner)
    if not_a_class and value:
        base = not_a_class.group(1) or {"model": "LightningModule", "data": "LightningDataModule"}.get(group, "class")
        inner = f"{group or 'class_path'}={value!r}: expected the import path of a {base}, package.module.Name"
    if group and not _names_key(inner, group):  # every line names its key
        inner = f"{group}: {inner}"
    return inner


def _names_key(inner: str, group: str) -> bool:
    """Whether the line starts by naming a key of the group: ``Parser key "model.lr"``, ``unknown key model.x``."""
    parser_key = compat.PARSER_KEY.match(inner)
    named = parser_key.group(1) if parser_key else inner.removeprefix("unknown key ")
    return re.match(rf"{group}\b", named) is not None


def _null_init_arg(group: str, text: str, inner: str) -> str:
    """A class given null for an argument that has no null default fails inside its __init__ on None, in words
    that name no key: the key is named, from the given init_args that are None."""
    given = compat.null_init_args(text)
    if not given:
        return inner
    class_path, none_keys = given
    try:
        parameters = inspect.signature(import_class(class_path)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return inner
    nulls = [key for key in none_keys if key in parameters]
    nulls = [key for key in nulls if parameters[key].default is not None]
    return f"{', '.join(f'{group}.{key}=null' for key in nulls)}: {inner}" if nulls else inner


def _cut(value: str, width: int = 60) -> str:
    """A given value short enough for one line: a path read as a config file gives the whole file as the value."""
    return value if len(value) <= width else f"{value[:width]}..."


def _plain_union(text: str) -> str:
    """jsonargparse's dump of a failed Union of plain types, as ``key='value': expected int or null``."""
    union = compat.PLAIN_UNION_FAILED.match(text)
    if not union:
        return text
    names = [compat.SUBTYPE_NAME.sub(r"\1", name) for name in union.group(2).split(", ")]
    expected = " or ".join("null" if name == "NoneType" else name for name in names)
    return f"{union.group(1)}={union.group(3)!r}: expected {expected}"


def did_you_mean(name: str, known: Iterable[str], prefix: str = "", cutoff: float = 0.6) -> str:
    """``; did you mean X?`` for the closest known name at least ``cutoff`` alike (difflib's ratio), or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def config_values(argv: list[str]) -> list[str]:
    """What each ``--config`` (or ``-c``) of a command line gives: a file's path, or a config inline."""
    values = [b for a, b in itertools.pairwise(argv) if a in ("-c", "--config")]
    return values + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def config_files(args: Any) -> Iterator[tuple[str, Any, yaml.YAMLError | None]]:
    """Each --config of a command line that is a readable file: its path, what it holds, and the YAML error that
    stops it from being read, if any."""
    for path in config_values(list(args or sys.argv[1:]) if not isinstance(args, dict) else []):
        try:
            text = Path(path).read_text() if Path(path).is_file() else None
        except OSError:
            continue
        if text is not None:
            try:
                yield path, yaml.safe_load(text), None
            except yaml.YAMLError as error:
                yield path, None, error


def config_file_problem(error: ArgumentError, args: Any) -> str | None:
    """For jsonargparse's error on a --config file, that file named and what is wrong with it: not valid YAML (and
    where), empty, or not keys and values. None for any other error."""
    if not compat.CONFIG_NOT_READ.search(str(error)):
        return None
    for path, loaded, yaml_error in config_files(args):
        if yaml_error is not None:
            mark = getattr(yaml_error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            return f"--config {path} is not valid YAML{where}: {getattr(yaml_error, 'problem', yaml_error)}"
        if loaded is None:
            return f"--config {path} is empty"
        if not isinstance(loaded, dict):
            return f"--config {path} holds a {type(loaded).__name__}, not keys with values"
    return None


def config_with_keys(args: Any, keys: Iterable[str]) -> str | None:
    """The first --config file whose top level has one of these keys, e.g. a study config's grid or base."""
    matching = (path for path, loaded, _ in config_files(args) if isinstance(loaded, dict) and set(loaded) & set(keys))
    return next(matching, None)


def import_class(class_path: str) -> Any:
    """The class that a class_path such as ``mypackage.MyModel`` names."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)
