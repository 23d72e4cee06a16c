"""Gradient noise scale, stability limit, steps to target and the critical batch size."""

import random

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from batchsize_lit import RegressionDataModule
from batchsize_lit.__main__ import main
from batchsize_lit.science import (
    GradientNoiseScale,
    StepsToTarget,
    TwoBatchEstimator,
    critical_batch,
    exact_noise_scale,
    fit_critical_batch,
)

from fork.regression import SineRegressor
from helpers import CONFIGS, QUIET

W, B = 2.2, 0.4  # fixed weights away from the optimum, so that |G| is not tiny


def train_split():
    data = RegressionDataModule()
    data.setup()
    return data.train_set.tensors


def test_exact_noise_scale_matches_a_plain_numpy_computation():
    x, y = (t.double().numpy().ravel() for t in train_split())
    per_example = np.array([2 * (W * xi + B - yi) * np.array([xi, 1.0]) for xi, yi in zip(x, y, strict=True)])
    mean = per_example.mean(axis=0)
    sigma = np.cov(per_example.T, bias=True)
    hessian = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])
    got = exact_noise_scale(*train_split(), W, B)
    assert got["b_simple"] == pytest.approx(np.trace(sigma) / (mean @ mean), rel=1e-9)
    assert got["b_noise"] == pytest.approx(np.trace(hessian @ sigma) / (mean @ hessian @ mean), rel=1e-9)
    n = len(x)
    assert got["b_simple_finite"] == pytest.approx(n * got["b_simple"] / (got["b_simple"] + n - 1))


def test_two_batch_estimator_agrees_with_the_exact_value_within_10_percent():
    """Batches drawn with replacement, as the estimator assumes: 10000 pairs of batch 8 and 128, EMA 0.999.
    Over seeds 0 to 4 the ratio to the exact value spans 0.94 to 1.06."""
    x, y = (t.double().flatten() for t in train_split())
    features = torch.stack([x, torch.ones_like(x)], dim=1)
    per_example = 2 * (W * x + B - y).unsqueeze(1) * features
    generator = torch.Generator().manual_seed(0)
    estimator = TwoBatchEstimator(ema=0.999)
    for _ in range(10000):
        small = per_example[torch.randint(len(x), (8,), generator=generator)].mean(0)
        big = per_example[torch.randint(len(x), (128,), generator=generator)].mean(0)
        estimator.update(float(small @ small), 8, float(big @ big), 128)
    exact = exact_noise_scale(*train_split(), W, B)["b_simple"]
    assert estimator.b_simple == pytest.approx(exact, rel=0.10)


def test_critical_batch_fit_recovers_a_synthetic_curve():
    batches = [2**k for k in range(10)]
    steps = [250 * (1 + 37 / b) for b in batches]
    fit = fit_critical_batch(batches, steps)
    assert fit["b_crit"] == pytest.approx(37, rel=1e-9)
    assert fit["s_min"] == pytest.approx(250, rel=1e-9)
    assert fit["e_min"] == pytest.approx(250 * 37, rel=1e-9)
    noisy = [s * random.Random(k).uniform(0.97, 1.03) for k, s in enumerate(steps)]
    assert fit_critical_batch(batches, noisy)["b_crit"] == pytest.approx(37, rel=0.15)


class _Bound:
    """Calls a module's forward with other parameters, so that its loss method can run under torch.func."""

    def __init__(self, module, params):
        self.module, self.params = module, params

    def __call__(self, x):
        from torch.func import functional_call

        return functional_call(self.module, self.params, (x,))


class FakeTrainer:
    def __init__(self) -> None:
        self.global_step, self.callbacks, self.should_stop = 0, [], False


@pytest.mark.parametrize(
    ("mode", "values"), [("min", [0.3, 0.1, 0.2, 0.12, 0.11]), ("max", [0.7, 0.96, 0.9, 0.95, 0.97])]
)
def test_steps_to_target_is_the_first_step_from_which_it_stays_reached(mode, values):
    target = 0.15 if mode == "min" else 0.95
    tracker = _tracker_after(values, hold=2, monitor="val_acc", mode=mode, target=target)
    assert tracker.reached_step == 3 and tracker.stopped


@pytest.mark.parametrize("chunk_elements", [2, 7, 2**24])  # 1 and 3 examples a chunk, and the whole split at once
@pytest.mark.parametrize("max_hessian", [256, 0])  # the gradient rows whole (with the scatter), or one block a tensor
def test_per_example_noise_scale_equals_the_closed_form_on_the_linear_model(monkeypatch, chunk_elements, max_hessian):
    """Also when a large model takes its per-example gradients a few examples at a time: the moments merge exactly."""
    from batchsize_lit import LinearRegressor, science

    model = LinearRegressor()
    with torch.no_grad():
        model.linear.weight.fill_(W), model.linear.bias.fill_(B)
    monkeypatch.setattr(science, "CHUNK_ELEMENTS", chunk_elements)
    general = science.per_example_noise_scale(model, train_split(), max_hessian=max_hessian)
    exact = exact_noise_scale(*train_split(), model.linear.weight.item(), model.linear.bias.item())
    assert ("b_noise" in general) == (max_hessian > 0)
    for key in ["b_simple", "b_simple_finite", "grad_norm_sq", "trace_sigma"] + ["b_noise"] * (max_hessian > 0):
        assert general[key] == pytest.approx(exact[key], rel=1e-9, abs=1e-12), key


def test_two_batch_estimate_on_digits_is_within_15_percent_of_the_per_example_value():
    """An MLP on digits at its initial weights: two-batch estimates from 4000 pairs of batch 16 and 256 drawn with
    replacement, EMA 0.999, against the exact per-example value over the training split."""
    from torch.func import grad, vmap

    from batchsize_lit.problems.digits import DigitsDataModule, MLPClassifier
    from batchsize_lit.science import per_example_noise_scale

    seed_everything(0)
    model, data = MLPClassifier(hidden=32), DigitsDataModule()
    data.setup("fit")
    x, y = data.train_set.tensors
    exact = per_example_noise_scale(model, (x, y))["b_simple"]
    params = {name: p.detach() for name, p in model.named_parameters()}
    per_example = vmap(grad(lambda p, xi, yi: model.loss.__func__(_Bound(model, p), (xi[None], yi[None]))),
                       in_dims=(None, 0, 0))(params, x, y)  # fmt: skip
    flat = torch.cat([g.flatten(1) for g in per_example.values()], dim=1).double()
    generator = torch.Generator().manual_seed(0)
    estimator = TwoBatchEstimator(ema=0.999)
    for _ in range(4000):
        small = flat[torch.randint(len(x), (16,), generator=generator)].mean(0)
        big = flat[torch.randint(len(x), (256,), generator=generator)].mean(0)
        estimator.update(float(small @ small), 16, float(big @ big), 256)
    assert estimator.b_simple == pytest.approx(exact, rel=0.15)


def test_logged_b_simple_equals_the_exact_value_at_the_checkpointed_weights(workdir):
    callbacks = '[{"class_path": "batchsize_lit.science.GradientNoiseScale"}]'
    main_args = ["fit", "--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=4"]
    main([*main_args, f"--trainer.callbacks={callbacks}", "--early_stopping.patience=null"])
    run = workdir / "lightning_logs/b128/version_0"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Scalars("gns/b_simple")
    assert len(logged) == 4 and "gns/b_noise" in events.Tags()["scalars"]
    state = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    exact = exact_noise_scale(*train_split(), state["linear.weight"].item(), state["linear.bias"].item())
    assert logged[-1].value == pytest.approx(exact["b_simple"], rel=1e-5)


def test_two_batch_estimate_for_another_model_under_gradient_accumulation(tmp_path):
    seed_everything(0)
    noise = GradientNoiseScale()
    trainer = Trainer(accelerator="cpu", max_epochs=3, accumulate_grad_batches=4, callbacks=[noise], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(SineRegressor(), RegressionDataModule(batch_size=8))
    assert noise.estimator.grad_norm_sq is not None and noise.last["b_simple"] > 0


@pytest.mark.filterwarnings("ignore:`LinearRegressor.configure_optimizers` will be overridden")  # by --optimizer
def test_summary_states_the_stable_lr_and_warns_above_it(workdir, capsys):
    main(["fit", "--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=1", "--model.lr=0.5"])
    out = capsys.readouterr()
    assert "max stable SGD lr 2/λ_max = 0.785" in out.out
    assert "warning" not in out.err
    main(["fit", "--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=1", "--model.lr=0.9"])
    assert "warning: lr 0.9 is at or above this problem's stable limit lr_max_stable = 0.785" in capsys.readouterr().err
    # The limit is plain SGD's: Adam at the same rate gets no warning, and the summary says why.
    main(["fit", "--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=1", "--optimizer=Adam",
          "--optimizer.lr=0.9"])  # fmt: skip
    out = capsys.readouterr()
    assert "max stable SGD lr 2/λ_max = 0.785 (the optimizer is not plain SGD)" in out.out
    assert "warning: lr" not in out.err


def test_critical_batch_study_reports_b_crit(workdir, capsys):
    grid = '{"data.batch_size": [8, 64, 512], "model.lr": [0.1, 0.4]}'  # the shipped config's base, a smaller grid
    args = ["--config", str(CONFIGS / "study_critical_batch.yaml"), "--name", "crit", "--grid", grid]
    main(["study", *args])
    out = capsys.readouterr().out
    assert "critical batch size B_crit = " in out
    assert (workdir / "lightning_logs/crit/steps_to_target.png").is_file()


def _rows(steps: dict[tuple[int, float], list[int | None]], status: dict | None = None) -> list[dict]:
    """results.csv rows for a critical-batch grid: {(batch, lr): [steps per seed]}; status {(batch, lr, seed): ...}."""
    return [{"global_batch_size": batch, "lr_effective": lr, "seed": seed, "steps_to_target": s,
             "samples_to_target": None if s is None else s * batch,
             "status": (status or {}).get((batch, lr, seed), "ok")}
            for (batch, lr), per_seed in steps.items() for seed, s in enumerate(per_seed)]  # fmt: skip


def test_a_setting_where_a_seed_diverged_does_not_qualify():
    """lr 0.4 at batch 64 is fastest on the seeds that finished, but its third seed diverged: lr 0.1 is the best."""
    grid = {(8, 0.1): [100, 110, 105], (64, 0.1): [60, 62, 61], (64, 0.4): [30, 31, None], (512, 0.1): [50, 52, 51]}
    critical = critical_batch(_rows(grid, {(64, 0.4, 2): "diverged"}), resamples=10)
    chosen = {p["batch_size"]: (p["lr"], p["runs"]) for p in critical["points"]}
    assert chosen[64] == (0.1, 3)


def _tracker_after(values: list[float], hold: int, **kwargs) -> StepsToTarget:
    """A StepsToTarget fed these checks, one a step, then told that training ended; ``stopped`` says if it asked."""
    tracker, trainer = StepsToTarget(**{"monitor": "val_loss", "mode": "min", "hold": hold, **kwargs}), FakeTrainer()
    tracker.on_train_start(trainer, torch.nn.Linear(1, 1))
    for step, value in enumerate(values):
        trainer.global_step = step
        tracker._check(trainer, torch.nn.Linear(1, 1), value)
    tracker.on_train_end(trainer, torch.nn.Linear(1, 1))
    tracker.stopped = trainer.should_stop
    return tracker


def test_a_target_still_within_its_hold_when_training_ends_is_not_reached():
    """Reached at the last 3 checks of the run, with a hold of 5: max_steps cut it short, it does not count."""
    assert _tracker_after([0.5, 0.4, 0.1, 0.1, 0.1], hold=5, target=0.2).reached_step is None
    assert _tracker_after([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], hold=5, target=0.2).reached_step == 1


def test_several_targets_are_recorded_in_one_run_easiest_first():
    tracker = _tracker_after([0.9, 0.45, 0.3, 0.35, 0.2, 0.15, 0.1, 0.1], hold=2, target=[0.25, 0.5, 0.4])
    assert tracker.targets == [0.5, 0.4, 0.25]
    assert [r["steps"] for r in tracker.results] == [1, 2, 4]
    columns = tracker.columns()
    assert columns["steps_to_target"] == 4 and columns["target"] == 0.25
    assert (columns["target_1"], columns["steps_to_target_1"], columns["steps_to_target_3"]) == (0.5, 1, 4)


def test_steps_to_target_follows_early_stopping_and_names_a_metric_never_logged(workdir, capsys):
    """Without its own monitor it watches early stopping's (val_acc, mode max, on digits); a monitor that is not
    logged ends the fit in one line instead of never being reached."""
    callback = '[{"class_path": "batchsize_lit.science.StepsToTarget", "init_args": {"target": [0.5, 0.8], "hold": 1}}]'
    args = ["fit", "--config", str(CONFIGS / "digits.yaml"), *QUIET, "--trainer.max_epochs=2"]
    main([*args, "--early_stopping.monitor=val_acc", "--early_stopping.mode=max", f"--trainer.callbacks={callback}"])
    run = workdir / "lightning_logs/digits/version_0"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert {"target/val_acc_1", "target/val_acc_2", "target/steps_1"} <= set(events.Tags()["scalars"])
    assert events.Scalars("target/val_acc_2")[0].value == pytest.approx(0.8)
    bad = callback.replace('"hold": 1', '"hold": 1, "monitor": "val_accuracy"')
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, f"--trainer.callbacks={bad}"])
    line = str(exit_info.value.code)
    assert line.startswith("error: StepsToTarget.monitor='val_accuracy' is never logged") and "\n" not in line


def test_the_critical_batch_plot_draws_a_bootstrap_interval_that_misses_its_estimate(tmp_path):
    """A percentile bootstrap over a few cells may not hold the point estimate (here B_crit 30 with an interval
    of 32 to 40): the plot draws the interval from its ends; error bars from the estimate raised, and the study
    ended with matplotlib's error."""
    from matplotlib.image import imread

    from batchsize_lit.plots import plot_critical_by_target

    fits = [
        {"target": 0.2, "fit": {"b_crit": 30.0, "b_crit_low": 32.0, "b_crit_high": 40.0}},
        {"target": 0.1, "fit": {"b_crit": 12.0, "b_crit_low": 8.0, "b_crit_high": 20.0, "b_simple": 9.0,
                                "b_simple_q1": 7.0, "b_simple_q3": 11.0}},
    ]  # fmt: skip
    path = plot_critical_by_target(fits, tmp_path, "val_loss")
    assert path == tmp_path / "critical_batch_by_target.png" and imread(path).shape[0] > 100
