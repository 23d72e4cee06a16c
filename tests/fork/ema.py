"""A weight-averaging callback of a user's own: an exponential moving average of the weights, validated with."""

import lightning.pytorch as pl
import torch


class EMA(pl.Callback):
    """Keeps an exponential moving average of the floating-point weights, updated after every batch; validation
    runs on the average, training on the raw weights, and the average is left in the model when training ends."""

    def __init__(self, decay: float = 0.9) -> None:
        """
        Args:
            decay: Weight of the old average at each update.
        """
        self.decay = decay
        self.average: dict[str, torch.Tensor] = {}
        self._raw: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer, pl_module):
        self.average = {k: v.detach().clone() for k, v in pl_module.state_dict().items() if v.is_floating_point()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            for name, value in pl_module.state_dict().items():
                if name in self.average:
                    self.average[name].lerp_(value, 1 - self.decay)

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._raw = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            pl_module.load_state_dict(self.average, strict=False)

    def on_validation_end(self, trainer, pl_module):
        if self._raw is not None:
            pl_module.load_state_dict(self._raw)
            self._raw = None

    def on_train_end(self, trainer, pl_module):
        pl_module.load_state_dict(self.average, strict=False)
