"""What a command line says beyond its parsed values: the keys it gives, the classes' own defaults, --print_config."""

import inspect
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import ArgumentError

from batchsize_lit.errors import config_values, import_class


def config_stem(config: Any, default: str) -> str:
    """The file name, without extension, of the last --config given: what a run or a study is named after. A config
    given inline, as a YAML string, has no file name (jsonargparse records None)."""
    paths = config.get("config") or []
    return Path(str(paths[-1])).stem if paths and paths[-1] is not None else default


# The flags of --print_config=FLAG,...: jsonargparse's, with skip_null as the older name of skip_unset.
PRINT_FLAGS = {"skip_default": "skip_default", "skip_unset": "skip_unset", "skip_null": "skip_unset"}


def print_flags(printing: list[str]) -> dict[str, bool]:
    """jsonargparse's dump arguments for ``--print_config[=flags]``; by default every key is printed."""
    kwargs = {"skip_unset": False}
    for flag in (flag for arg in printing for flag in arg.partition("=")[2].split(",") if flag):
        if flag not in PRINT_FLAGS:
            raise ArgumentError(None, f"--print_config={flag}: unknown flag; known: {', '.join(PRINT_FLAGS)}")
        kwargs[PRINT_FLAGS[flag]] = True
    return kwargs


def without_print_config(args: Any) -> tuple[list[str] | None, list[str], Any]:
    """Take ``--print_config[=flags]`` out of a command line: it is printed once the classes' own defaults are in
    place (print_config), where jsonargparse would print it while parsing.

    Args:
        args: The arguments LightningCLI was given; None for sys.argv, whose copy loses the flags then.

    Returns:
        The command line as a list (None for arguments given as a dict), the --print_config arguments in it, and the
        arguments to parse.
    """
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    printing = [arg for arg in argv or [] if arg.split("=")[0] == "--print_config"]
    if printing:
        kept = [arg for arg in argv if arg not in printing]
        if args is None:
            sys.argv[1:] = kept
        else:
            args = kept
    return argv, printing, args


def print_config(parser: Any, config: Any, printing: list[str]) -> NoReturn:
    """Print the config as --print_config asks, and exit.

    Args:
        parser: The subcommand's parser.
        config: The subcommand's config.
        printing: The --print_config arguments (without_print_config).
    """
    text = parser.dump(config, **print_flags(printing))
    print(text, end="" if text.endswith("\n") else "\n")
    sys.exit(0)


def use_own_defaults(config: Any, default_classes: dict[str, type | None], given: set[str]) -> None:
    """drop_inherited_defaults for each part (model, data) whose class replaces the default class.

    Args:
        config: The subcommand's config, changed in place.
        default_classes: The default class of each part, by config key; None where there is none.
        given: The keys the command line sets (given_keys).
    """
    for key, default_class in default_classes.items():
        if default_class is not None and config.get(key) is not None:
            drop_inherited_defaults(config[key], default_class, {k[len(key) + 1 :] for k in given})


def drop_inherited_defaults(spec: Any, default_class: type, given: set[str]) -> None:
    """Give a class chosen by class_path its own defaults where jsonargparse left the default class's in place.

    When a class_path replaces the default class, jsonargparse keeps every init arg the new class also has, the
    default class's defaults among them (jsonargparse issue #460). An init arg not given on the command line or in a
    config file, equal to the default class's default and unlike the new class's own, is set to the new class's.
    """
    class_path = getattr(spec, "class_path", None)
    init_args = getattr(spec, "init_args", None)
    if not class_path or init_args is None or class_path == class_path_of(default_class):
        return
    try:
        chosen = import_class(class_path)
    except (ImportError, AttributeError):
        return
    old, new = _init_defaults(default_class), _init_defaults(chosen)
    for key in list(init_args.keys()):
        if key not in given and key in old and key in new and init_args[key] == old[key] and new[key] != old[key]:
            init_args[key] = new[key]


def given_keys(argv: list[str]) -> set[str]:
    """The config keys that a command line sets, on it or in its config files, without ``init_args``: data.seed."""
    keys: set[str] = set()

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(inner, prefix if name == "init_args" else f"{prefix}.{name}".lstrip("."))
        else:
            keys.add(prefix)

    for source in config_values(argv):
        try:
            text = Path(source).read_text() if Path(source).is_file() else source
        except (OSError, ValueError):  # an inline config can be longer than a file name may be
            text = source
        try:
            walk(yaml.safe_load(text), "")
        except yaml.YAMLError:
            continue
    keys |= {arg[2:].split("=", 1)[0].replace(".init_args.", ".") for arg in argv if arg.startswith("--")}
    return keys


def class_path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _init_defaults(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
