"""Less of Lightning's cost per callback call: per-batch hooks that do nothing skipped, state keys formatted once."""

import lightning.pytorch as pl

from batchsize_lit import compat

# The hooks Lightning calls on every callback at every training step or evaluation batch.
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def skip_idle_hooks(callbacks: list[pl.Callback]) -> None:
    """Lightning calls each per-batch hook of every callback, a no-op or not, inside a profiler context: a few µs a
    call, six hooks a step. A hook that a callback's class does not override is skipped (compat.skip_hook); a step
    then costs only the hooks that do something. One the callback sets on itself, as an instance attribute, is its
    own and is called."""
    for callback in callbacks:
        try:
            own = vars(callback)  # its instance attributes
        except TypeError:  # a class with __slots__ only
            own = {}
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook, None) is getattr(pl.Callback, hook) and hook not in own:
                compat.skip_hook(callback, hook)


class FixedStateKey:
    """Lightning formats a callback's state_key for every hook call, several times a step; for these callbacks it
    depends only on arguments that never change after __init__, so it is formatted once."""

    _state_key: str | None = None

    @property
    def state_key(self) -> str:
        if self._state_key is None:
            self._state_key = super().state_key
        return self._state_key
