"""README parts generated from the study results and benchmark records under docs/results/ (cog -r README.md)."""

import csv
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from batchsize_lit.__main__ import DEFAULT_DATA, DEFAULT_MODEL
from batchsize_lit.science import critical_batch
from batchsize_lit.study.report import format_table, problem_columns, shown_columns

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


def missing(*studies: str) -> str:
    """A line saying which studies have no committed results, or "" when all have."""
    absent = [study for study in studies if not (RESULTS / study / "results.csv").is_file()]
    return f"Not run for this README yet: {', '.join(absent)} (no results under docs/results/).\n" if absent else ""


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
    config = yaml.safe_load((CONFIGS / f"{study}.yaml").read_text())
    problem = problem_columns(config.get("base"), config["grid"], (DEFAULT_MODEL, DEFAULT_DATA))
    monitor = found[0]["monitor"]
    table = format_table(found, shown_columns(found, problem=problem))
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
    if missing(study):
        return missing(study)
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
        for fit in critical(study) if not missing(study) else []:
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


def digits_cnn_prose() -> str:
    found = rows("study_digits_cnn_seed")
    accuracies = ", ".join(g(row["test_acc"], 3) for row in found[:-1]) + f" and {g(found[-1]['test_acc'], 3)}"
    epochs = ", ".join(str(row["epochs_run"]) for row in found[:-1]) + f" and {found[-1]['epochs_run']}"
    seeds = ", ".join(str(row["seed"]) for row in found[:-1]) + f" and {found[-1]['seed']}"
    seconds = [row["seconds"] for row in found]
    mlp = [row["test_acc"] for row in rows("study_digits_seed")]
    return (
        "With `configs/digits.yaml` (a CNN of 16 and 32 channels, SGD with momentum 0.9 at lr 0.02, batch 32, early"
        f" stopping on val_loss with patience 10), the best checkpoint reaches a test accuracy of {accuracies} with"
        f" `--seed_everything` {seeds}, stopping after {epochs} epochs, {g(min(seconds), 2)} s to"
        f" {g(max(seconds), 2)} s each on the 2-core CPU of the results (`configs/study_digits_cnn_seed.yaml`, its"
        " rows in `docs/results/study_digits_cnn_seed/`). The MLP with plain SGD, used by the two studies below,"
        f" reaches {g(min(mlp), 2)} to {g(max(mlp), 2)} in the 2×2.\n"
    )


def digits_seed_prose() -> str:
    found = {row["cell"]: row for row in rows("study_digits_seed")}
    small, big = found["bs16_ep5"], found["bs128_ep5"]
    return (
        "The article's claims hold on real data too: per epoch the small batch is far ahead (train loss"
        f" {g(small['train_loss'], 2)} against {g(big['train_loss'], 2)} after 5 epochs), and with enough epochs the"
        f" large batch closes most of the gap ({g(found['bs128_ep20']['train_loss'], 2)} against"
        f" {g(found['bs16_ep20']['train_loss'], 2)} after 20). One seed per cell.\n"
    )


def _minutes(study: str) -> str:
    return g(sum(row["seconds"] for row in rows(study)) / 60, 2)


def _targets(study: str) -> str:
    values = [g(fit["target"], 3) for fit in critical(study)]
    return ", ".join(values[:-1]) + " and " + values[-1]


def critical_intro() -> str:
    study = "study_critical_batch"
    return (
        f"Run the critical-batch study (batch 1 to 512 × 5 learning rates × {seeds(study)} seeds, {cells(study)}"
        f" cells; the targets are a validation loss of {_targets(study)}, within 50%, 25% and 10% of the"
        f" least-squares fit's; its cells took {_minutes(study)} minutes of one core in all, on a 2-core machine"
        " shared with other work, and `--jobs` spreads them over the cores):\n"
    )


def _by_batch(study: str, index: int = -1) -> dict[int, dict[str, Any]]:
    return {p["batch_size"]: p for p in points(study, index)}


def _spread(study: str, index: int = -1) -> str:
    """The seed-to-seed spread of the steps at each batch size's best lr: the range of sd / mean."""
    ratios = []
    for p in points(study, index):
        steps = [s for s in setting_steps(study, p["batch_size"], p["lr"], index) if s is not None]
        ratios.append(statistics.stdev(steps) / statistics.fmean(steps))
    return f"{g(min(ratios) * 100, 2)}% to {g(max(ratios) * 100, 2)}%"


def regression_prose() -> str:
    study = "study_critical_batch"
    fit, best = critical(study)[-1], _by_batch(study)
    big, small = best[max(best)], best[min(best)]
    flat = [p["steps_to_target"] for b, p in best.items() if b >= 8 * fit["b_crit"]]
    lrs = ", ".join(f"{g(p['lr'], 2)} at {b}" for b, p in best.items())
    return (
        f"In plain words: below about {g(fit['b_crit'], 2)} samples per step, doubling the batch nearly halves the"
        " number of steps needed (the perfect-scaling regime, where the gradient is mostly noise and averaging more"
        " samples is as good as taking more steps). Above it, larger batches stop paying: from batch"
        f" {min(b for b in best if b >= 8 * fit['b_crit'])} on, every batch size needs {g(min(flat), 3)} to"
        f" {g(max(flat), 3)} steps on average, and the samples used grow in proportion to the batch, so a batch of"
        f" {max(best)} spends {g(big['samples_to_target'] / small['samples_to_target'], 2)}× the data of a batch of"
        f" {min(best)} to save {g(small['steps_to_target'] / big['steps_to_target'], 2)}× in steps."
        " B_crit = E_min/S_min is where the two costs balance.\n\n"
        f"The best learning rate per batch size ({lrs}) grows with the batch. Over the {seeds(study)} seeds, the"
        f" steps at each batch size's best rate vary by {_spread(study)} of their mean (sd over seeds); the 95%"
        f" bootstrap interval of B_crit, {g(fit['b_crit_low'])} to {g(fit['b_crit_high'])}, is that spread carried"
        " through the fit.\n\n" + _edge_prose(study)
    )


def _edge_prose(study: str) -> str:
    """What the largest learning rate, next to the stability limit, does at large batches."""
    first = rows(study)[0]
    top = max(row["lr_effective"] for row in rows(study))
    second = sorted({row["lr_effective"] for row in rows(study)})[-2]
    largest = max(row["global_batch_size"] for row in rows(study))
    runs = setting_steps(study, largest, top)
    at_top = [s for s in runs if s is not None]
    at_second = [s for s in setting_steps(study, largest, second) if s is not None]
    held = [s is not None for b in (64, 128, 256) for s in setting_steps(study, b, top)]
    return (
        f"The learning-rate grid reaches {g(top, 2)}, about the best stable rate of full-batch gradient descent on"
        f" this quadratic, 2/(λ_max + λ_min), just under the stability limit 2/λ_max = {g(first['lr_max_stable'], 3)}."
        f" At batch {largest} it needs {mean_sd(at_top)} steps ({len(at_top)} of {len(runs)} runs held the target),"
        f" against {mean_sd(at_second)} at lr {g(second, 2)}. At batch 64 to 256 only"
        f" {sum(held)} of its {len(held)} runs held the hardest target within the 1000 steps: close to the stability"
        " limit the steps along the steep direction of the loss barely damp the gradient noise, so the loss keeps"
        " jumping over the target.\n"
    )


def sampling_table() -> str:
    """B_crit with shuffled epochs and with replacement, per target, on the regression."""
    if missing("study_critical_batch_replacement"):
        return missing("study_critical_batch_replacement")
    lines = [
        "| target val_loss | sampling | B_crit (95% bootstrap) | S_min | B_simple at target, median |"
        " B_simple_finite, median |",
        "|---|---|---|---|---|---|",
    ]
    both = {"epochs": critical("study_critical_batch"), "replacement": critical("study_critical_batch_replacement")}
    for index in range(len(both["epochs"])):
        for sampling, fits in both.items():
            fit = fits[index]
            lines.append(
                f"| {g(fit['target'], 4)} | {sampling} | {g(fit['b_crit'])} ({g(fit['b_crit_low'])} to"
                f" {g(fit['b_crit_high'])}) | {g(fit['s_min'])} | {g(fit['b_simple'])} | {g(fit['b_simple_finite'])} |"
            )
    return "\n".join(lines) + "\n"


def _noise_over_simple(study: str, index: int = -1) -> tuple[int, int]:
    """In how many of the runs at each batch size's best lr B_noise exceeds B_simple at the target."""
    count = len(critical(study))
    suffix = f"_{(index % count) + 1}" if count > 1 else ""
    found = rows(study)
    chosen = [row for p in points(study, index) for row in found
              if (row["global_batch_size"], row["lr_effective"]) == (p["batch_size"], p["lr"])]  # fmt: skip
    pairs = [(row[f"b_noise_at_target{suffix}"], row[f"b_simple_at_target{suffix}"]) for row in chosen]
    pairs = [(noise, simple) for noise, simple in pairs if noise is not None and simple is not None]
    return sum(noise > simple for noise, simple in pairs), len(pairs)


def prediction_prose() -> str:
    study = "study_critical_batch"
    fits, first = critical(study), rows(study)[0]
    fit = fits[-1]
    above, total = _noise_over_simple(study)
    ratio = first["hessian_eig_max"] / first["hessian_eig_min"]
    crit = ", ".join(f"{g(f['b_crit'])} ({g(f['b_crit_low'])} to {g(f['b_crit_high'])})" for f in fits)
    noise = ", ".join(g(f["b_noise"]) for f in fits)
    simple = ", ".join(g(f["b_simple"]) for f in fits)
    best = _by_batch(study)
    cap = max(p["lr"] for p in best.values())
    saturated = min(b for b, p in best.items() if p["lr"] == cap)
    top = max(row["lr_effective"] for row in rows(study))
    wins = sum(p["lr"] == top for p in best.values())
    top_line = "never the best" if not wins else f"the best at {wins} batch size(s) only"
    return (
        "**How the prediction holds.** McCandlish et al. predict B_crit ≈ B_noise measured near the target. Here it"
        f" does not. At the hardest target B_noise has a median of {g(fit['b_noise'])} (quartiles"
        f" {g(fit['b_noise_q1'])} to {g(fit['b_noise_q3'])}) and B_simple {g(fit['b_simple'])} (quartiles"
        f" {g(fit['b_simple_q1'])} to {g(fit['b_simple_q3'])}), against B_crit = {g(fit['b_crit'])}. Weighting"
        f" the noise by the curvature does not bring it closer: B_noise exceeds B_simple in {above} of the {total}"
        f" runs at each batch size's best rate; nor does the correction for epochs drawn without replacement, which"
        f" takes the median B_simple only to {g(fit['b_simple_finite'])} (B_simple_finite, N = 800 examples)."
        f" From the easiest target to the hardest, B_crit is {crit}, while the"
        f" median B_noise is {noise} and B_simple {simple}: the noise scales grow"
        f" {g(fits[-1]['b_noise'] / fits[0]['b_noise'], 2)}-fold (B_noise) and"
        f" {g(fits[-1]['b_simple'] / fits[0]['b_simple'], 2)}-fold (B_simple) as the target nears the loss floor,"
        f" since |G|² goes to 0 there, while B_crit falls {g(fits[0]['b_crit'] / fits[-1]['b_crit'], 2)}-fold.\n\n"
        "What appears to set B_crit on this problem is the learning rate's stability limit, not the per-step noise."
        " The noise-scale model lets the step size grow with the batch towards the step that is best for the exact"
        f" gradient; on this badly conditioned quadratic (λ_max/λ_min = {g(ratio, 2)}) plain SGD is stable only"
        f" below 2/λ_max = {g(first['lr_max_stable'], 3)}. The best learning rate grows with the batch up to"
        f" {g(cap, 2)}, reached at batch {saturated}, and stays there: {g(top, 2)}, the grid's only larger rate,"
        f" just under the limit, is {top_line} at the hardest target. From there a larger batch cannot take a"
        " larger step, so the steps stop falling, whatever the noise. What the data support: B_crit lies below the"
        f" batch at which the best rate stops growing, within a factor of {g(saturated / fit['b_crit'], 2)}, and it"
        " does not follow the noise scales from one target to the next. What they do not: the 5-value learning-rate"
        " grid places the point where the rate stops growing only to within a factor of 2 in batch size, and a rate"
        " between"
        f" {g(cap, 2)} and {g(top, 2)} may do better; the direction of the gradient against the curvature, which"
        " decides how far below the model's best step the limit sits, is not recorded; and it is one two-parameter"
        " problem. A finer learning-rate grid near 2/λ_max, or a well-conditioned quadratic, would test it.\n"
    )


def digits_critical_intro() -> str:
    study = "study_digits_critical_batch"
    if missing(study):
        return missing(study)
    lrs = sorted({row["lr_effective"] for row in rows(study)})
    return (
        "The critical-batch study on digits (an MLP with 64 hidden units and plain SGD; batch 1 to 1024 × lr"
        f" {{{', '.join(g(lr, 2) for lr in lrs)}}} × {seeds(study)} seeds, {cells(study)} cells, {_minutes(study)}"
        " minutes of one core in all on a shared 2-core machine; the targets are a validation loss of"
        f" {_targets(study)}, each held for 20 steps). For the hardest target:\n"
    )


def digits_critical_prose() -> str:
    study = "study_digits_critical_batch"
    if missing(study):
        return ""
    found, best = rows(study), _by_batch(study)
    top = max(row["lr_effective"] for row in found)
    largest = max(best)
    at_top = setting_steps(study, largest, top)
    held = [s for s in at_top if s is not None]
    top_line = f"at batch {largest} lr {g(top, 2)} " + (
        f"needs {mean_sd(held)} steps ({len(held)} of {len(at_top)} runs held the target)" if held else
        f"never held the target in {len(at_top)} runs"
    ) + f", against {g(best[largest]['steps_to_target'], 3)} at lr {g(best[largest]['lr'], 2)}"  # fmt: skip
    missed = [row for row in found if row["steps_to_target"] is None]
    lrs = ", ".join(f"{g(p['lr'], 2)} at {b}" for b, p in best.items())
    dropped = sorted({row["global_batch_size"] for row in found} - set(best))
    out = ""
    for batch in dropped:
        counts = [(lr, setting_steps(study, batch, lr)) for lr in sorted({r["lr_effective"] for r in found})]
        held_at = ", ".join(f"{sum(s is not None for s in steps)} of {len(steps)} at lr {g(lr, 2)}"
                            for lr, steps in counts)  # fmt: skip
        out += (
            f" Batch {batch} drops out of the fit: no learning rate held the hardest target in every seed within"
            f" {max(r['steps'] for r in found)} steps (the runs that held it: {held_at})."
        )
    return (
        f"The best learning rate per batch size: {lrs}; {top_line}. Over the {seeds(study)} seeds the steps at each"
        f" batch size's best rate vary by {_spread(study)} of their mean (sd over seeds).{out} {len(missed)} of the"
        f" {len(found)} runs did not hold the hardest target, at batch {min(r['global_batch_size'] for r in missed)}"
        f" to {max(r['global_batch_size'] for r in missed)} with lr {g(min(r['lr_effective'] for r in missed), 2)}"
        f" to {g(max(r['lr_effective'] for r in missed), 2)}.\n"
    )


def both_prose() -> str:
    """The prediction against the data of both problems, target by target."""
    if missing("study_critical_batch", "study_digits_critical_batch"):
        return ""
    regression, digits = critical("study_critical_batch"), critical("study_digits_critical_batch")

    def ratios(fits: list[dict[str, Any]], key: str) -> str:
        values = [f[key] / f["b_crit"] for f in fits if f.get(key)]
        return f"{g(values[0], 2)} times B_crit at the easiest target to {g(values[-1], 2)} times at the hardest"

    def trend(fits: list[dict[str, Any]]) -> str:
        first, last = fits[0]["b_crit"], fits[-1]["b_crit"]
        return f"{'falls' if last < first else 'grows'} from {g(first)} to {g(last)}"

    deviation = [max(f["b_simple"] / f["b_crit"], f["b_crit"] / f["b_simple"]) for f in digits]
    close = [d for d in deviation if d < 1.5]
    return (
        f"On digits B_simple at the target is {ratios(digits, 'b_simple')}; on the regression B_simple is"
        f" {ratios(regression, 'b_simple')}, and B_noise {ratios(regression, 'b_noise')}."
        " On both problems the noise scales grow as the target tightens, since |G|² goes to 0 near the loss floor,"
        f" while B_crit {trend(digits)} on digits and {trend(regression)} on the regression. So how well the"
        f" prediction holds depends on the problem and on where the target sits: on digits B_simple is within a"
        f" factor of {g(max(close or [min(deviation)]), 2)} of B_crit at {len(close)} of the {len(digits)} targets;"
        f" on the regression it is off {g(regression[0]['b_simple'] / regression[0]['b_crit'], 2)}× even at the"
        f" easiest target, and {g(regression[-1]['b_noise'] / regression[-1]['b_crit'], 2)}× in B_noise at the"
        " hardest, where the stability limit appears to set B_crit (above).\n"
    )


# The benchmarks' records, written by `python benchmarks/<script>.py --record`. The README reads these, in this order.
BENCHMARKS = RESULTS / "benchmarks"
RECORDED = {
    "overhead": "whole fit processes against Lightning's barebones floor",
    "step_time": "µs per training step in one process: plain loops, the floor, the template",
    "end_to_end": "whole commands: the 2×2 study against a plain script, start-up",
    "data_path": "µs per batch of the data path",
    "long_study": "memory and open files over a long study in one process",
    "cohorts": "a study with cohorts, without them, and a plain script",
    "cohorts_study_digits_critical_batch": "the digits critical-batch study with cohorts and without (the longest)",
}
PERFORMANCE = [name for name in RECORDED if not name.startswith("cohorts")]  # the Performance section's


def bench_missing(*names: str) -> str:
    """A line saying which benchmarks have no committed record, or "" when all have."""
    absent = [name for name in names if not (BENCHMARKS / f"{name}.json").is_file()]
    if not absent:
        return ""
    return f"Not recorded for this README yet: {', '.join(absent)} (no record under docs/results/benchmarks/).\n"


def bench(name: str) -> dict[str, Any]:
    """A benchmark's recorded command, machine and key numbers."""
    return json.loads((BENCHMARKS / f"{name}.json").read_text())


def bench_numbers(name: str) -> dict[str, Any]:
    return bench(name)["numbers"]


def bench_output(name: str) -> str:
    """What the benchmark printed, as a code block, without the record's header."""
    if bench_missing(name):
        return bench_missing(name)
    lines = (BENCHMARKS / f"{name}.txt").read_text().splitlines()
    return block("\n".join(line for line in lines if not line.startswith("# ")).strip("\n"))


def bench_commands() -> str:
    """The command each record came from, as a shell block with what it measures."""
    if bench_missing(*RECORDED):
        return bench_missing(*RECORDED)
    lines = [f"# {what}\n{bench(name)['command']}" for name, what in RECORDED.items()]
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def _load(value: float) -> str:
    return f"{value:.1f}"


def x(ratio: float) -> str:
    """A ratio as the benchmarks print it: two decimals, none from 10 up."""
    return f"{ratio:.2f}" if ratio < 10 else f"{ratio:.0f}"


def _span(values: list[float], show: Callable[[float], str] = x) -> str:
    low, high = show(min(values)), show(max(values))
    return low if low == high else f"{low} to {high}"


def _listed(values: list[str]) -> str:
    unique = list(dict.fromkeys(values))
    return ", ".join(unique[:-1]) + " and " + unique[-1] if len(unique) > 1 else unique[0]


def performance_intro(*names: str) -> str:
    """Where the Performance section's numbers come from: the machine, its load while they ran, the versions, the
    dates and the commit of the records."""
    names = names or tuple(PERFORMANCE)
    if bench_missing(*names):
        return bench_missing(*names)
    records = [bench(name) for name in names]
    facts = [record["machine"] for record in records]
    loads = [value for fact in facts for value in (fact["load_average_start"], fact["load_average_end"])]
    days = sorted(record["started"][:10] for record in records)
    machines = _listed([f"{f['cpus']}-CPU {f['cpu_model']} ({f['system']})" for f in facts])
    gpus = _listed([f["gpu"] for f in facts])
    return (
        "The tables and numbers below are generated from the records under `docs/results/benchmarks/`, each"
        f" recorded on a {machines} machine, GPU: {gpus}; Python {_listed([f['python'] for f in facts])}, torch"
        f" {_listed([f['torch'] for f in facts])}, lightning {_listed([f['lightning'] for f in facts])}; commit"
        f" {_listed([f['commit'] for f in facts])}, {_listed([days[0], days[-1]])}. The machine was shared with other"
        f" work: its load average (1 min) was {_span(loads, _load)} at the starts and ends of the runs. Such a"
        " machine is noisy, so read the ratios, not single cells, and rerun before reading a change into one.\n"
    )


def overhead_prose() -> str:
    if bench_missing("overhead"):
        return ""
    found = bench_numbers("overhead")
    long, short = found["long"], found["short"]
    return (
        f"Per step, the template costs {x(long['cpu_ratio'])}× the floor in CPU time ({x(long['wall_ratio'])}×"
        f" in wall time) where the epoch is long, and {x(short['cpu_ratio'])}× ({x(short['wall_ratio'])}×)"
        " where epochs are short and the per-epoch work counts.\n"
    )


def _step_rows() -> dict[tuple[int, int], dict[str, float]]:
    return {(row["n"], row["batch"]): row for row in bench_numbers("step_time")["rows"]}


def step_time_prose() -> str:
    """The per-step ratios the step_time record gives, for long epochs and for the default 1000 points."""
    if bench_missing("step_time"):
        return ""
    from batchsize_lit import RegressionDataModule

    rows = _step_rows()
    biggest = max(n for n, _ in rows)
    long = [row for (n, _), row in rows.items() if n == biggest]
    short = {batch: row for (n, batch), row in rows.items() if n == 1000}
    steps = {batch: RegressionDataModule(n_samples=1000, batch_size=batch).batches_per_epoch() for batch in short}
    per_epoch = " and ".join(f"{x(row['d/c'])} (batch {batch})" for batch, row in short.items())
    batches = " or ".join(f"{steps[batch]} (batch {batch})" for batch in short)
    return (
        f"Where epochs are long ({biggest} points) the template's fit, with the run history, validation, both"
        " checkpoints and early stopping, costs"
        f" {_span([row['d/c'] for row in long])}× Lightning's barebones floor per step, and"
        f" {_span([row['bar/c'] for row in long])}× with its progress display on. With the default 1000 points an"
        f" epoch is only {batches} steps, and the per-epoch work (writing `last.ckpt` and, on improvement, the best"
        " checkpoint; logging `val_loss`; starting validation) shows:"
        f" {per_epoch}.\n"
    )


def end_to_end_prose() -> str:
    if bench_missing("end_to_end"):
        return ""
    found = bench_numbers("end_to_end")
    help_ratio = found["help"]["ratio"]
    saving = (
        "so the entry point's import, below, is the cheaper one"
        if help_ratio < 1
        else "so in this run the entry point's savings, below, did not show"
    )
    return (
        f"The 2×2 study as a whole process takes {x(found['study']['ratio'])}× the plain PyTorch script."
        f" Importing Lightning is most of the difference: {x(found['import']['ratio'])}× the time of importing"
        f" torch alone. `--help`, which imports it through the entry point, takes {x(help_ratio)}× the time of a"
        f" plain `import lightning.pytorch`, {saving}:\n"
    )


def data_path_prose() -> str:
    if bench_missing("data_path"):
        return ""
    rows = bench_numbers("data_path")["rows"]
    return (
        f"A batch of the template's loader costs {_span([row['t/i'] for row in rows])}× what indexing the tensors"
        f" costs, at every batch size and data size above, where the default per-sample `DataLoader` costs"
        f" {_span([row['l/i'] for row in rows])}×.\n"
    )


def long_study_prose() -> str:
    if bench_missing("long_study"):
        return ""
    found = bench_numbers("long_study")
    return (
        f"Over {found['cells']} cells in one process, the resident memory after the last cell is"
        f" {found['rss_ratio']:.3f}× that after cell 10, with {found['files_last']} files open after the last cell and"
        f" {found['files_10']} after cell 10.\n"
    )


def _agreement(found: dict[str, int], cells: int, against: str) -> str:
    text = f"{found['identical']}/{cells} identical to {against}"
    if found["within_2pc"]:
        text += f", {found['within_2pc']} within 2%"
    return text + (f", {found['beyond']} beyond 2%" if found["beyond"] else "")


def cohorts_table(name: str = "cohorts") -> str:
    """A record of benchmarks/cohorts.py as a markdown table, with the line that says where it was measured."""
    if bench_missing(name):
        return bench_missing(name)
    record = bench(name)
    found, facts = record["numbers"], record["machine"]
    cohorts, off = found["cohorts"], found["off"]
    line = f" ({cohorts['line']})" if cohorts.get("line") else ""
    repeats = found.get("repeats", 1)
    how = "Measured side by side in one run of" if repeats == 1 else f"Medians of {repeats} runs of each, in turn, of"
    lines = [
        f"{how} `{record['command']}` ({record['started'][:10]}, commit"
        f" {facts['commit']}), on a {facts['cpus']}-CPU machine shared with other work (load average"
        f" {_span(_loads(facts), _load)}):",
        "",
        f"| `{found['config']}` ({found['cells']} cells, {found['targets']} targets) | wall | CPU | steps to target"
        " | B_crit |",
        "|---|---|---|---|---|",
        f"| `study`{line} | {g(cohorts['wall'])} s | {g(cohorts['cpu'])} s | | {g(cohorts['b_crit'])} |",
        f"| `study --cohorts off` | {g(off['wall'])} s | {g(off['cpu'])} s |"
        f" {_agreement(found['agreement'], found['cells'], 'the cohorts')} | {g(off['b_crit'])} |",
    ]
    if "plain" in found:
        plain = found["plain"]
        lines.append(
            f"| `benchmarks/plain_critical_batch.py`, a plain vectorized script | {g(plain['wall'], 2)} s |"
            f" {g(plain['cpu'], 2)} s | {_agreement(plain['agreement'], plain['cells'], '`--cohorts off`')} | |"
        )
    return "\n".join(lines) + "\n"


def _loads(facts: dict[str, Any]) -> list[float]:
    return [facts["load_average_start"], facts["load_average_end"]]


def cohorts_prose(name: str = "cohorts") -> str:
    if bench_missing(name):
        return ""
    found = bench_numbers(name)
    text = (
        f"Cohorts took {x(found['wall_ratio'])}× the wall time ({x(found['cpu_ratio'])}× the CPU time) of"
        " `--cohorts off`"
    )
    if "plain" in found:
        plain = found["plain"]
        text += (
            f", and {x(plain['wall_ratio'])}× the wall time ({x(plain['cpu_ratio'])}× the CPU time) of the"
            " plain script, which writes no event files, rows or histories and pays neither Lightning's loop nor"
            " `vmap`'s per-call cost"
        )
    events = [found["cohorts"]["events"], found["off"]["events"]]
    written = f"both write {events[0]}" if events[0] == events[1] else f"they write {events[0]} and {events[1]}"
    return text + f"; {written} event files.\n"
