"""A study's report: results.csv, the tables printed, mean ± sd over seeds, the plots and the critical batch size."""

import csv
import importlib
import math
import statistics
from pathlib import Path
from typing import Any

from batchsize_lit.disk import whole_file
from batchsize_lit.problem import report_columns
from batchsize_lit.science import critical_batch_by_target

# The documented columns, in this order, with the columns the problem's run report names in advance (see
# batchsize_lit.problem.Reports) after test_loss; whatever else a cell recorded (the model's logged metrics, the
# problem's reference facts and other report columns) follows them.
COLUMNS = [
    "cell",
    "batch_size",
    "global_batch_size",
    "max_epochs",
    "lr",
    "lr_effective",
    "seed",
    "epochs_run",
    "steps",
    "samples",
    "train_loss",
    "monitor",
    "monitor_best",
    "best_epoch",
    "val_loss",
    "test_loss",
    "noise_floor",
    "steps_to_target",
    "samples_to_target",
    "b_simple_at_target",
    "b_noise_at_target",
    "b_simple",
    "b_noise",
    "seconds",
    "status",
]
PROBLEM_AFTER = "test_loss"  # the column after which the problem's named report columns go
SHOWN = "cell batch_size max_epochs lr lr_effective seed epochs_run steps train_loss monitor_best test_loss status"
# critical_batch.csv: per target, the fit and the noise scales measured at that target (median and quartiles).
CRITICAL_COLUMNS = [
    "target",
    "batch_sizes",
    "b_crit",
    "b_crit_low",
    "b_crit_high",
    "s_min",
    "e_min",
    "b_simple",
    "b_simple_q1",
    "b_simple_q3",
    "b_simple_finite",
    "b_simple_finite_q1",
    "b_simple_finite_q3",
    "b_noise",
    "b_noise_q1",
    "b_noise_q3",
    "ratio",
]


def with_problem(columns: list[str], problem: list[str]) -> list[str]:
    """``columns`` with the problem's named report columns after test_loss, those that no documented column is."""
    at = columns.index(PROBLEM_AFTER) + 1
    return [*columns[:at], *(column for column in problem if column not in COLUMNS), *columns[at:]]


def columns_of(rows: list[dict[str, Any]], settings: list[str] = (), problem: list[str] = ()) -> list[str]:
    """The cell, the grid's own settings, the documented columns any row has (with the ``problem``'s named report
    columns), then the others in order of first appearance."""
    documented = with_problem(COLUMNS, problem)
    present = {key for row in rows for key in row if key != "history"}
    first = ["cell", *settings]
    extra = [key for row in rows for key in row if key not in documented and key not in first and key != "history"]
    return first + [column for column in documented[1:] if column in present] + list(dict.fromkeys(extra))


def write_csv(rows: list[dict[str, Any]], path: Path, settings: list[str] = (), problem: list[str] = ()) -> None:
    with whole_file(path, newline="") as file:  # whole or not at all; a full disk is one line naming it
        writer = csv.DictWriter(file, columns_of(rows, settings, problem), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def problem_columns(base: dict[str, Any] | None, grid: dict[str, list[Any]], defaults: tuple[Any, ...]) -> list[str]:
    """The report columns that a study's model and data classes name in advance: the default classes', and those
    of the classes its base or grid names by a full class_path."""
    named = []
    for part in ("model", "data"):
        named += [(base or {}).get(part), *grid.get(part, []), *grid.get(f"{part}.class_path", [])]
    paths = [value.get("class_path") if isinstance(value, dict) else value for value in named]
    return report_columns(*defaults, *(imported(path) for path in paths if isinstance(path, str)))


def imported(path: str) -> Any:
    """The object a full dotted path names, or None where it names none (a short class name, a typo: the cells
    report those)."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) if module else None
    except Exception:  # whatever importing it raises, the cells meet it and say so in one line
        return None


def report(
    rows: list[dict[str, Any]],
    folder: Path,
    groups: dict[str, str],
    settings: list[str] = (),
    problem: list[str] = (),
) -> None:
    """results.csv, the table, mean ± sd over seeds, the plots and, where steps to target were recorded, the
    critical batch size per target (critical_batch.csv). ``groups`` maps each cell to its name without the seed;
    ``settings`` are grid keys that no documented column holds (a fork's ``model.hidden``), shown after the cell;
    ``problem`` are the report columns the problem names in advance, shown after the losses."""
    from batchsize_lit.plots import plot_curves  # matplotlib only when a report is made

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(rows, folder / "results.csv", settings, problem)
    monitor = next((row["monitor"] for row in rows if row.get("monitor")), None)
    print(format_table(rows, shown_columns(rows, settings, problem)))
    by_group: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault(groups.get(row["cell"], row["cell"]), []).append(row)
    if any(len(members) > 1 for members in by_group.values()):
        print("\nMean ± sd over seeds:")
        keys = ["epochs_run", "train_loss", "monitor_best", "test_loss", *logged_metrics(rows)]
        keys = [key for key in dict.fromkeys(keys) if any(r.get(key) is not None for r in rows)]
        print(format_table(summarize(by_group, keys), ["cell", "runs", *keys]))
    if monitor:
        print(f"monitor_best is the best {monitor} of each run")
    floors = {row["noise_floor"] for row in rows if row.get("noise_floor") is not None}
    paths = plot_curves(curves_of(by_group, monitor), folder, floors.pop() if len(floors) == 1 else None, monitor)
    paths += report_critical_batch(rows, folder, monitor)
    for path in paths:
        print(f"plot: {path}")
    print(f"results: {folder / 'results.csv'}\ntensorboard --logdir {folder}")


def shown_columns(rows: list[dict[str, Any]], settings: list[str] = (), problem: list[str] = ()) -> list[str]:
    """The printed table's columns: SHOWN with the grid's settings and the problem's named report columns, then the
    metrics the model logged; only those some row has, and lr_effective only where lr_scaling changed the rate."""
    shown = ["cell", *settings, *with_problem(SHOWN.split(), problem)[1:-1], *logged_metrics(rows), "status"]
    if all(row.get("lr_effective") in (None, row.get("lr")) for row in rows):
        shown.remove("lr_effective")
    return [column for column in dict.fromkeys(shown) if any(row.get(column) is not None for row in rows)]


def logged_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The validation and test metrics the model logged beyond the losses (val_acc, test_acc), for the table."""
    names = [key for row in rows for key in row if key.startswith(("val_", "test_")) and "_at_" not in key]
    return [name for name in dict.fromkeys(names) if name not in ("val_loss", "test_loss")]


def curves_of(by_group: dict[str, list[dict[str, Any]]], monitor: str | None) -> list[dict[str, Any]]:
    """The plots' curves: each setting's histories, its batch size, lr and max_epochs, and a score (lower is
    better: the mean steps to target where every seed reached it, else the mean best monitored value)."""
    curves = []
    for name, members in by_group.items():
        first = members[0]
        steps = [r.get("steps_to_target") for r in members]
        best = [r.get("monitor_best") for r in members if r.get("monitor_best") is not None]
        if "steps_to_target" in first:
            score = statistics.fmean(steps) if None not in steps else math.inf
        else:
            sign = -1 if monitor and monitor.endswith(("acc", "accuracy")) else 1  # a max-mode monitor
            score = sign * statistics.fmean(best) if best else math.inf
        curves.append({"name": name, "histories": [r["history"] for r in members if r.get("history")],
                       "batch_size": first.get("global_batch_size") or first.get("batch_size"),
                       "lr": first.get("lr_effective") or first.get("lr") or 0.0,
                       "max_epochs": first.get("max_epochs"), "score": score})  # fmt: skip
    return curves


def report_critical_batch(rows: list[dict[str, Any]], folder: Path, monitor: str | None) -> list[Path]:
    """For each target: the best lr per batch size, B_crit with its interval, S_min, E_min and the noise scales
    at the target, printed and written to critical_batch.csv; the fit's plot for the hardest target and, with
    several targets, B_crit, B_simple and B_noise against the target."""
    from batchsize_lit.plots import plot_critical_batch, plot_critical_by_target

    criticals = critical_batch_by_target(rows)
    if not criticals:
        return []
    for critical in criticals:
        # The fit is over the global batch size and the rate in use, whatever devices, accumulation or lr_scaling.
        points = [{"global_batch_size": p["batch_size"], "lr_effective": p["lr"], **p} for p in critical["points"]]
        target = critical["target"]
        print(f"\ntarget {monitor} {target:.4g}:" if isinstance(target, float) else "")
        columns = ["global_batch_size", "lr_effective", "runs", "steps_to_target", "samples_to_target"]
        print(format_table(points, columns))
        print(critical_line(critical["fit"]))
    write_critical_csv(criticals, folder / "critical_batch.csv")
    paths = [plot_critical_batch(criticals[-1], folder)]
    if len(criticals) > 1:
        paths.append(plot_critical_by_target(criticals, folder, monitor))
    print(f"critical batch per target: {folder / 'critical_batch.csv'}")
    return paths


def critical_line(fit: dict[str, float]) -> str:
    """B_crit with its interval, S_min and E_min, and the noise scales at the target, in words."""
    line = (
        f"critical batch size B_crit = {fit['b_crit']:.3g} (95% bootstrap over seeds {fit['b_crit_low']:.3g} to"
        f" {fit['b_crit_high']:.3g}); S_min = {fit['s_min']:.4g} steps; E_min = {fit['e_min']:.4g} samples"
        " (S = S_min·(1 + B_crit/B), best lr per batch size)"
    )
    for name, label in (("b_simple", "B_simple"), ("b_noise", "B_noise")):
        if name in fit:
            line += (
                f"\n{label} at the target = {fit[name]:.3g} (median of those runs; quartiles {fit[name + '_q1']:.3g}"
                f" to {fit[name + '_q3']:.3g}); B_crit / {label} = {fit['b_crit'] / fit[name]:.3g}"
            )
    return line


def write_critical_csv(criticals: list[dict[str, Any]], path: Path) -> None:
    """critical_batch.csv: one row per target (CRITICAL_COLUMNS)."""
    rows = [{"target": c["target"], "batch_sizes": len(c["points"]), **c["fit"]} for c in criticals]
    with whole_file(path, newline="") as file:
        writer = csv.DictWriter(file, CRITICAL_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def summarize(groups: dict[str, list[dict[str, Any]]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean ± sd of each key over the members of each group."""
    summary = []
    for name, members in groups.items():
        entry: dict[str, Any] = {"cell": name, "runs": len(members)}
        for key in keys:
            values = [r.get(key) for r in members]
            values = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                entry[key] = f"{statistics.fmean(values):.4g} ± {sd:.2g}"
        summary.append(entry)
    return summary


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.5g}"
        return "" if value is None else str(value)

    table = [columns] + [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in table)
    return "\n".join(line.rstrip() for line in lines)
