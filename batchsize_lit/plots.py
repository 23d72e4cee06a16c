"""Charts of a study from plain rows: loss curves by epoch, step and samples, steps to target and B_crit by target."""

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

AXES = {"epoch": "epoch", "step": "optimizer steps", "samples": "samples seen"}
# More curves than this on one chart hide each other: a grid beyond it shows each batch size at its best lr.
MAX_CURVES = 8


def mean_curve(histories: list[list[dict[str, float]]], x: str, y: str = "train_loss") -> dict[str, list[float]]:
    """The curve of ``y`` against ``x``, averaged over seeds, with its lowest and highest seed, up to the shortest
    run; epochs where some run did not record ``y`` (no validation that epoch) are left out."""
    length = min(len(history) for history in histories)
    curve: dict[str, list[float]] = {"x": [], "mean": [], "low": [], "high": []}
    for i in range(length):
        values = [history[i].get(y) for history in histories]
        if any(value is None or not math.isfinite(value) for value in values):
            continue
        curve["x"].append(histories[0][i][x])
        curve["mean"].append(sum(values) / len(values))
        curve["low"].append(min(values))
        curve["high"].append(max(values))
    return curve


def panels_of(curves: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The charts' panels: one per max_epochs where it varies (else the run lengths hide the shorter runs' curves
    under the longer ones'), and in each at most MAX_CURVES curves: beyond that, each batch size at its best lr
    (the fewest mean steps to target, else the best mean monitored value)."""
    by_epochs: dict[Any, list[dict[str, Any]]] = {}
    for curve in curves:
        by_epochs.setdefault(curve.get("max_epochs"), []).append(curve)
    panels = []
    for epochs, members in by_epochs.items():
        if len(members) > MAX_CURVES:
            best: dict[Any, dict[str, Any]] = {}
            for curve in members:
                key = curve.get("batch_size")
                if key not in best or curve.get("score", math.inf) < best[key].get("score", math.inf):
                    best[key] = curve
            members = [{**curve, "name": f"batch {key}, best lr {curve.get('lr'):.3g}"} for key, curve in best.items()]
        title = f"max_epochs {epochs}" if len(by_epochs) > 1 else ""
        panels.append((title, members))
    return panels


def plot_curves(
    curves: list[dict[str, Any]], folder: Path, floor: float | None = None, monitor: str | None = None
) -> list[Path]:
    """train_loss_by_epoch.png, <monitor>_by_epoch.png and train_loss_by_step_and_samples.png: each curve the mean
    over its seeds, with a band from the lowest to the highest seed.

    Args:
        curves: Each a dict with ``name`` and ``histories`` (lists of per-epoch rows with epoch, step, samples,
            train_loss and the monitored metric, one per seed of one setting), and if known ``batch_size``, ``lr``,
            ``max_epochs`` and ``score`` (lower is better), which pick the panels and the curves of a large grid.
        folder: Where the PNG files go.
        floor: A loss floor to draw as a dashed line, if the problem has one.
        monitor: The monitored metric, plotted by epoch where the histories record it.
    """
    curves = [{**c, "histories": [h for h in c["histories"] if h and "train_loss" in h[0]]} for c in curves]
    panels = panels_of([curve for curve in curves if curve["histories"]])
    charts = [("train_loss_by_epoch", "train_loss", ["epoch"]), ("train_loss_by_step_and_samples", "train_loss",
              ["step", "samples"])]  # fmt: skip
    if monitor and monitor != "train_loss" and any(monitor in row for c in curves for h in c["histories"] for row in h):
        file_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in monitor)  # val/loss: val_loss
        charts.insert(1, (f"{file_name}_by_epoch", monitor, ["epoch"]))
    return [_chart(folder, name, y, axes, panels, floor if "loss" in y else None) for name, y, axes in charts]


def _chart(folder: Path, name: str, y: str, axes: list[str], panels: list, floor: float | None) -> Path:
    """One PNG: a row of panels per entry of ``panels_of``, a column per x axis."""
    figure, grid = plt.subplots(len(panels), len(axes), figsize=(6.4 * len(axes), 4.0 * len(panels) + 0.4),
                                squeeze=False, sharey=True)  # fmt: skip
    banded = False
    for (row, (title, members)), (column, x) in itertools.product(enumerate(panels), enumerate(axes)):
        panel = grid[row][column]
        ordered = sorted(members, key=lambda c: (c.get("batch_size") or 0, c.get("lr") or 0))
        for curve, marker in zip(ordered, itertools.cycle("os^Dvx*P"), strict=False):
            points = mean_curve(curve["histories"], x, y)
            if not points["x"]:
                continue
            seeds = len(curve["histories"])
            label = curve["name"] + (f" ({seeds} seeds)" if seeds > 1 else "")
            (line,) = panel.plot(points["x"], points["mean"], marker=marker, markersize=4,
                                 markevery=max(1, len(points["x"]) // 12), label=label)  # fmt: skip
            if seeds > 1:
                banded = True
                panel.fill_between(points["x"], points["low"], points["high"], color=line.get_color(), alpha=0.15)
        if floor is not None:
            panel.axhline(floor, color="gray", linestyle="--", label="noise floor")
        if "loss" in y:
            panel.set_yscale("log")
        panel.set_xlabel(AXES[x])
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        if x == "samples":
            panel.set_xscale("log")
        panel.set_title(title, fontsize="medium")
        panel.set_ylabel("train loss, epoch mean" if y == "train_loss" else y)
        panel.grid(True, which="both", alpha=0.3)
        panel.legend(fontsize="x-small")
    seeds = "\nmean over seeds, band from the lowest to the highest seed" if banded else ""
    title = f"{folder.name}: {y} by {' and by '.join(AXES[x] for x in axes)}{seeds}"
    return _save(figure, folder / f"{name}.png", title, fontsize="medium")


def plot_critical_batch(critical: dict[str, Any], folder: Path) -> Path:
    """steps_to_target.png: steps and examples to the target against batch size, log-log, with the fit."""
    points, fit = critical["points"], critical["fit"]
    batches = [p["batch_size"] for p in points]
    steps = [p["steps_to_target"] for p in points]
    samples = [p["samples_to_target"] for p in points]
    grid = [batches[0] * (batches[-1] / batches[0]) ** (i / 99) for i in range(100)]
    fitted = [fit["s_min"] * (1 + fit["b_crit"] / b) for b in grid]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12.8, 4.6))
    left.plot(batches, steps, "o", label="best lr per batch size (seed mean)")
    left.plot(grid, fitted, "-", label=f"S_min(1 + B_crit/B), B_crit = {fit['b_crit']:.3g}")
    left.plot(grid, [steps[0] * batches[0] / b for b in grid], "--", color="gray", label="perfect scaling, S ∝ 1/B")
    left.axhline(fit["s_min"], color="gray", linestyle=":", label=f"S_min = {fit['s_min']:.3g}")
    left.set_ylabel("optimizer steps to target")
    right.plot(batches, samples, "o", label="best lr per batch size (seed mean)")
    right.plot(grid, [s * b for s, b in zip(fitted, grid, strict=True)], "-", label="S_min(B + B_crit)")
    right.axhline(fit["e_min"], color="gray", linestyle=":", label=f"E_min = {fit['e_min']:.3g}")
    right.set_ylabel("samples to target")
    for panel in (left, right):
        panel.set_xscale("log", base=2)
        panel.set_yscale("log")
        panel.set_xlabel("global batch size B")
        panel.axvline(fit["b_crit"], color="red", alpha=0.3, label="B_crit")
        if "b_simple" in fit:  # the noise scales McCandlish et al. predict B_crit to be close to
            panel.axvline(fit["b_simple"], color="purple", alpha=0.4, linestyle="-.", label="B_simple at target")
        if "b_noise" in fit:
            panel.axvline(fit["b_noise"], color="green", alpha=0.4, linestyle="--", label="B_noise at target")
        panel.grid(True, which="both", alpha=0.3)
        panel.legend(fontsize="small")
    target = critical.get("target")
    at = f" {target:.4g}" if isinstance(target, float) else ""
    title = f"{folder.name}: steps and samples to the validation target{at}"
    return _save(figure, folder / "steps_to_target.png", title)


def plot_critical_by_target(criticals: list[dict[str, Any]], folder: Path, monitor: str | None) -> Path:
    """critical_batch_by_target.png: B_crit (95% bootstrap interval) and the median B_simple and B_noise at the
    target (quartiles) against the target, as McCandlish et al. plot the critical batch against the loss."""
    figure, panel = plt.subplots(figsize=(6.8, 4.6))
    targets = [c["target"] for c in criticals]
    series = [("b_crit", "B_crit (95% bootstrap)", "o-", "_low", "_high"),
              ("b_simple", "B_simple at target (median, quartiles)", "s--", "_q1", "_q3"),
              ("b_noise", "B_noise at target (median, quartiles)", "^:", "_q1", "_q3")]  # fmt: skip
    for offset, (key, label, style, low, high) in zip((1.0, 0.985, 1.015), series, strict=True):
        found = [(t * offset, c["fit"]) for t, c in zip(targets, criticals, strict=True) if key in c["fit"]]
        if not found:
            continue
        xs, mids = [x for x, _ in found], [f[key] for _, f in found]
        (line,) = panel.plot(xs, mids, style, label=label)
        # The interval as lines from its ends: a bootstrap interval of a few cells need not hold the estimate,
        # which error bars (lengths from the estimate) cannot draw.
        lows, highs = [f[key + low] for _, f in found], [f[key + high] for _, f in found]
        panel.vlines(xs, lows, highs, color=line.get_color())
    panel.set_yscale("log")
    panel.set_xlabel(f"target {monitor or ''}".strip())
    panel.set_ylabel("batch size")
    panel.grid(True, which="both", alpha=0.3)
    panel.legend(fontsize="small")
    title = f"{folder.name}: critical batch and noise scales against the target"
    return _save(figure, folder / "critical_batch_by_target.png", title)


def _save(figure: Any, path: Path, *title: Any, **title_settings: Any) -> Path:
    """Title the figure, lay it out, write it as a PNG and free it."""
    figure.suptitle(*title, **title_settings)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
