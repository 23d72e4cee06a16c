"""Batch-size science: gradient noise scale, steps to a validation target, and the critical batch size."""

import math
import random
import statistics
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from lightning_utilities.core.apply_func import apply_to_collection, is_dataclass_instance
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.utils.data import DataLoader, Subset

from batchsize_lit.early_stopping import EarlyStopping, copy_weights, never_logged
from batchsize_lit.errors import BadInput, one_line
from batchsize_lit.outputs import accumulation_scale, batch_samples
from batchsize_lit.problem import has_loss, reference_facts
from batchsize_lit.run_history import RunHistory
from batchsize_lit.trainer_info import batch_size, find_callback

# Per-example gradient elements held at once, 1M doubles (8 MiB): small enough to stay in a server CPU's cache
# between the gradients' computation and their moments (the digits MLP's 1257 examples measure 3× faster in chunks of
# 218 than in one); a model of 1M parameters takes one example a chunk, the bundled regression its whole split.
CHUNK_ELEMENTS = 2**20


def exact_noise_scale(x: Tensor, y: Tensor, weight: float, bias: float) -> dict[str, float]:
    """B_simple and B_noise of y ≈ w·x + b under the mean squared error, in closed form.

    For example i, r_i = w·x_i + b − y_i and g_i = 2·r_i·(x_i, 1); H = 2·[[E x², E x], [E x, 1]]. It is the
    reference that the general per-example path (``per_example_noise_scale``) is checked against.
    """
    x, y = x.double().flatten(), y.double().flatten()
    features = torch.stack([x, torch.ones_like(x)], dim=1)
    moments = GradientMoments(scatter=True)
    moments.add(2 * (weight * x + bias - y).unsqueeze(1) * features)
    return _noise_scale(moments, 2 * features.T @ features / len(x), len(x))


class GradientMoments:
    """The mean of gradient rows, their summed squared deviation from it and, if asked, their scatter matrix,
    merged chunk by chunk (Chan, Golub and LeVeque), so that per-example gradients are never all held at once."""

    def __init__(self, scatter: bool = False) -> None:
        self.count, self.mean, self.squared_deviation = 0, torch.zeros(0), 0.0
        self.scatter: Tensor | None = None if not scatter else torch.zeros(0)

    def add(self, rows: Tensor | list[Tensor]) -> None:
        """Merge in a chunk of gradient rows [n, d], or its column blocks (one per parameter, each [n, d_i]): the
        blocks are centered in place, and never concatenated unless the scatter matrix is kept (small models)."""
        blocks = [rows] if isinstance(rows, Tensor) else rows
        if self.scatter is not None and len(blocks) > 1:
            blocks = [torch.cat(blocks, dim=1)]
        n, means, squared = len(blocks[0]), [], 0.0
        # In place and one dot product a block: no 8 MiB temporaries, and 5× faster than pow(2).sum() on doubles. A
        # gradient that no example changes comes from vmap as one expanded row: made whole first.
        blocks = [block.contiguous() for block in blocks]
        for block in blocks:
            means.append(block.mean(0))
            centered = block.sub_(means[-1]).reshape(-1)
            squared += float(centered @ centered)
        mean = torch.cat(means)
        scatter = blocks[0].T @ blocks[0] if self.scatter is not None else None
        if self.count:
            delta, weight = mean - self.mean, self.count * n / (self.count + n)
            mean = self.mean + delta * n / (self.count + n)
            squared += self.squared_deviation + float(delta.dot(delta)) * weight
            if scatter is not None:
                scatter += self.scatter + torch.outer(delta, delta) * weight
        self.count, self.mean, self.squared_deviation, self.scatter = self.count + n, mean, squared, scatter


def _noise_scale(moments: GradientMoments, hessian_matrix: Tensor | None, population: int) -> dict[str, float]:
    """B_simple = tr Σ / |G|² and, given H, B_noise = tr(HΣ) / (GᵀHG), from per-example gradients.

    Both assume batches drawn with replacement. Shuffled epochs draw without replacement from N examples, which
    scales the batch-gradient covariance by (N − B)/(N − 1); the batch size at which its noise equals |G|² is then
    N·B_simple / (B_simple + N − 1), reported as b_simple_finite.
    """
    mean = moments.mean
    trace_sigma = moments.squared_deviation / moments.count
    grad_norm_sq = float(mean.dot(mean))
    b_simple = trace_sigma / grad_norm_sq if grad_norm_sq > 0 else math.inf  # at an exact optimum, all noise
    result = {
        "b_simple": b_simple,
        "b_simple_finite": population * b_simple / (b_simple + population - 1)
        if math.isfinite(b_simple)
        else population,
        "grad_norm_sq": grad_norm_sq,
        "trace_sigma": trace_sigma,
    }
    if hessian_matrix is not None and moments.scatter is not None:
        sigma = moments.scatter / moments.count
        result["b_noise"] = float(torch.trace(hessian_matrix @ sigma) / (mean @ hessian_matrix @ mean))
    return result


class _LossOf(nn.Module):
    """Makes a module's ``loss(batch)`` the forward of a module, so torch.func can call it with other parameters."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: Any) -> Tensor:
        return self.module.loss(batch)


class _Leaf:
    """Where the tensor of index ``index`` sat in a batch (see _leaves)."""

    def __init__(self, index: int) -> None:
        self.index = index


def _leaves(batch: Any) -> tuple[list[Tensor], Any]:
    """The tensors of a batch of any type Lightning moves to the device (namedtuples, dataclasses, dicts, nested),
    and a function that builds the same batch around other tensors: ``vmap`` maps over pytrees, which leave
    dataclasses out, so it is given the bare tensors."""
    tensors: list[Tensor] = []

    def take(tensor: Tensor) -> _Leaf:
        tensors.append(tensor)
        return _Leaf(len(tensors) - 1)

    skeleton = apply_to_collection(batch, Tensor, take)
    return tensors, lambda values: apply_to_collection(skeleton, _Leaf, lambda leaf: values[leaf.index])


def per_example_noise_scale(module: nn.Module, batch: Any, population: int | None = None, max_hessian: int = 256):
    """B_simple (and B_noise for models of at most ``max_hessian`` parameters) from exact per-example gradients.

    The gradients come from ``torch.func``: ``vmap(grad(loss))`` over the examples of ``batch``, each as a batch of
    one, in float64, with the module's buffers (BatchNorm's running statistics) and frozen parameters in float64
    too. ``module.loss`` must be a pure function of the parameters and the batch (see HasLoss).

    Args:
        module: A module with a ``loss(batch)`` method.
        batch: The examples, as the module's loader yields them (tensors with the examples along dimension 0, in
            any collection Lightning moves to the device).
        population: Size of the data set the examples stand for; by default their number.
        max_hessian: Largest parameter count for which the Hessian, and so B_noise, is computed.
    """
    return per_example_noise_scales(module, [(None, batch)], population, max_hessian)[0]


def per_example_noise_scales(
    module: nn.Module, pairs: list[tuple[Mapping[str, Tensor] | None, Any]], population: int | None = None,
    max_hessian: int = 256,
) -> list[dict[str, float]]:  # fmt: skip
    """``per_example_noise_scale`` at several weights of one module, each on its own examples: ``pairs`` of a
    state_dict (None: the module's own weights) and a batch. Weight sets whose examples have the same shapes are
    measured by one vmap over them, as many as one chunk of per-example gradients holds: the regression's 2
    parameters measure a whole cohort's targets in one call, where each call alone costs milliseconds of overhead."""
    wrapper = _LossOf(module)
    trainable = [name for name, p in wrapper.named_parameters() if p.requires_grad]
    own = {**dict(wrapper.named_parameters()), **dict(wrapper.named_buffers())}
    n_params = sum(own[name].numel() for name in trainable)
    results: list[dict[str, float]] = []
    group: list[tuple[Mapping[str, Tensor] | None, Any]] = []
    for pair in pairs:  # consecutive pairs whose examples have the same shapes, as many as a chunk holds
        if group and (_shapes(pair[1]) != _shapes(group[0][1]) or len(group) >= _sets_per_chunk(n_params, group)):
            results += _measure_group(wrapper, trainable, own, group, population, max_hessian)
            group = []
        group.append(pair)
    if group:
        results += _measure_group(wrapper, trainable, own, group, population, max_hessian)
    return results


def _shapes(batch: Any) -> list[torch.Size]:
    return [t.shape for t in _leaves(batch)[0]]


def _sets_per_chunk(n_params: int, group: list[tuple[Any, Any]]) -> int:
    """Weight sets whose per-example gradients over the group's examples one chunk holds (at least one)."""
    return max(1, CHUNK_ELEMENTS // (n_params * max(1, batch_samples(group[0][1]) or 1)))


def _measure_group(
    wrapper: nn.Module, trainable: list[str], own: dict[str, Tensor], group: list[tuple[Any, Any]],
    population: int | None, max_hessian: int,
) -> list[dict[str, float]]:  # fmt: skip
    """The noise scales of a group of (state_dict, batch) pairs whose batches have the same shapes, vectorized over
    the pairs (an outer vmap) and over the examples of each (the inner one), in float64."""

    def at(weights: Mapping[str, Tensor] | None, name: str) -> Tensor:  # a parameter or buffer at these weights
        tensor = own[name] if weights is None else weights.get(name.removeprefix("module."), own[name])
        tensor = tensor.detach().to(own[name].device)
        return tensor.double() if tensor.is_floating_point() else tensor

    stacked = {name: torch.stack([at(weights, name) for weights, _ in group]) for name in own}
    params = {name: stacked[name] for name in trainable}
    fixed = {name: tensor for name, tensor in stacked.items() if name not in params}  # buffers, frozen parameters
    shared = all(batch is group[0][1] for _, batch in group)  # one member's targets: the same examples
    leaves = [_leaves(_map_tensors(lambda t: t.double() if t.is_floating_point() else t, b))[0] for _, b in group]
    rebuild = _leaves(group[0][1])[1]
    data = leaves[0] if shared else [torch.stack(parts) for parts in zip(*leaves, strict=True)]
    over = None if shared else 0

    def loss(p: dict[str, Tensor], f: dict[str, Tensor], *tensors: Tensor) -> Tensor:
        return functional_call(wrapper, (p, f), (rebuild(list(tensors)),))

    def one(p: dict[str, Tensor], f: dict[str, Tensor], *example: Tensor) -> Tensor:
        return loss(p, f, *[t.unsqueeze(0) for t in example])

    n_params = sum(params[name][0].numel() for name in trainable)
    moments = [GradientMoments(scatter=n_params <= max_hessian) for _ in group]
    examples = len(leaves[0][0]) if leaves[0] else 0
    chunk = max(1, CHUNK_ELEMENTS // (n_params * len(group)))  # examples whose gradients are held at once
    per_pair = vmap(vmap(grad(one), in_dims=(None, None, *[0] * len(data))), in_dims=(0, 0, *[over] * len(data)))
    for start in range(0, examples, chunk):
        part = [t[start : start + chunk] if shared else t[:, start : start + chunk] for t in data]
        with torch.enable_grad():
            per_example = per_pair(params, fixed, *part)
        for index, found in enumerate(moments):
            found.add([per_example[name][index].flatten(1) for name in trainable])
    hessians: list[Tensor | None] = [None] * len(group)
    if n_params <= max_hessian:  # reverse over reverse: no forward-mode decompositions
        blocks = vmap(jacrev(jacrev(loss)), in_dims=(0, 0, *[over] * len(data)))(params, fixed, *data)
        sizes = {name: params[name][0].numel() for name in trainable}
        hessians = [
            torch.cat(
                [torch.cat([blocks[a][b][i].reshape(sizes[a], sizes[b]) for b in trainable], 1) for a in trainable]
            )
            for i in range(len(group))
        ]
    return [_noise_scale(m, h, population or examples) for m, h in zip(moments, hessians, strict=True)]


class TwoBatchEstimator:
    """Unbiased estimates of |G|² and tr Σ from squared gradient norms at two batch sizes, EMA-smoothed.

    E|G_B|² = |G|² + tr Σ / B, so with B_small < B_big:
    |G|² ≈ (B_big·|G_big|² − B_small·|G_small|²) / (B_big − B_small) and
    tr Σ ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big).
    Each estimate is noisy (even negative); the two are smoothed separately and divided only when read.
    """

    def __init__(self, ema: float = 0.95) -> None:
        self.ema = ema
        self.grad_norm_sq: float | None = None
        self.trace_sigma: float | None = None

    def update(self, small_sq: float, b_small: float, big_sq: float, b_big: float) -> None:
        grad_norm_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        trace_sigma = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
        if self.grad_norm_sq is None:
            self.grad_norm_sq, self.trace_sigma = grad_norm_sq, trace_sigma
        else:
            self.grad_norm_sq = self.ema * self.grad_norm_sq + (1 - self.ema) * grad_norm_sq
            self.trace_sigma = self.ema * self.trace_sigma + (1 - self.ema) * trace_sigma

    @property
    def b_simple(self) -> float | None:
        if not self.grad_norm_sq:
            return None
        return self.trace_sigma / self.grad_norm_sq


def _map_tensors(fn: Any, batch: Any) -> Any:
    """The batch with ``fn`` applied to each of its tensors, in any collection (Lightning's apply_to_collection)."""
    return apply_to_collection(batch, Tensor, fn)


def _concatenate(batches: list[Any]) -> Any:
    """The batches of a loader joined into one batch: tensors concatenated along dimension 0, in order, in tuples,
    lists, namedtuples, dicts and dataclasses."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat(batches)
    if isinstance(first, Mapping):
        return {key: _concatenate([b[key] for b in batches]) for key in first}
    if is_dataclass_instance(first):
        return replace(first, **{f.name: _concatenate([getattr(b, f.name) for b in batches]) for f in fields(first)})
    if isinstance(first, list | tuple):
        parts = [_concatenate(list(part)) for part in zip(*batches, strict=True)]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)  # a namedtuple's fields
    return first


def _examples(loader: Any, limit: int | None) -> tuple[Any, int] | None:
    """A fixed set of the loader's examples as one batch (at most ``limit``, a seeded random subset), and N; None
    for a loader with no dataset of known length (an IterableDataset)."""
    try:
        dataset, collate = loader.dataset, loader.collate_fn
        population = len(dataset)
    except (AttributeError, TypeError, NotImplementedError):
        return None
    indices = list(range(population))
    if limit is not None and population > limit:
        indices = torch.randperm(population, generator=torch.Generator().manual_seed(0))[:limit].sort().values.tolist()
    plain = DataLoader(Subset(dataset, indices), batch_size=512, collate_fn=collate)
    return _concatenate(list(plain)), population


def _two_batch_needs(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
    """What the two-batch estimator lacks in this run, or None: it compares micro-batches that Lightning
    accumulates, which it does under automatic optimization only."""
    if not pl_module.automatic_optimization:
        return "automatic optimization (Lightning accumulates no gradients under manual optimization)"
    if trainer.accumulate_grad_batches < 2:
        return "trainer.accumulate_grad_batches >= 2"
    return None


def noise_scales_in_eval(module: nn.Module, pairs: list[tuple[Any, Any]], population: int | None) -> list[dict]:
    """per_example_noise_scales in eval mode, as ``vmap`` needs, with the training's random numbers untouched;
    ``pairs`` of a state_dict of the module (None: its own weights) and examples, moved to the module's device
    (each examples object once, so that pairs sharing one still share it)."""
    training = module.training
    module.eval()
    try:
        with isolate_rng():  # a loss that draws random numbers must not shift the training's
            device = next(module.parameters(), torch.empty(0)).device
            moved = {id(examples): _map_tensors(lambda t: t.to(device), examples) for _, examples in pairs}
            results = per_example_noise_scales(module, [(w, moved[id(e)]) for w, e in pairs], population)
    finally:
        module.train(training)
    for result in results if population is None else []:  # a loader with no length: no data set size
        result.pop("b_simple_finite")
    return results


class GradientNoiseScale(pl.Callback):
    """Logs the gradient noise scale B_simple = tr Σ / |G|² under ``gns/`` in TensorBoard, for any model.

    The estimators (``estimator``), the one that runs said in one line at the start:
    - per_example: the model has a ``loss(batch)`` method (see batchsize_lit.problem.HasLoss). Exact per-example
      gradients by ``torch.func`` over the training split, or a fixed random subset of ``max_examples`` of it (of
      a loader with no length, such as an IterableDataset's, the first ``max_examples`` training examples), at
      the end of every ``every_n_epochs`` epochs and every ``every_n_steps`` steps if set, and when
      StepsToTarget asks. Small models get B_noise too. The model is measured in eval mode (no dropout, BatchNorm
      on its running statistics).
    - two_batch: with accumulate_grad_batches ≥ 2 under automatic optimization. The unbiased two-batch estimator
      (TwoBatchEstimator), comparing each micro-batch's gradient with the accumulated one at every optimizer step.
      It assumes one device and no gradient scaler: under DDP the micro-batch gradients are not synchronised
      until the last one, and with 16-bit mixed precision they are scaled.
    - auto: per_example where the model has ``loss(batch)`` and ``vmap`` can run it (tried on two examples before
      the first step: some layers, such as recurrent ones, it cannot), else two_batch where the run allows it,
      else nothing is measured and the line says why.
    A measurement never ends a fit: one that fails later says why in one line, and the callback goes on with the
    two-batch estimator where auto allows it, else measures nothing more.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        max_examples: int | None = 4096,
        ema: float = 0.95,
        estimator: Literal["auto", "per_example", "two_batch"] = "auto",
    ) -> None:
        """
        Args:
            every_n_steps: Also measure every this many optimizer steps (per-example estimator only).
            every_n_epochs: Measure at the end of every this many epochs (per-example estimator only); null never,
                as when only StepsToTarget asks for it, at the target.
            max_examples: Most training examples the per-example estimator uses; null uses them all.
            ema: Smoothing of the two-batch estimator's numerator and denominator, per optimizer step.
            estimator: auto, per_example (needs a loss(batch) method) or two_batch (needs
                trainer.accumulate_grad_batches >= 2 under automatic optimization); see the class description.
        """
        self.every_n_steps, self.every_n_epochs, self.max_examples = every_n_steps, every_n_epochs, max_examples
        self.estimator_choice = estimator
        self.estimator = TwoBatchEstimator(ema)
        self.method: Literal["per_example", "two_batch", "none"] = "none"
        self.last: dict[str, float] = {}
        self._examples: Any = None
        self._population: int | None = 0
        self._kept: list[Any] | None = None  # training batches kept for a loader with no length
        self._kept_count = 0
        self._previous: Tensor | None = None
        self._micro_sq: list[float] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.estimator_choice == "per_example" and not has_loss(pl_module):
            raise BadInput("GradientNoiseScale.estimator='per_example' needs a model with a loss(batch) method")
        if self.estimator_choice == "two_batch" and (needs := _two_batch_needs(trainer, pl_module)):
            raise BadInput(f"GradientNoiseScale.estimator='two_batch' needs {needs}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.method, self._kept = "none", None
        if self.estimator_choice == "two_batch":
            return self._settle(trainer, pl_module, "asked for")
        if not has_loss(pl_module):
            return self._settle(trainer, pl_module, "the model has no loss(batch) method")
        with isolate_rng():  # reading the examples draws from the global generators: training must not notice
            gathered = _examples(trainer.train_dataloader, self.max_examples)
        if gathered is None:  # no length: the first training batches are kept, and tried at the first
            self._kept, self._kept_count, self._population = [], 0, None
            return
        self._examples, self._population = gathered
        self._settle(trainer, pl_module, self._try(pl_module, self._examples))

    def use_examples(self, loader: Any) -> None:
        """Measure per-example gradients over this loader's examples, read as ``on_train_start`` reads them but
        not tried on the model (a study's cohort has tried one of its members); the global generators untouched."""
        with isolate_rng():
            gathered = _examples(loader, self.max_examples)
        self.method = "per_example"
        self._examples, self._population = gathered if gathered is not None else (None, None)

    def _settle(self, trainer: pl.Trainer, pl_module: pl.LightningModule, failure: str | None) -> None:
        """Choose the estimator, given why the per-example one cannot run (None: it can), and say so in one line."""
        if failure is None:
            self.method = "per_example"
            if self._population is None:
                line = f"per-example gradients over the first training batches, up to {self.max_examples} examples "
                line += "(the loader has no length, so no b_simple_finite)"
            else:
                line = f"per-example gradients over {batch_samples(self._examples)} of {self._population} examples"
        elif self.estimator_choice == "per_example":
            self.method, line = "none", f"measures nothing: {failure}"
        elif (needs := _two_batch_needs(trainer, pl_module)) is None:
            self.method = "two_batch"
            line = "the two-batch estimator" + ("" if failure == "asked for" else f"; {failure}")
        else:
            self.method, line = "none", f"measures nothing: {failure}; the two-batch estimator needs {needs}"
        rank_zero_info(f"GradientNoiseScale: {line}")

    def _try(self, pl_module: pl.LightningModule, examples: Any) -> str | None:
        """Why per-example gradients of two of the examples cannot be had, or None."""
        try:
            noise_scales_in_eval(pl_module, [(None, _map_tensors(lambda t: t[:2], examples))], 2)
        except Exception as error:  # whatever vmap or the model raises: the run goes on without this estimator
            return f"vmap cannot run this model's loss(batch): {type(error).__name__}: {one_line(error)[:160]}"
        return None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if self._kept is None:
            return
        if not self._kept and self.method == "none":  # the first batch, before its step: try it, then decide
            self._settle(trainer, pl_module, self._try(pl_module, batch))
            if self.method != "per_example":
                self._kept = None
                return
        self._kept.append(_map_tensors(lambda t: t.detach().clone(), batch))
        self._kept_count += batch_samples(batch) or 0
        if self.max_examples is not None and self._kept_count >= self.max_examples:
            examples = _concatenate(self._kept)
            self._examples = _map_tensors(lambda t: t[: self.max_examples], examples)
            self._kept = None  # enough: no more copies

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure now, log under gns/, and return the values (per-example estimator; else the latest values)."""
        return self.measure_at(trainer, pl_module, [None])[0]

    def measure_at(self, trainer: pl.Trainer, pl_module: pl.LightningModule, states: list[Any]) -> list[dict]:
        """``measure`` at each of several state_dicts of the module (None: its own weights), vectorized over them."""
        if self._kept:  # the batches kept so far from a loader with no length
            self._examples = _concatenate(self._kept)
        if self.method != "per_example" or self._examples is None:
            return [dict(self.last) for _ in states]
        try:
            found = noise_scales_in_eval(pl_module, [(state, self._examples) for state in states], self._population)
        except Exception as error:  # a measurement never ends a fit
            failure = f"per-example gradients failed at step {trainer.global_step}: {type(error).__name__}: "
            self._settle(trainer, pl_module, failure + one_line(error)[:160])
            return [dict(self.last) for _ in states]
        return [self.record(trainer, values) for values in found]

    @property
    def examples(self) -> tuple[Any, int | None]:
        """The examples measured on, and the size of the data set they stand for."""
        return self._examples, self._population

    def record(self, trainer: Any, values: dict[str, float]) -> dict[str, float]:
        """Keep a measurement as the latest and log it under gns/ at the trainer's step."""
        self.last = values
        for logger in trainer.loggers:
            logger.log_metrics({f"gns/{key}": value for key, value in values.items()}, step=trainer.global_step)
        return dict(values)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.method == "per_example" and self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.method != "two_batch":
            return
        accumulated = _flat_grad(pl_module)
        previous = self._previous if self._previous is not None else torch.zeros_like(accumulated)
        micro = (accumulated - previous) * accumulation_scale(trainer, pl_module)  # this micro-batch's mean
        self._micro_sq.append(float(micro.pow(2).sum()))
        self._previous = accumulated.clone()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.method != "two_batch" or len(self._micro_sq) < 2:  # an epoch's last window can be a single batch
            self._previous, self._micro_sq = None, []
            return
        size = batch_size(trainer)
        if size is not None:
            small = size * trainer.world_size
            big = small * len(self._micro_sq)
            big_sq = float(_flat_grad(pl_module).pow(2).sum())
            self.estimator.update(sum(self._micro_sq) / len(self._micro_sq), small, big_sq, big)
            if self.estimator.b_simple is not None:
                self.last = {"b_simple": self.estimator.b_simple}
                for logger in trainer.loggers:
                    logger.log_metrics({"gns/b_simple_two_batch": self.estimator.b_simple}, step=trainer.global_step)
        self._previous, self._micro_sq = None, []


def _flat_grad(module: torch.nn.Module) -> Tensor:
    return torch.cat([p.grad.detach().flatten() for p in module.parameters() if p.grad is not None])


class StepsToTarget(pl.Callback):
    """Records the first optimizer step, and samples seen, from which a monitored metric stays at each target.

    A target is a value from ``target``, or else (1 + tolerance) × (for mode max, (1 − tolerance) ×) the reference
    fact ``<monitor>_at_optimum`` that the problem provides (see batchsize_lit.problem); either may be a list, for
    several targets in one run. A target counts as reached only once it has held for ``hold`` consecutive checks;
    one still within its hold when training ends is not reached. The metric is checked after each validation; with
    ``every_n_steps`` the model's ``loss(batch)`` over the whole validation data stands for it every that many steps
    instead. If a GradientNoiseScale callback runs, B_simple and B_noise are measured when training ends, at the
    weights of the step from which each target held (a copy of the weights is kept per target). With ``stop`` the
    run ends once the hardest target has held for ``hold`` checks.
    """

    def __init__(
        self,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
        target: float | list[float] | None = None,
        tolerance: float | list[float] = 0.05,
        every_n_steps: int | None = None,
        stop: bool = True,
        hold: int = 20,
    ) -> None:
        """
        Args:
            monitor: Logged metric that must reach the target, e.g. val_loss or val_acc; by default early
                stopping's monitor (else val_loss).
            mode: min, reached at or under the target; max, at or over it; by default early stopping's mode.
            target: The value to reach, or a list of them; by default from the problem's ``<monitor>_at_optimum``
                and tolerance.
            tolerance: Relative margin around ``<monitor>_at_optimum`` that counts as reached, or a list of them.
            every_n_steps: Evaluate the model's loss(batch) on the validation data every this many steps, in place
                of the logged monitor (a loss monitor only).
            stop: End training once the hardest target has held for ``hold`` consecutive checks.
            hold: Consecutive checks at a target before it counts as reached (and, with stop, before stopping).
        """
        self.monitor, self.mode, self.target, self.tolerance = monitor, mode, target, tolerance
        self.every_n_steps, self.stop, self.hold = every_n_steps, stop, hold
        self.targets: list[float] = []
        self.results: list[dict[str, Any]] = []  # per target, easiest first: target, steps, samples, b_simple, b_noise
        self._held: list[int] = []
        self._weights: list[dict[str, Tensor] | None] = []
        self._val: Any = None
        self._seen_monitor = False

    @property
    def validation_data(self) -> Any:
        """The validation data as one batch, on which ``loss(batch)`` is checked every_n_steps (None otherwise)."""
        return self._val

    @property
    def reached_step(self) -> int | None:
        """The step from which the hardest target held (None if it was not reached)."""
        return self.results[-1]["steps"] if self.results else None

    @property
    def reached_samples(self) -> int | None:
        return self.results[-1]["samples"] if self.results else None

    @property
    def b_simple_at_target(self) -> float | None:
        return self.results[-1]["b_simple"] if self.results else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stopping = find_callback(trainer, EarlyStopping)
        if self.monitor is None:  # the run's one monitored metric, as the history and checkpoint follow it
            self.monitor = stopping.monitor if stopping is not None else "val_loss"
        if self.mode is None:
            self.mode = stopping.mode if stopping is not None and stopping.monitor == self.monitor else "min"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.targets = self._resolve_targets(trainer, pl_module)
        empty = dict.fromkeys(["steps", "samples", "b_simple", "b_simple_finite", "b_noise"])
        self.results = [{"target": t, **empty} for t in self.targets]
        self._held, self._weights = [0] * len(self.targets), [None] * len(self.targets)
        if self.every_n_steps:
            if not has_loss(pl_module):
                raise BadInput("StepsToTarget.every_n_steps needs a model with a loss(batch) method")
            source = trainer.datamodule if trainer.datamodule is not None else pl_module
            self._val = _map_tensors(lambda t: t.to(pl_module.device), _concatenate(list(source.val_dataloader())))

    def _resolve_targets(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[float]:
        """The targets as values, easiest first (for mode min the largest)."""
        if self.target is not None:
            values = list(self.target) if isinstance(self.target, list | tuple) else [self.target]
        else:
            reference = reference_facts(trainer.datamodule, pl_module).get(f"{self.monitor}_at_optimum")
            if reference is None:
                raise BadInput(
                    f"StepsToTarget(monitor={self.monitor!r}) needs a target: this problem gives no "
                    f"{self.monitor}_at_optimum"
                )
            tolerances = self.tolerance if isinstance(self.tolerance, list | tuple) else [self.tolerance]
            values = [reference * (1 + t if self.mode == "min" else 1 - t) for t in tolerances]
        return sorted(set(values), reverse=self.mode == "min")

    def check(self, value: float, step: int, samples: int | None, weights: Callable[[], dict[str, Tensor]]) -> bool:
        """Record one check of the metric against every target; True once the run should stop.

        Args:
            value: The metric's value at this check.
            step: Optimizer steps taken so far.
            samples: Training samples seen so far (None if not counted).
            weights: Returns a copy of the current state_dict, called only where a target is newly reached.
        """
        for index, (target, result) in enumerate(zip(self.targets, self.results, strict=True)):
            if value <= target if self.mode == "min" else value >= target:
                if result["steps"] is None:
                    result["steps"], result["samples"] = step, samples
                    # Measured once the run ends, at these weights: the target can be reached many times.
                    self._weights[index] = weights()
                self._held[index] += 1
            else:  # it must stay reached
                result["steps"] = result["samples"] = self._weights[index] = None
                self._held[index] = 0
        return bool(self.stop and self._held and self._held[-1] >= self.hold)

    def unchanged_by(self, value: float) -> bool:
        """Whether a check of this value would record nothing: it reaches no target (the easiest is enough to
        ask) and no target is being held. A cohort asks before it copies a member's weights out for ``check``."""
        if any(self._held) or self.hold < 1:
            return False
        return not self.targets or not (value <= self.targets[0] if self.mode == "min" else value >= self.targets[0])

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, value: float) -> None:
        history = find_callback(trainer, RunHistory)
        samples = history.samples if history else None
        if self.check(value, trainer.global_step, samples, lambda: copy_weights(pl_module)):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._val is not None and trainer.global_step % self.every_n_steps == 0:
            with torch.no_grad():
                self._check(trainer, pl_module, float(pl_module.loss(self._val)))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val is not None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:  # never silently watch a metric that is not logged
            raise BadInput(never_logged("StepsToTarget.monitor", self.monitor, trainer))
        self._check(trainer, pl_module, float(value))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gns = find_callback(trainer, GradientNoiseScale)
        if pending := self.end_holds(gns):  # the noise scale at each reached target's weights, all in one call
            self.take(pending, gns.measure_at(trainer, pl_module, [weights for _, weights in pending]))

    def end_holds(self, gns: GradientNoiseScale | None) -> list[tuple[int, dict[str, Tensor]]]:
        """Training has ended: a target still within its hold is not reached. Returns the reached targets' indices
        and weights, where the noise scale is to be measured (none without a per-example GradientNoiseScale)."""
        for index, result in enumerate(self.results):
            if self._held[index] < self.hold:
                result["steps"] = result["samples"] = self._weights[index] = None
        if gns is None or gns.method != "per_example":
            return []
        return [(index, weights) for index, weights in enumerate(self._weights) if weights is not None]

    def take(self, pending: list[tuple[int, Any]], measured: list[dict[str, float]]) -> None:
        """The noise scales measured at the weights ``end_holds`` gave, into the targets' results."""
        for (index, _), values in zip(pending, measured, strict=True):
            self.results[index].update({key: values.get(key) for key in ("b_simple", "b_simple_finite", "b_noise")})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics: dict[str, float | None] = {}
        for index, result in enumerate(self.results):
            suffix = f"_{index + 1}" if len(self.results) > 1 else ""
            metrics[f"target/{self.monitor}{suffix}"] = result["target"]
            metrics.update({f"target/steps{suffix}": result["steps"], f"target/samples{suffix}": result["samples"]})
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=trainer.global_step)

    def columns(self) -> dict[str, Any]:
        """The results.csv columns: target, steps_to_target, samples_to_target, b_simple_at_target,
        b_simple_finite_at_target and b_noise_at_target for the hardest target; with several targets, the same for
        each, numbered easiest first (``target_1``, ``steps_to_target_1``, ...)."""
        names = {"steps": "steps_to_target", "samples": "samples_to_target", "b_simple": "b_simple_at_target",
                 "b_simple_finite": "b_simple_finite_at_target", "b_noise": "b_noise_at_target"}  # fmt: skip
        row: dict[str, Any] = {"target": self.results[-1]["target"] if self.results else None}
        row.update({name: self.results[-1][key] if self.results else None for key, name in names.items()})
        if len(self.results) > 1:
            for index, result in enumerate(self.results, 1):
                row[f"target_{index}"] = result["target"]
                row.update({f"{name}_{index}": result[key] for key, name in names.items()})
        return row


def fit_critical_batch(batch_sizes: list[float], steps: list[float]) -> dict[str, float]:
    """Fit S = S_min·(1 + B_crit/B) to steps-to-target S at batch sizes B (McCandlish et al. 2018).

    S is linear in 1/B: S = S_min + (S_min·B_crit)/B. The fit weights each point by 1/S², so that every batch
    size counts by its relative error. E_min = S_min·B_crit is the fewest examples, reached at small batches.
    """
    b = torch.tensor(batch_sizes, dtype=torch.float64)
    s = torch.tensor(steps, dtype=torch.float64)
    design = torch.stack([torch.ones_like(b), 1 / b], dim=1) / s.unsqueeze(1)
    (s_min, slope) = torch.linalg.lstsq(design, torch.ones_like(s).unsqueeze(1)).solution.flatten().tolist()
    b_crit = slope / s_min if s_min > 0 else math.inf
    return {"b_crit": b_crit, "s_min": s_min, "e_min": s_min * b_crit}


def critical_batch(rows: list[dict[str, Any]], resamples: int = 1000, suffix: str = "") -> dict[str, Any] | None:
    """Steps to target against batch size, at each batch size's best lr, and the fit of S = S_min·(1 + B_crit/B).

    For each (batch size, lr) the steps are averaged over seeds, counting only settings where every seed ran to the
    end (status ok) and reached the target: a seed that diverged or failed disqualifies its setting. The best lr is
    the one with the fewest mean steps. The spread of B_crit is a bootstrap over seeds: each of ``resamples``
    replicates draws every setting's seeds with replacement and fits again. Where the runs measured B_simple (and
    B_noise) when they reached the target, their median and quartiles over the chosen runs stand beside B_crit, as
    McCandlish et al. (2018) predict B_crit ≈ B_noise. ``suffix`` picks one target of several (``"_2"`` reads
    steps_to_target_2 and so on). Returns None with fewer than 3 batch sizes.
    """
    steps_key, samples_key = f"steps_to_target{suffix}", f"samples_to_target{suffix}"
    runs: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("global_batch_size"):
            member = {**row, "steps_to_target": row.get(steps_key), "samples_to_target": row.get(samples_key)}
            runs.setdefault((row["global_batch_size"], row["lr_effective"]), []).append(member)
    runs = {key: members for key, members in runs.items()
            if all(r.get("status") == "ok" and r["steps_to_target"] is not None for r in members)}  # fmt: skip
    points = _best_per_batch(runs)
    if len(points) < 3:
        return None
    fit = fit_critical_batch([p["batch_size"] for p in points], [p["steps_to_target"] for p in points])
    generator = random.Random(0)
    draws = []
    for _ in range(resamples):
        resampled = {key: generator.choices(members, k=len(members)) for key, members in runs.items()}
        draw = _best_per_batch(resampled)
        draws.append(fit_critical_batch([p["batch_size"] for p in draw], [p["steps_to_target"] for p in draw]))
    b_crits = sorted(d["b_crit"] for d in draws)
    fit["b_crit_low"], fit["b_crit_high"] = b_crits[int(0.025 * resamples)], b_crits[int(0.975 * resamples) - 1]
    chosen = [row for p in points for row in runs[(p["batch_size"], p["lr"])]]
    for name in ("b_simple", "b_simple_finite", "b_noise"):
        # heavy-tailed: |G|² can come close to 0 near the target, so the median and quartiles
        values = [row[f"{name}_at_target{suffix}"] for row in chosen if row.get(f"{name}_at_target{suffix}")]
        if name == "b_noise" and not values and not suffix:  # results from before b_noise_at_target was a column
            values = [row["b_noise"] for row in chosen if row.get("b_noise") and row.get("b_simple_at_target")]
        if values:
            quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
            fit[name], fit[f"{name}_q1"], fit[f"{name}_q3"] = statistics.median(values), quartiles[0], quartiles[2]
    if "b_simple" in fit:
        fit["ratio"] = fit["b_crit"] / fit["b_simple"]
    return {"points": points, "fit": fit}


def critical_batch_by_target(rows: list[dict[str, Any]], resamples: int = 1000) -> list[dict[str, Any]]:
    """critical_batch for every target the rows record (one, or target_1, target_2, ...), each with its target."""
    count = max((int(key.rsplit("_", 1)[1]) for row in rows for key in row
                 if key.startswith("target_") and key.rsplit("_", 1)[1].isdigit()), default=0)  # fmt: skip
    results = []
    for suffix in [f"_{index}" for index in range(1, count + 1)] or [""]:
        found = critical_batch(rows, resamples, suffix)
        if found:
            target = next((row.get(f"target{suffix}") for row in rows if row.get(f"target{suffix}") is not None), None)
            results.append({"target": target, "suffix": suffix, **found})
    return results


def _best_per_batch(runs: dict[tuple[float, float], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """For each batch size, the lr with the fewest mean steps to target, and its means over seeds."""
    best: dict[float, dict[str, Any]] = {}
    for (batch, lr), members in runs.items():
        steps = statistics.fmean(row["steps_to_target"] for row in members)
        if batch not in best or steps < best[batch]["steps_to_target"]:
            samples = statistics.fmean(row["samples_to_target"] for row in members)
            best[batch] = {"batch_size": batch, "lr": lr, "runs": len(members), "steps_to_target": steps,
                           "samples_to_target": samples}  # fmt: skip
    return [best[batch] for batch in sorted(best)]
