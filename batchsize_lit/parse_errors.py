"""A parse error made plain: the bad YAML file named, a study config told apart, an unknown key's likely meaning."""

from collections.abc import Iterable
from typing import Any, NoReturn

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser

from batchsize_lit import COMMAND, compat
from batchsize_lit.errors import config_file_problem, config_with_keys, did_you_mean


def explain(error: ArgumentError, args: Any, parsers: Iterable[LightningArgumentParser]) -> NoReturn:
    """Raise the parse error with the bad YAML file named, or a suggestion for an unknown key.

    Args:
        error: jsonargparse's error.
        args: The arguments parsed, as LightningCLI got them.
        parsers: Every parser of the command, the subcommands' too: the keys they know are the suggestions.

    Raises:
        ArgumentError: Always: the explained error, or the error itself.
    """
    problem = config_file_problem(error, args)
    if problem:
        raise ArgumentError(None, problem) from None
    study = config_with_keys(args, ("grid", "base"))
    if study:
        raise ArgumentError(None, f"--config {study} is a study config: run it with {COMMAND} study") from None
    hint = unknown_key_hint(str(error), parsers)
    if hint:
        raise ArgumentError(None, f"{error}{hint}") from None
    linked = compat.LINKED_HISTORY_KEY.match(str(error))
    if linked:  # the history follows early stopping: the value came from there
        raise ArgumentError(None, str(error).replace("history.", "early_stopping.", 1)) from None
    raise error


def unknown_key_hint(message: str, parsers: Iterable[LightningArgumentParser]) -> str:
    """``; did you mean ...?`` for the unknown key a parse error names, or "" where it names none or none is close.

    Args:
        message: The parse error's text.
        parsers: The parsers whose keys are the candidates.
    """
    key = compat.unknown_key(message)
    if key is None:
        return ""
    known = {key for parser in parsers for key in parser.get_defaults().keys()}  # noqa: SIM118
    flag = key.startswith("--")
    return did_you_mean(key.removeprefix("--"), known, prefix="--" if flag else "")
