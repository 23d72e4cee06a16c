"""A LightningModule that trains K copies of one model at once: stacked parameters, a vmapped loss, plain SGD."""

import copy
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from batchsize_lit.data import InMemoryLoader
from batchsize_lit.science import _LossOf


def stack_batches(batches: list[Any]) -> Any:
    """The members' batches as one batch with a leading member dimension, in tuples, lists and dicts."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(batches)
    if isinstance(first, dict):
        return {key: stack_batches([b[key] for b in batches]) for key in first}
    if isinstance(first, list | tuple):
        return type(first)(stack_batches(list(parts)) for parts in zip(*batches, strict=True))
    raise TypeError(f"a batch of {type(first).__name__} cannot be stacked")


class MemberStream:
    """One member's own global torch generator: a plain DataLoader draws its shuffle seed (and base seed) from the
    global generator, so each member's loader runs with the state its own cell's fit would have had."""

    def __init__(self) -> None:
        self.state = torch.get_rng_state()

    def run(self, function: Callable[[], Any]) -> Any:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            return function()
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(outer)


class CohortLoader:
    """Zips the members' own loaders, each iterated as its cell's would be, into batches of shape [K, B, ...].

    Lightning sets the epoch through ``sampler.set_epoch`` on whatever loader it is given: this object is its own
    sampler and passes the epoch on to each member's sampler (EpochShuffleSampler hashes seed and epoch).
    """

    def __init__(self, loaders: list[Any], streams: list[MemberStream]) -> None:
        self.loaders, self.streams = loaders, streams
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            for sampler in (getattr(loader, "sampler", None), getattr(loader.batch_sampler, "sampler", None)):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[Any]:
        # An InMemoryLoader draws nothing from the global generator; a plain DataLoader draws at iter and next.
        plain = [not isinstance(loader, InMemoryLoader) for loader in self.loaders]
        iterators = [
            stream.run(lambda loader=loader: iter(loader)) if own else iter(loader)
            for loader, stream, own in zip(self.loaders, self.streams, plain, strict=True)
        ]
        while True:
            try:
                batches = [
                    stream.run(lambda it=it: next(it)) if own else next(it)
                    for it, stream, own in zip(iterators, self.streams, plain, strict=True)
                ]
            except StopIteration:
                return
            yield stack_batches(batches)


class StackedModel:
    """K copies of one model as stacked parameters and buffers; the loss and its gradient computed for all at once."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.params, self.buffers = stack_module_state([_LossOf(model) for model in models])
        self.params = {name: p.detach() for name, p in self.params.items()}
        self.base = copy.deepcopy(_LossOf(models[0])).to("meta")  # only its structure is used
        self.models = models

    def _loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Any) -> Tensor:
        return functional_call(self.base, (params, buffers), (batch,))

    def loss_and_grad(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The K losses and their gradients, each member on its own slice of the batch."""
        grads, losses = vmap(grad_and_value(self._loss))(self.params, self.buffers, batch)
        return losses, grads

    def loss(self, batch: Any, shared: bool = False) -> Tensor:
        """The K losses on one batch given to every member (shared) or on a stacked batch."""
        return vmap(self._loss, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, batch)

    def sgd_step(self, grads: dict[str, Tensor], lrs: list[float], active: list[int]) -> None:
        """p ← p − lr·g for each active member, slice by slice, as torch.optim.SGD updates one model (the same
        kernel on the same shapes, so the same rounding)."""
        for name, param in self.params.items():
            for k in active:
                param[k].add_(grads[name][k], alpha=-lrs[k])

    def load_into(self, k: int, model: nn.Module | None = None) -> nn.Module:
        """Member k's parameters copied into its own model (or the one given), which is returned."""
        model = model if model is not None else self.models[k]
        wrapper = _LossOf(model)
        with torch.no_grad():
            for name, param in wrapper.named_parameters():
                param.copy_(self.params[name][k])
        return model

    def snapshot(self, k: int) -> dict[str, Tensor]:
        return {name: param[k].clone() for name, param in self.params.items()}

    def restore(self, k: int, weights: dict[str, Tensor]) -> None:
        for name, param in self.params.items():
            param[k].copy_(weights[name])


class CohortModule(pl.LightningModule):
    """Trains the members of a cohort in one Lightning fit: each step computes every member's loss and gradient
    with vmap and updates each active member with its own learning rate; ``members`` does the per-member
    bookkeeping after each step (targets, validation, early stopping, divergence, logging) and says when all
    have stopped."""

    def __init__(self, stacked: StackedModel, lrs: list[float], members: Any, loader: CohortLoader) -> None:
        super().__init__()
        self.automatic_optimization = False  # the update is the members' own SGD steps, below
        self.stacked, self.lrs, self.members, self.loader = stacked, lrs, members, loader

    def train_dataloader(self) -> CohortLoader:
        return self.loader

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        active = self.members.active()
        with torch.enable_grad():
            losses, grads = self.stacked.loss_and_grad(batch)
        with torch.no_grad():
            self.stacked.sgd_step(grads, self.lrs, active)
        last = batch_idx == len(self.loader) - 1
        if self.members.after_step(losses.detach(), batch, active, self.trainer.current_epoch, last):
            self.trainer.should_stop = True
