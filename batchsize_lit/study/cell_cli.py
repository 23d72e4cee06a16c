"""The LightningCLI of a study's cells: one parser per process, and a cell's config derived from its sibling's."""

import copy
import warnings
from pathlib import Path
from typing import Any, ClassVar

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser

from batchsize_lit.callbacks import ModelCheckpoint
from batchsize_lit.cli import BatchSizeCLI
from batchsize_lit.compat import skip_absent_callback_factories
from batchsize_lit.disk import whole_file

Defaults = tuple[type[LightningModule] | None, type[LightningDataModule] | None]

# The flags in which the cells of a cohort differ. A cell whose arguments differ from an already parsed cell's in
# these alone takes that cell's config with these values set, instead of a parse of its own: parsing and checking
# a whole config costs about 50 ms, and a cohort study has hundreds of cells.
FOLDER_FLAG = "trainer.logger.init_args.name"  # each cell's own, set by the study
DERIVED = ("seed_everything", "model.lr", FOLDER_FLAG)


def _split(args: list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The arguments apart from the derived flags, and the derived flags' values as given."""
    fixed, derived = [], {}
    for arg in args:
        flag, _, value = arg.partition("=")
        if arg.startswith("--") and flag[2:] in DERIVED and _:
            derived[flag[2:]] = value
        else:
            fixed.append(arg)
    return tuple(fixed), derived


def config_key(config: Namespace, flag: str) -> str:
    """The key of a flag in a parsed config: model.lr is model.init_args.lr where the model is given by class_path."""
    parts, path, node = flag.split("."), [], config
    for part in parts:
        if isinstance(node, Namespace) and part not in node and "init_args" in node:
            path.append("init_args")
            node = node["init_args"]
        path.append(part)
        node = node.get(part) if isinstance(node, Namespace) else None
    return ".".join(path)


class CellCLI(BatchSizeCLI):
    """BatchSizeCLI for study cells: every cell of a process is parsed by one parser, built once, and each cell's
    arguments are parsed once, when they are checked; the run instantiates a copy of that config.

    Building a parser creates new classes inside jsonargparse that are never freed, so a parser per cell would
    grow the process by every cell. Without load_from_checkpoint_support no per-CLI hook is registered on the
    shared parser; the cells' checkpoints hold their hyperparameters as save_hyperparameters() recorded them.

    A cell that differs from a parsed one only in its seed, learning rate and folder name (the cells of a cohort)
    is not parsed again: it takes that cell's config, and its config.yaml is that cell's with the three values
    set, where each value is one a parse of another cell gave for the same text.
    """

    shared: ClassVar[dict[Defaults, tuple[LightningArgumentParser, list[LightningArgumentParser]]]] = {}
    parsed: ClassVar[dict[tuple, tuple[Namespace, set[str]]]] = {}
    siblings: ClassVar[dict[tuple, dict[str, Any]]] = {}  # by the arguments apart from DERIVED: a parsed cell
    values: ClassVar[dict[tuple[str, str], Any]] = {}  # (flag, text) -> the value a parse gave

    def __init__(self, args: list[str], defaults: Defaults) -> None:
        self._sibling: dict[str, Any] | None = None
        self._derived: dict[str, str] = {}
        self._key: tuple = ()
        skip_absent_callback_factories()  # a trainer per cell: 10 ms each to find no callback factory
        with warnings.catch_warnings():
            # LightningCLI warns when args are given while sys.argv holds others: here those are the study's own.
            warnings.filterwarnings("ignore", "LightningCLI's args parameter", UserWarning)
            super().__init__(*defaults, args=args, run=False, load_from_checkpoint_support=False)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        key = tuple(self.default_classes.values())
        if key not in CellCLI.shared:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            CellCLI.shared[key] = (self.parser, self.parsers)
        self.parser, self.parsers = CellCLI.shared[key]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):  # the study says how to go on after Ctrl-C
            trainer.checkpoint_callback.report_interrupt = False
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        key = (*self.default_classes.values(), *args)
        fixed, derived = _split(args)
        sibling_key = (*self.default_classes.values(), *fixed)
        self._sibling, self._derived, self._key = CellCLI.siblings.get(sibling_key), derived, key
        if key not in CellCLI.parsed and self._derive(derived):
            return
        if key not in CellCLI.parsed:
            super().parse_arguments(parser, args)
            CellCLI.parsed[key] = (copy.deepcopy(self.config), self._given)
            for flag, text in derived.items():
                CellCLI.values[(flag, text)] = self.config[config_key(self.config, flag)]
            self._sibling = CellCLI.siblings.setdefault(sibling_key, {"key": key, "derived": derived})
        config, self._given = CellCLI.parsed[key]
        self.config = copy.deepcopy(config)  # instantiating a cell changes its config (the logger's version)

    def _derive(self, derived: dict[str, str]) -> bool:
        """This cell's config as its sibling's with the derived values set, where every value is known."""
        sibling = self._sibling
        if sibling is None or set(derived) != set(sibling["derived"]):
            return False
        values = {flag: self._known(flag, text, sibling["derived"][flag]) for flag, text in derived.items()}
        if any(value is _UNKNOWN for value in values.values()):
            return False
        config, self._given = CellCLI.parsed[sibling["key"]]
        self.config = copy.deepcopy(config)
        for flag, value in values.items():
            self.config[config_key(self.config, flag)] = value
        return True

    @staticmethod
    def _known(flag: str, text: str, sibling_text: str) -> Any:
        """The value a parse gives for this text: seen before, or a plain name where the sibling's parsed as one."""
        if (flag, text) in CellCLI.values:
            return CellCLI.values[(flag, text)]
        if CellCLI.values.get((flag, sibling_text)) == sibling_text and isinstance(yaml.safe_load(text), str):
            return text  # a str setting (the folder name): the text is the value
        return _UNKNOWN

    def write_config(self, config: Namespace, path: Path) -> None:
        """A derived cell's config.yaml is its sibling's with the derived values set (a YAML round trip with
        jsonargparse's own dump settings); the sibling's own is written by the parser, as a fit's is."""
        sibling = self._sibling
        if sibling is None or sibling["key"] == self._key or "text" not in sibling:
            super().write_config(config, path)
            if sibling is not None and sibling["key"] == self._key:
                sibling["text"] = path.read_text()
            return
        if "data" not in sibling:
            sibling["data"] = yaml.load(sibling["text"], Loader=_Loader)
        data = copy.deepcopy(sibling["data"])
        for flag in self._derived:
            *parents, last = config_key(config, flag).split(".")
            node = data
            for part in parents:
                node = node[part]
            node[last] = config[config_key(config, flag)]
        header = "".join(line for line in sibling["text"].splitlines(keepends=True) if line.startswith("#"))
        with whole_file(path) as file:  # jsonargparse's YAML settings; libyaml's emitter where PyYAML has it
            file.write(header)  # the parser's dump header (the Lightning version), which a YAML load drops
            file.write(yaml.dump(data, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, sort_keys=False))


_UNKNOWN = object()
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
