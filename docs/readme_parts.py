"""README parts generated from the committed study results under docs/results/ (run `cog -r README.md`)."""

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from batchsize_lit.science import critical_batch
from batchsize_lit.study.report import SHOWN, format_table, logged_metrics

RESULTS = Path(__file__).resolve().parent / "results"


def _value(text: str) -> Any:
    """A results.csv field as the study wrote it: empty is None, numbers are numbers, the rest text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def rows(study: str) -> list[dict[str, Any]]:
    """The committed results.csv of a study."""
    with open(RESULTS / study / "results.csv", newline="") as file:
        return [{key: _value(value) for key, value in row.items()} for row in csv.DictReader(file)]


def critical(study: str) -> list[dict[str, Any]]:
    """The committed critical_batch.csv of a study: one row per target, easiest first."""
    with open(RESULTS / study / "critical_batch.csv", newline="") as file:
        return [{key: _value(value) for key, value in row.items()} for row in csv.DictReader(file)]


def g(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant figures, without an exponent for everyday sizes."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.{digits}g}"
    if "e" in text and abs(value) < 1e6:
        text = f"{value:.0f}"
    return text


def block(text: str) -> str:
    """A fenced code block."""
    return f"```\n{text}\n```\n"


def study_table(study: str) -> str:
    """The table the study prints, as a code block."""
    found = rows(study)
    shown = ["cell", *SHOWN.split()[1:-1], *logged_metrics(found), "status"]
    if all(row.get("lr_effective") in (None, row.get("lr")) for row in found):
        shown.remove("lr_effective")
    monitor = found[0]["monitor"]
    table = format_table(found, [c for c in shown if any(row.get(c) is not None for row in found)])
    return block(f"{table}\nmonitor_best is the best {monitor} of each run")


def columns_table(study: str, columns: list[str]) -> str:
    return block(format_table(rows(study), columns))


def points(study: str, index: int = -1) -> list[dict[str, Any]]:
    """The best lr per batch size and its mean steps at one target (the hardest by default)."""
    found = rows(study)
    count = len(critical(study))
    suffix = f"_{(index % count) + 1}" if count > 1 else ""
    return critical_batch(found, resamples=1, suffix=suffix)["points"]


def critical_output(study: str) -> str:
    """What the study prints for its hardest target: the best lr per batch size and the fit."""
    fit = critical(study)[-1]
    shown = [{"global_batch_size": p["batch_size"], "lr_effective": p["lr"], **p} for p in points(study)]
    table = format_table(shown, ["global_batch_size", "lr_effective", "runs", "steps_to_target", "samples_to_target"])
    return block(f"{table}\n{fit_line(fit)}")


def fit_line(fit: dict[str, Any]) -> str:
    return (
        f"B_crit = {g(fit['b_crit'])} (95% bootstrap over seeds {g(fit['b_crit_low'])} to {g(fit['b_crit_high'])});"
        f" S_min = {g(fit['s_min'], 4)} steps; E_min = {g(fit['e_min'], 4)} samples"
    )


def by_target_table(studies: dict[str, str]) -> str:
    """A markdown table of B_crit, S_min and the noise scales at each target of each study."""
    lines = [
        "| problem | target | B_crit (95% bootstrap) | S_min | B_simple at target, median (quartiles) |"
        " B_noise at target, median (quartiles) | B_crit / B_simple |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, study in studies.items():
        for fit in critical(study):
            noise = f"{g(fit['b_noise'])} ({g(fit['b_noise_q1'])} to {g(fit['b_noise_q3'])})" if fit["b_noise"] else ""
            lines.append(
                f"| {label} | {g(fit['target'], 4)} | {g(fit['b_crit'])} ({g(fit['b_crit_low'])} to"
                f" {g(fit['b_crit_high'])}) | {g(fit['s_min'])} | {g(fit['b_simple'])} ({g(fit['b_simple_q1'])} to"
                f" {g(fit['b_simple_q3'])}) | {noise} | {g(fit['ratio'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def setting_steps(study: str, batch: int, lr: float, index: int = -1) -> list[int | None]:
    """steps to target of each seed at one setting (None where the target was not held)."""
    count = len(critical(study))
    key = f"steps_to_target_{(index % count) + 1}" if count > 1 else "steps_to_target"
    return [
        row[key] for row in rows(study) if row["global_batch_size"] == batch and math.isclose(row["lr_effective"], lr)
    ]


def mean_sd(values: list[float]) -> str:
    """mean ± sd of the values (the sd over seeds)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{g(statistics.fmean(values))} ± {g(sd, 2)}"


def seeds(study: str) -> int:
    return len({row["seed"] for row in rows(study)})


def cells(study: str) -> int:
    return len(rows(study))


def progress_and_table(study: str) -> str:
    """The study's progress lines (without the ETA) and its table, as it printed them."""
    from batchsize_lit.study import progress_line

    found = rows(study)
    lines = [f"[{k}/{len(found)}] {progress_line(row)}" for k, row in enumerate(found, 1)]
    return "```\n" + "\n".join(lines) + "\n" + study_table(study)[len("```\n") :]


def seed_prose() -> str:
    """The study_seed paragraph: how far each batch size is from the noise floor, per epoch and per step."""
    found = {row["cell"]: row for row in rows("study_seed")}
    small, big = found["bs16_ep5"], found["bs128_ep5"]
    floor, lsq = small["noise_floor"], small["lsq_train_mse"]
    per_epoch = {row["batch_size"]: row["steps"] // row["epochs_run"] for row in found.values()}
    return (
        f"What it shows: per epoch, batch 16 ({per_epoch[16]} updates an epoch) is at"
        f" {g(small['train_loss'] / floor, 2)}× the floor after 5 epochs, while batch 128 ({per_epoch[128]} updates)"
        f" is still at {g(big['train_loss'] / floor, 2)}× after 5 epochs and"
        f" {g(found['bs128_ep20']['train_loss'] / floor, 2)}× after 20. Per optimizer step the order flips: batch 128"
        " is lower at every step count, because each of its steps averages 8× more samples. Given enough epochs"
        f" both approach the same floor, noise_std² = {g(floor, 2)} (the least-squares fit of this training split"
        f" reaches {g(lsq, 2)}). One seed: the study's numbers are one draw of the shuffled order each.\n"
    )
