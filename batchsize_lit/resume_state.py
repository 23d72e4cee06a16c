"""What a checkpoint keeps beyond Lightning's own state so that a resumed fit continues bit-equal: the random states,
and the gradients of a stop inside an accumulation window."""

import random
import sys
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn


def rng_states() -> dict[str, Any]:
    """The global random generators' states (torch, CUDA once used, Python, NumPy), each kept in a tensor, so that a
    checkpoint holding them still loads with weights_only and pickles them as a few objects, not thousands of ints."""
    version, words, gauss = random.getstate()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": (version, torch.tensor(words), gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        name, keys, position, has_gauss, cached = sys.modules["numpy"].random.get_state()
        states["numpy"] = (name, torch.from_numpy(keys.astype("int64")), position, has_gauss, cached)
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what rng_states() recorded; CUDA states only onto as many devices as they came from."""
    torch.set_rng_state(states["torch"])
    version, words, gauss = states["python"]
    random.setstate((version, tuple(words.tolist()), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states and "numpy" in sys.modules:
        name, keys, position, has_gauss, cached = states["numpy"]
        sys.modules["numpy"].random.set_state((name, keys.numpy().astype("uint32"), position, has_gauss, cached))


def save_resume_state(checkpoint: dict[str, Any]) -> None:
    """Add the random states to a checkpoint being saved, under ``rng_states``."""
    checkpoint["rng_states"] = rng_states()


def load_resume_state(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Restore what a loaded checkpoint holds beyond Lightning's own restore: the random states for a fit, and for
    an evaluation the fit loop's progress."""
    # A DataLoader(shuffle=True) draws each epoch's order from the global generator: resumed from the end of an
    # epoch with the states of then, it shuffles as the uninterrupted run did. One process only: a checkpoint
    # holds rank 0's states.
    if "rng_states" in checkpoint and trainer.state.fn == TrainerFn.FITTING and trainer.world_size == 1:
        set_rng_states(checkpoint["rng_states"])
    if trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING) and "fit_loop" in checkpoint.get("loops", {}):
        # Evaluation logs at the step the checkpoint was saved at, beside the training curves, not at step 0.
        trainer.fit_loop.load_state_dict(checkpoint["loops"]["fit_loop"])


def save_gradients(checkpoint: dict[str, Any], module: torch.nn.Module) -> None:
    """Add the parameters' gradients to a checkpoint saved between optimizer steps (SIGTERM inside an accumulation
    window, accumulate_grad_batches above 1): Lightning keeps none, and the resumed window would start from zero."""
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
    if grads:
        checkpoint["gradients"] = grads


def load_gradients(grads: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    """Put back what save_gradients kept, at the start of training: Lightning sets every gradient to None as the fit
    starts, and again at a window's first batch, so a resume that starts a window accumulates onto nothing, as it
    should; one in the middle of a window goes on from what it had."""
    for name, p in module.named_parameters():
        if name in grads and grads[name].shape == p.shape:
            p.grad = grads[name].to(device=p.device, dtype=p.dtype)
