"""The private names of Lightning and jsonargparse that batchsize_lit.compat relies on still do what it needs."""

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from batchsize_lit import compat


def _connected(callback: ModelCheckpoint) -> Trainer:
    trainer = Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(BoringModel())
    return trainer


def test_checkpoint_skips_saving_outside_a_fit(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path)
    assert compat.checkpoint_skips_saving(callback, _connected(callback)) is True  # not fitting: nothing is saved


def test_save_last_checkpoint_formats_versions_and_records_the_path(tmp_path):
    """Lightning's own last save: CHECKPOINT_NAME_LAST's template is formatted, an existing file of another run gets
    a version suffix, and last_model_path (part of the callback's state) names what was written."""
    for expected in ("epoch=0-last.ckpt", "epoch=0-last-v1.ckpt"):
        callback = ModelCheckpoint(dirpath=tmp_path, save_last=True)
        callback.CHECKPOINT_NAME_LAST = "{epoch}-last"
        callback._last_global_step_saved = -1  # what Lightning would decide by stays as it was
        compat.save_last_checkpoint(callback, _connected(callback))
        assert callback._last_global_step_saved == -1
        assert callback.last_model_path == str(tmp_path / expected)
        assert (tmp_path / expected).is_file()
