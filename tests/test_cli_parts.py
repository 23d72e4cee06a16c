"""The modules BatchSizeCLI's hooks call, each on its own: run placement, checks, parse errors, held notices."""

import logging
import sys

import pytest
import torch
from jsonargparse import Namespace

from batchsize_lit import checks, config_args
from batchsize_lit.errors import BadInput
from batchsize_lit.notices import HeldBack
from batchsize_lit.parse_errors import unknown_key_hint
from batchsize_lit.placement import Placement


def test_removing_a_claimed_run_removes_the_folders_it_alone_filled(tmp_path):
    claimed = tmp_path / "lightning_logs/b16/version_0"
    (claimed / "checkpoints").mkdir(parents=True)
    Placement(claimed=claimed).remove_claimed()
    assert list(tmp_path.iterdir()) == []

    kept = tmp_path / "lightning_logs/b16/version_0"
    kept.mkdir(parents=True)
    placement = Placement(claimed=tmp_path / "lightning_logs/b16/version_1")
    placement.claimed.mkdir()
    placement.remove_claimed()
    assert [p.name for p in (tmp_path / "lightning_logs/b16").iterdir()] == ["version_0"]
    assert placement.claimed is None


def test_the_config_written_has_the_run_folder_keys_as_given():
    placement = Placement(as_given={"ckpt_path": None, "logger": "as given", "default_root_dir": None})
    config = Namespace(ckpt_path="runs/version_3/checkpoints/last.ckpt", trainer=Namespace(logger="placed"))
    config.trainer.default_root_dir = "runs/version_3"
    placement.restore_given(config)
    assert config == Namespace(ckpt_path=None, trainer=Namespace(logger="as given", default_root_dir=None))


@pytest.mark.parametrize(
    ("a", "b", "differ"),
    [(3, 3, False), (3, 3.0, True), ("x", "y", True), ([1], [1], False)],
)
def test_hyperparameters_differ_as_lightning_counts_them(a, b, differ):
    assert checks.differ(a, b) is differ


def test_two_equal_tensors_differ_unless_they_are_one_object():
    tensor = torch.ones(2)
    assert checks.differ(tensor, tensor) is False
    assert checks.differ(tensor, torch.ones(2)) is True


def test_the_checkpoint_follows_early_stopping_unless_its_monitor_is_given():
    def config() -> Namespace:
        return Namespace(
            early_stopping=Namespace(monitor="val/acc", mode="max"),
            checkpoint=Namespace(monitor="val_loss", mode="min"),
        )

    followed, given = config(), config()
    checks.checkpoint_follows_early_stopping(followed, set())
    checks.checkpoint_follows_early_stopping(given, {"checkpoint.monitor"})
    assert followed.checkpoint == Namespace(monitor="val/acc", mode="max")
    assert given.checkpoint == Namespace(monitor="val_loss", mode="min")


def test_disabled_checkpointing_is_rejected_in_one_line():
    checks.require_checkpointing(Namespace(enable_checkpointing=None))
    with pytest.raises(BadInput, match=r"--checkpoint\.save_top_k 0 --checkpoint\.save_last false"):
        checks.require_checkpointing(Namespace(enable_checkpointing=False))


class _Keys:
    def __init__(self, *keys: str) -> None:
        self.keys = dict.fromkeys(keys)

    def get_defaults(self) -> dict:
        return self.keys


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("unrecognized arguments: --trainer.max_epoch=1", "; did you mean --trainer.max_epochs?"),
        ("Subcommand 'fit' does not accept option 'trainr.max_epochs'", "; did you mean trainer.max_epochs?"),
        ("unrecognized arguments: --nothing.like.it=1", ""),
        ('Parser key "data.batch_size": Expected an int', ""),
    ],
)
def test_an_unknown_key_gets_the_nearest_known_one(message, hint):
    assert unknown_key_hint(message, [_Keys("trainer.max_epochs"), _Keys("data.batch_size")]) == hint


def test_print_config_is_taken_out_of_the_command_line(monkeypatch):
    argv, printing, args = config_args.without_print_config(["fit", "--print_config=skip_null", "--model.lr=1"])
    assert (argv, printing, args) == (["fit", "--print_config=skip_null", "--model.lr=1"], ["--print_config=skip_null"],
                                      ["fit", "--model.lr=1"])  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["batchsize-lit", "fit", "--print_config"])
    assert config_args.without_print_config(None) == (["fit", "--print_config"], ["--print_config"], None)
    assert sys.argv == ["batchsize-lit", "fit"]


def test_held_notices_come_out_in_order_once_released_or_not_at_all(caplog):
    caplog.set_level(logging.INFO)
    held = HeldBack("test.seed")
    held.hold("test.device")
    logging.getLogger("test.seed").info("Seed set to 0")
    logging.getLogger("test.device").info("GPU available: False")
    assert caplog.messages == []
    held.release()
    assert caplog.messages == ["Seed set to 0", "GPU available: False"]

    dropped = HeldBack("test.seed")
    logging.getLogger("test.seed").info("Seed set to 1")
    dropped.release(emit=False)
    logging.getLogger("test.seed").info("Seed set to 2")
    assert caplog.messages[2:] == ["Seed set to 2"]
