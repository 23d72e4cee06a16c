"""Batch-size science: gradient noise scale, steps to a validation target, and the critical batch size."""

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor

from batchsize_lit.data import RegressionDataModule
from batchsize_lit.model import LinearRegressor


def exact_noise_scale(x: Tensor, y: Tensor, weight: float, bias: float) -> dict[str, float]:
    """B_simple and B_noise of y ≈ w·x + b under the mean squared error, from every per-example gradient.

    For example i, r_i = w·x_i + b − y_i and g_i = 2·r_i·(x_i, 1). G is their mean and Σ their covariance over the
    training split (sampling an example uniformly from it); H = 2·[[E x², E x], [E x, 1]] is the Hessian.
    B_simple = tr Σ / |G|² and B_noise = tr(HΣ) / (GᵀHG) (McCandlish et al. 2018). Both assume batches drawn with
    replacement. Shuffled epochs draw without replacement, which scales the batch-gradient covariance by
    (N − B)/(N − 1); the batch size at which its noise equals |G|² is then N·B_simple / (B_simple + N − 1),
    reported as b_simple_finite.
    """
    x, y = x.double().flatten(), y.double().flatten()
    features = torch.stack([x, torch.ones_like(x)], dim=1)
    gradients = 2 * (weight * x + bias - y).unsqueeze(1) * features
    mean = gradients.mean(0)
    centered = gradients - mean
    sigma = centered.T @ centered / len(x)
    hessian = 2 * features.T @ features / len(x)
    b_simple = float(torch.trace(sigma) / mean.dot(mean))
    n = len(x)
    return {
        "b_simple": b_simple,
        "b_noise": float(torch.trace(hessian @ sigma) / (mean @ hessian @ mean)),
        "b_simple_finite": n * b_simple / (b_simple + n - 1),
        "grad_norm_sq": float(mean.dot(mean)),
        "trace_sigma": float(torch.trace(sigma)),
    }


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


class GradientNoiseScale(pl.Callback):
    """Logs the gradient noise scale under ``gns/`` in TensorBoard.

    Which estimator runs:
    - LinearRegressor on RegressionDataModule: the exact B_simple, B_noise and b_simple_finite from all the
      per-example gradients of the training split at the current weights (see exact_noise_scale), at the end
      of every epoch and, if every_n_steps is set, every that many steps.
    - Any other model, with accumulate_grad_batches ≥ 2: the two-batch estimator of B_simple (TwoBatchEstimator),
      comparing each micro-batch's gradient with the accumulated one, logged at every optimizer step that
      ends an accumulation window. Under DDP the gradients are already averaged over devices, so the two batch
      sizes are world_size times the micro-batch and the accumulated batch.
    - Otherwise nothing is logged, and the callback says so once.
    """

    def __init__(self, every_n_steps: int | None = None, ema: float = 0.95) -> None:
        """
        Args:
            every_n_steps: Also log the exact values every this many optimizer steps (linear model only).
            ema: Smoothing of the two-batch estimator's numerator and denominator, per optimizer step.
        """
        self.every_n_steps = every_n_steps
        self.estimator = TwoBatchEstimator(ema)
        self.last: dict[str, float] = {}
        self.exact = False
        self._previous: Tensor | None = None
        self._micro_sq: list[float] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.exact = isinstance(pl_module, LinearRegressor) and isinstance(trainer.datamodule, RegressionDataModule)
        if not self.exact and trainer.accumulate_grad_batches < 2 and stage == "fit":
            rank_zero_info("GradientNoiseScale: set trainer.accumulate_grad_batches >= 2 to estimate it for this model")

    def log_exact(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        x, y = trainer.datamodule.train_set.tensors
        linear = pl_module.linear
        self.last = exact_noise_scale(x, y, linear.weight.item(), linear.bias.item())
        for logger in trainer.loggers:
            logger.log_metrics({f"gns/{key}": value for key, value in self.last.items()}, step=trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.exact:
            self.log_exact(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.exact and self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_exact(trainer, pl_module)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.exact or trainer.accumulate_grad_batches < 2:
            return
        accumulated = _flat_grad(pl_module)
        previous = self._previous if self._previous is not None else torch.zeros_like(accumulated)
        # Lightning divides each micro-batch loss by accumulate_grad_batches; undo it for this micro-batch's mean.
        micro = (accumulated - previous) * trainer.accumulate_grad_batches
        self._micro_sq.append(float(micro.pow(2).sum()))
        self._previous = accumulated.clone()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.exact or not self._micro_sq:
            return
        batch_size = getattr(trainer.datamodule, "hparams", {}).get("batch_size")
        if batch_size is not None:
            small = batch_size * trainer.world_size
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
    """Records the first optimizer step, and sample count, from which val_loss stays at or under a target.

    For LinearRegressor on RegressionDataModule the target defaults to (1 + tolerance) × the validation MSE of the
    training split's least-squares fit, and the validation MSE is computed exactly every check_every_n_steps
    steps (a few µs for this model). For other models give ``target``; the logged val_loss is checked after
    each validation. With ``stop`` the run ends once the target has held for ``hold`` checks.
    """

    def __init__(
        self,
        tolerance: float = 0.05,
        target: float | None = None,
        check_every_n_steps: int = 1,
        stop: bool = True,
        hold: int = 20,
    ) -> None:
        """
        Args:
            tolerance: Relative margin over the least-squares validation MSE that counts as reached.
            target: An absolute val_loss target instead, for other models and data.
            check_every_n_steps: Steps between exact checks (linear model).
            stop: End training once the target has held for ``hold`` consecutive checks.
            hold: Consecutive checks at or under the target before stopping.
        """
        self.tolerance, self.target, self.check_every_n_steps = tolerance, target, check_every_n_steps
        self.stop, self.hold = stop, hold
        self.reached_step: int | None = None
        self.reached_samples: int | None = None
        self._held = 0
        self._samples = 0
        self._val: tuple[Tensor, Tensor] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if isinstance(pl_module, LinearRegressor) and isinstance(data, RegressionDataModule) and data.n_val:
            data.setup(stage)
            self._val = data.val_set.tensors
            if self.target is None:
                facts = data.facts()
                x, y = (t.double().flatten() for t in self._val)
                lsq_val = float((facts["lsq_weight"] * x + facts["lsq_bias"] - y).pow(2).mean())
                self.target = (1 + self.tolerance) * lsq_val

    def _check(self, trainer: pl.Trainer, value: float) -> None:
        if value <= self.target:
            if self.reached_step is None:
                self.reached_step, self.reached_samples = trainer.global_step, self._samples
            self._held += 1
            if self.stop and self._held >= self.hold:
                trainer.should_stop = True
        else:
            self.reached_step = self.reached_samples = None  # it must stay reached
            self._held = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += extract_batch_size(batch) * trainer.world_size
        if self._val is not None and trainer.global_step % self.check_every_n_steps == 0:
            x, y = self._val
            with torch.no_grad():
                self._check(trainer, float(torch.nn.functional.mse_loss(pl_module(x), y)))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_loss")
        if self._val is None and self.target is not None and value is not None and not trainer.sanity_checking:
            self._check(trainer, float(value))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {"target/val_loss": self.target}
        if self.reached_step is not None:
            metrics.update({"target/steps": self.reached_step, "target/samples": self.reached_samples})
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=trainer.global_step)


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
