"""The template's callbacks under the import path that configs, checkpoints and forks name; each lives in its module."""

from batchsize_lit.checkpoint_io import AtomicCheckpointIO
from batchsize_lit.checkpoint_io import _remove as _remove
from batchsize_lit.checkpoint_io import _replace as _replace
from batchsize_lit.divergence import DivergenceCheck
from batchsize_lit.early_stopping import EarlyStopping, never_logged
from batchsize_lit.hook_overhead import PER_BATCH_HOOKS, skip_idle_hooks
from batchsize_lit.hook_overhead import FixedStateKey as _FixedStateKey  # noqa: F401
from batchsize_lit.model_checkpoint import ModelCheckpoint
from batchsize_lit.model_summary import BriefModelSummary
from batchsize_lit.resume_state import rng_states, set_rng_states
from batchsize_lit.run_history import RunHistory

__all__ = [
    "PER_BATCH_HOOKS",
    "AtomicCheckpointIO",
    "BriefModelSummary",
    "DivergenceCheck",
    "EarlyStopping",
    "ModelCheckpoint",
    "RunHistory",
    "never_logged",
    "rng_states",
    "set_rng_states",
    "skip_idle_hooks",
]

# Each class keeps the path that config files, pickles and the CLI's help have always named.
for _cls in (EarlyStopping, ModelCheckpoint, RunHistory, DivergenceCheck, AtomicCheckpointIO, BriefModelSummary):
    _cls.__module__ = __name__
del _cls
