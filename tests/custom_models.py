"""A user's own LightningModule, given to the CLI by class_path."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class TinyMLP(pl.LightningModule):
    """A one-hidden-layer network in place of nn.Linear."""

    def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: SGD learning rate.
        """
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class ShardRecorder(pl.Callback):
    """Saves, per rank, the training inputs it saw in the first epoch and its final weights."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.seen.append(batch[0].detach().cpu().flatten())

    def on_fit_end(self, trainer, pl_module):
        state = {k: v.cpu() for k, v in pl_module.state_dict().items()}
        torch.save({"seen": torch.cat(self.seen), "state": state}, f"{self.out}/rank{trainer.global_rank}.pt")
