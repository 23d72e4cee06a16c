"""Two validation loaders of nested batches {"inputs": (x,), "target": y}: Lightning logs val_loss/dataloader_idx_N."""

from torch.utils.data import DataLoader

from fork.sequences import SequenceData, _Items, make_sequences


class TwoValData(SequenceData):
    """SequenceData of nested batches, validated on its own val split and on sequences drawn with another seed."""

    def __init__(self, batch_size: int = 16, n_samples: int = 128, length: int = 12, kind: str = "nested") -> None:
        """
        Args:
            batch_size: Samples per step.
            n_samples: Number of sequences.
            length: Values per sequence.
            kind: dict, namedtuple or nested.
        """
        super().__init__(batch_size, n_samples, length, kind)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.other_set = _Items(*make_sequences(32, self.hparams.length, seed=7), self.hparams.kind)

    def val_dataloader(self) -> list[DataLoader]:
        return [super().val_dataloader(), DataLoader(self.other_set, batch_size=self.hparams.batch_size)]
