"""A callback of a fork's own: it records, per rank, the training inputs of the first epoch and the final weights."""

import lightning.pytorch as pl
import torch


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
