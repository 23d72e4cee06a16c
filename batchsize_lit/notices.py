"""Lightning's console lines: those no user of this template can act on dropped, the rest held until a run is built."""

import logging
import warnings

# Lightning's own batch flattening builds a torch LeafSpec, which torch>=2.10 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, "lightning")
# Lightning advertises a cloud logger on every run; a line no user of this template can act on.
# Its "`Trainer.fit` stopped: `max_epochs=N` reached." (or max_steps) repeats the summary's line on how it ended.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: (
        not str(record.msg).startswith(("💡 Tip: For seamless cloud logging", "`Trainer.fit` stopped: `max_"))
    )
)


class HeldBack(logging.Filter):
    """Holds loggers' records back until released, or drops them: Lightning's "Seed set to N" and its device lines
    wait until the run is built, so that bad input found while building it prints its one line alone.

    Args:
        *names: The loggers held back from the start.
    """

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.loggers: list[logging.Logger] = []
        self.records: list[logging.LogRecord] = []
        self.hold(*names)

    def hold(self, *names: str) -> None:
        """Hold back these loggers' records too.

        Args:
            *names: Logger names.
        """
        for name in names:
            self.loggers.append(logging.getLogger(name))
            self.loggers[-1].addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def release(self, emit: bool = True) -> None:
        """Stop holding; emit what was held, in the order it came, or drop it.

        Args:
            emit: Whether the held records are emitted.
        """
        for logger in self.loggers:
            logger.removeFilter(self)
        for record in self.records if emit else []:
            logging.getLogger(record.name).handle(record)
        self.loggers, self.records = [], []
