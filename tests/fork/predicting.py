"""Forks whose predict_step returns what the CSV cannot hold: several numbers per example, or nothing."""

from typing import Any

from torch import Tensor

from fork.regression import SineData, SineRegressor


class SineToPredict(SineData):
    """SineData with the validation split as its predict data."""

    def predict_dataloader(self) -> Any:
        return self.val_dataloader()


class DictPredictor(SineRegressor):
    """Predicts a dict per batch: the prediction and the input, as a fork with richer outputs might."""

    def predict_step(self, batch: list[Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"y": self(batch[0]), "x": batch[0]}


class SilentPredictor(SineRegressor):
    """A predict_step that returns nothing, as one that writes its own files would."""

    def predict_step(self, batch: list[Tensor], batch_idx: int) -> None:
        return None
