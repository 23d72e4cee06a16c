"""Charts of a study from plain rows: loss curves by epoch, step and samples, and steps to target by batch size."""

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

AXES = {"epoch": "epoch", "step": "optimizer steps", "samples": "samples seen"}


def mean_curve(histories: list[list[dict[str, float]]], x: str) -> tuple[list[float], list[float]]:
    """The train-loss curve averaged over seeds, up to the shortest run."""
    length = min(len(history) for history in histories)
    xs = [histories[0][i][x] for i in range(length)]
    ys = [sum(history[i]["train_loss"] for history in histories) / len(histories) for i in range(length)]
    return xs, ys


def plot_curves(curves: list[dict[str, Any]], folder: Path, floor: float | None = None) -> list[Path]:
    """train_loss_by_epoch.png and train_loss_by_step_and_samples.png: one line per curve, its histories averaged.

    Args:
        curves: Each a dict with ``name`` and ``histories``: lists of per-epoch rows with epoch, step, samples and
            train_loss (the seeds of one setting).
        folder: Where the PNG files go.
        floor: A loss floor to draw as a dashed line, if the problem has one.
    """
    groups = {curve["name"]: [h for h in curve["histories"] if h and "train_loss" in h[0]] for curve in curves}
    groups = {name: histories for name, histories in groups.items() if histories}
    paths = []
    for name, axes in [("train_loss_by_epoch", ["epoch"]), ("train_loss_by_step_and_samples", ["step", "samples"])]:
        figure, panels = plt.subplots(1, len(axes), figsize=(6.4 * len(axes), 4.4), squeeze=False)
        for panel, x in zip(panels[0], axes, strict=True):
            # Longest runs first, so a shorter run that shares their start stays visible on top.
            ordered = sorted(groups.items(), key=lambda item: -min(len(h) for h in item[1]))
            for (cell, histories), marker in zip(ordered, itertools.cycle("os^Dvx*"), strict=False):
                xs, ys = mean_curve(histories, x)
                panel.plot(xs, ys, marker=marker, markersize=4, markevery=max(1, len(xs) // 20), label=cell)
            if floor is not None:
                panel.axhline(floor, color="gray", linestyle="--", label="noise floor")
            panel.set_yscale("log")
            panel.set_xlabel(AXES[x])
            panel.xaxis.set_major_locator(MaxNLocator(integer=True))
            panel.set_ylabel("mean train loss of the epoch")
            if x == "samples":
                panel.set_xscale("log")
            panel.grid(True, which="both", alpha=0.3)
            if len(groups) <= 12:  # beyond that a legend hides the curves
                panel.legend(fontsize="small")
        figure.suptitle(f"{folder.name}: train loss by {' and by '.join(AXES[x] for x in axes)} ({len(groups)} cells)")
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


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
        if "b_simple" in fit:  # the noise scale McCandlish et al. predict B_crit to be close to
            panel.axvline(fit["b_simple"], color="purple", alpha=0.4, linestyle="-.", label="B_simple at target")
        panel.grid(True, which="both", alpha=0.3)
        panel.legend(fontsize="small")
    figure.suptitle(f"{folder.name}: steps and samples to the validation target")
    figure.tight_layout()
    path = folder / "steps_to_target.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
