"""A data module whose setup takes a while and says when it starts: a signal sent then lands before training."""

import time
from pathlib import Path

from batchsize_lit import RegressionDataModule


class SlowSetupData(RegressionDataModule):
    """The bundled regression, with a setup that touches ``setup_started`` in the working folder and then waits."""

    def setup(self, stage: str | None = None) -> None:
        Path("setup_started").touch()
        time.sleep(30)
        super().setup(stage)
