"""A LightningModule that trains K copies of one model at once: stacked parameters, a vmapped loss, plain SGD."""

import copy
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import SequentialSampler

from batchsize_lit.compat import indexes_tensors, sampler_order
from batchsize_lit.data import EpochShuffleSampler, InMemoryDataset, InMemoryLoader, TensorBatchSampler
from batchsize_lit.problem import has_batch_metrics
from batchsize_lit.science import _LossOf


class _Call(nn.Module):
    """Calls a method of the wrapped module as its forward, so torch.func can call any method with other
    parameters; its parameter names are _LossOf's (``module.`` and the module's own)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.module, method)(*args)


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


def member_batch_size(batch: Any) -> int:
    """Examples in each member's batch of a stacked batch: the second dimension of its first tensor."""
    while not isinstance(batch, Tensor):
        batch = next(iter(batch.values() if isinstance(batch, dict) else batch))
    return batch.shape[1]


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
        if all(_in_memory(loader) for loader in self.loaders):
            yield from self._gathered()
            return
        if all(indexes_tensors(loader) for loader in self.loaders):
            yield from self._indexed()
            return
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

    def _indexed(self) -> Iterator[Any]:
        """Plain DataLoaders over TensorDatasets: each member's epoch started as its cell's loader starts it and
        its order drawn as its sampler draws it, with its own global generator (a sampler draws from it once, as
        it starts), the K orders stacked into [K, N], and each step's batches cut as one gather, instead of K
        loaders fetching and collating every example; a list, as default_collate gives."""
        if not hasattr(self, "_tensors"):
            sets = [loader.dataset.tensors for loader in self.loaders]
            self._tensors = [torch.stack(list(parts)) for parts in zip(*sets, strict=True)]
        epochs = [
            stream.run(lambda loader=loader: _epoch_order(loader))
            for loader, stream in zip(self.loaders, self.streams, strict=True)
        ]
        orders = torch.stack([order for order, _ in epochs])
        yield from (list(_cut(self._tensors, index)) for index in orders.split(epochs[0][1], dim=1))

    def _gathered(self) -> Iterator[Any]:
        """In-memory data: each member's epoch order drawn as its sampler would, the K orders stacked into [K, N],
        and each step's batches cut as one gather, instead of K loaders and a stack."""
        if not hasattr(self, "_tensors"):  # the members' tensors, stacked once
            sets = [loader.dataset.tensors for loader in self.loaders]
            self._tensors = [torch.stack(list(parts)) for parts in zip(*sets, strict=True)]
        orders = torch.stack([_order(loader.batch_sampler) for loader in self.loaders])
        size = self.loaders[0].batch_sampler.batch_size
        yield from (_cut(self._tensors, index) for index in orders.split(size, dim=1))


def _cut(tensors: list[Tensor], index: Tensor) -> tuple[Tensor, ...]:
    """``t[k, index[k]]`` for every member k of each stacked tensor t [K, N, ...], as one index_select of the
    flattened tensor (several times faster than indexing by a [K, 1] and a [K, B] tensor)."""
    members, n = tensors[0].shape[:2]
    flat = (index + torch.arange(members).unsqueeze(1) * n).flatten()
    return tuple(t.flatten(0, 1).index_select(0, flat).view(members, index.shape[1], *t.shape[2:]) for t in tensors)


def _epoch_order(loader: Any) -> tuple[Tensor, list[int]]:
    """A plain DataLoader's epoch as its order of indices and its batches' sizes, with the global generator's draws
    of its own epoch: those of iter(loader) (its workers' base seed), then its sampler's (see
    compat.indexes_tensors and compat.sampler_order)."""
    iter(loader)
    order = sampler_order(loader.sampler)
    if order is None:
        batches = list(loader.batch_sampler)
        return torch.tensor([index for batch in batches for index in batch]), [len(batch) for batch in batches]
    size, full = loader.batch_sampler.batch_size, len(order) // loader.batch_sampler.batch_size
    sizes = [size] * full + ([len(order) - size * full] if len(order) % size and not loader.drop_last else [])
    return order[: sum(sizes)], sizes


def _in_memory(loader: Any) -> bool:
    """An InMemoryLoader cutting batches from an InMemoryDataset in this process, by a TensorBatchSampler."""
    sampler = getattr(loader, "batch_sampler", None)
    return (
        isinstance(loader, InMemoryLoader)
        and loader.num_workers == 0
        and isinstance(loader.dataset, InMemoryDataset)
        and isinstance(sampler, TensorBatchSampler)
        and not sampler.drop_last
        and isinstance(sampler.sampler, EpochShuffleSampler | SequentialSampler)
    )


def _order(batch_sampler: TensorBatchSampler) -> Tensor:
    """The epoch's order of a TensorBatchSampler, as its own __iter__ draws it."""
    sampler = batch_sampler.sampler
    return sampler.permutation() if isinstance(sampler, EpochShuffleSampler) else torch.arange(len(sampler))


class StackedModel:
    """K copies of one model as stacked parameters and buffers; the loss and its gradient computed for all at once."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.params, self.buffers = stack_module_state([_LossOf(model) for model in models])
        self.params = {name: p.detach() for name, p in self.params.items()}
        self.base = copy.deepcopy(_LossOf(models[0])).to("meta")  # only its structure is used
        self._caller = _Call(self.base.module)
        self.models = models
        # functional_call's search for tied weights, and an empty buffer dict, cost a tenth of a millisecond each
        # per call, several times a step: skipped where the model ties none and has no buffers.
        names = [name for name, _ in self.base.named_parameters(remove_duplicate=False)]
        self._tied = len(names) != len(self.params)
        self._named: dict[int, tuple[nn.Module, list[tuple[str, nn.Parameter]]]] = {}
        self._state_keys: list[str] | None = None  # the models' state_dict keys, where all are stacked

    def _loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Any) -> Tensor:
        state = (params, buffers) if buffers else params
        return functional_call(self.base, state, (batch,), tie_weights=self._tied)

    def loss_and_grad(self, batch: Any, ks: list[int] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The losses of members ks (all K by default) and their gradients, each member on its own slice of the
        batch, in the order of ks. The members share no parameter, so the gradient of the summed losses holds each
        member's own gradient (one backward pass, cheaper than vmap over grad for small models)."""
        params, buffers = self._subset(ks)
        if ks is not None:  # the stopped members' slices are left out: their steps would be thrown away
            index = torch.tensor(ks)
            batch = apply_to_collection(batch, Tensor, lambda t: t[index])
        params = {name: p.detach().requires_grad_() for name, p in params.items()}
        losses = vmap(self._loss)(params, buffers, batch)
        grads = torch.autograd.grad(losses.sum(), list(params.values()), allow_unused=True)
        # A parameter the loss never uses gets no gradient, and SGD leaves it as it is: so does a zero one.
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)]
        return losses.detach(), dict(zip(params, grads, strict=True))

    def loss(self, batch: Any, shared: bool = False, ks: list[int] | None = None) -> Tensor:
        """The losses of members ks (all K by default) on one batch given to every member (shared) or on a
        stacked batch of theirs."""
        params, buffers = self._subset(ks)
        return vmap(self._loss, in_dims=(0, 0, None if shared else 0))(params, buffers, batch)

    def _subset(self, ks: list[int] | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The parameters and buffers of members ks (copies), or all of them (the stacked tensors themselves)."""
        if ks is None:
            return self.params, self.buffers
        index = torch.tensor(ks)
        return {n: p[index] for n, p in self.params.items()}, {n: b[index] for n, b in self.buffers.items()}

    def metrics(self, ks: list[int], batch: Any, stage: str) -> dict[str, Tensor]:
        """Members ks' metrics of their own batches (stacked in the order of ks), without gradients: the model's
        ``batch_metrics(batch, stage)`` where it has one, else its loss under the name ``loss``."""
        method, args = ("batch_metrics", (stage,)) if has_batch_metrics(self.base.module) else ("loss", ())
        caller = self._caller

        def call(params: dict[str, Tensor], buffers: dict[str, Tensor], one: Any) -> Any:
            state = (params, buffers) if buffers else params
            return functional_call(caller, state, (method, one, *args), tie_weights=self._tied)

        params, buffers = self._subset(ks)
        with torch.no_grad():
            found = vmap(call)(params, buffers, batch)
        return found if isinstance(found, dict) else {"loss": found}

    def sgd_step(self, grads: dict[str, Tensor], lrs: Tensor, active: list[int]) -> None:
        """p ← p − lr·g for each active member, given the gradients of all members or of the active ones (in
        their order): addcmul with −lr rounds as torch.optim.SGD's add(g, alpha=−lr)."""
        rate = -lrs
        for name, param in self.params.items():
            shape = (-1,) + (1,) * (param.dim() - 1)
            if len(active) == len(rate):
                param.addcmul_(grads[name], rate.view(shape))
            else:  # a stopped member stays as it is, even where its gradient is not finite
                index = torch.tensor(active)
                grad = grads[name] if len(grads[name]) == len(active) else grads[name][index]
                param[index] = torch.addcmul(param[index], grad, rate[index].view(shape))

    def load_into(self, k: int, model: nn.Module | None = None) -> nn.Module:
        """Member k's parameters copied into its own model (or the one given), which is returned."""
        model = model if model is not None else self.models[k]
        if id(model) not in self._named:  # the wrapper's names are the stacked ones; built once per model
            self._named[id(model)] = (model, list(_LossOf(model).named_parameters()))
        with torch.no_grad():
            for name, param in self._named[id(model)][1]:
                param.copy_(self.params[name][k])
        return model

    def state_dict(self, k: int) -> dict[str, Tensor]:
        """A copy of member k's state_dict, taken from the stacked tensors where they hold every key of it (no
        tied weights, no extra state): a tenth of the cost of loading the model and asking its state_dict."""
        stacked = {**self.params, **self.buffers}
        if self._state_keys is None:
            keys = list(self.models[0].state_dict())
            self._state_keys = keys if all(f"module.{key}" in stacked for key in keys) else []
        if not self._state_keys:
            return {name: t.detach().clone() for name, t in self.load_into(k).state_dict().items()}
        return {key: stacked[f"module.{key}"][k].clone() for key in self._state_keys}

    def buffers_of(self, k: int) -> dict[str, Tensor]:
        """Member k's buffers, under its model's names."""
        return {name.removeprefix("module."): buffer[k] for name, buffer in self.buffers.items()}

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
        self.stacked, self.members, self.loader = stacked, members, loader
        self.lrs = torch.tensor(lrs, dtype=next(iter(stacked.params.values())).dtype)  # as SGD casts its lr

    def train_dataloader(self) -> CohortLoader:
        return self.loader

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        active = self.members.active()
        ks = None if len(active) == len(self.lrs) else active  # once some have stopped, the others alone
        with torch.enable_grad():
            losses, grads = self.stacked.loss_and_grad(batch, ks)
        with torch.no_grad():
            self.stacked.sgd_step(grads, self.lrs, active)
            if ks is not None:  # the K losses, a stopped member's 0 (after_step reads the active members' only)
                losses = torch.zeros_like(self.lrs, dtype=losses.dtype).index_copy_(0, torch.tensor(ks), losses)
        last = batch_idx == len(self.loader) - 1
        if self.members.after_step(losses.detach(), batch, active, self.trainer.current_epoch, last):
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        """The stopped members' train and fit ends, within the fit: a SIGTERM meanwhile stops the study after them."""
        self.members.finish_stopped()
