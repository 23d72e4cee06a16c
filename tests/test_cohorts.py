"""Cohorts: cells trained together as one vectorized fit give the rows and event files of cells run one by one."""

import json
import shutil

import pytest

from batchsize_lit.problems.digits import MLPClassifier

from helpers import hparams, read_csv, run, scalars, write_study


def science_callbacks(target: dict) -> list[dict]:
    """StepsToTarget with these arguments, and the noise scale measured at each target's weights only."""
    return [
        {"class_path": "batchsize_lit.science.StepsToTarget", "init_args": target},
        {"class_path": "batchsize_lit.science.GradientNoiseScale", "init_args": {"every_n_epochs": None}},
    ]


# Early stopping with restore, validation every epoch, a target checked every 5 steps, no checkpoints: lr 3.0
# diverges, the others stop early or run out of epochs at different epochs.
BASE = {
    "data": {"n_samples": 200},
    "early_stopping": {"patience": 2, "restore_best_weights": True},
    "checkpoint": {"save_top_k": 0, "save_last": False},
    "trainer": {
        "accelerator": "cpu",
        "max_epochs": 8,
        "callbacks": science_callbacks({"tolerance": 0.3, "every_n_steps": 5, "hold": 2}),
    },
}
GRID = {"data.batch_size": [16], "model.lr": [0.05, 0.4, 3.0], "seed_everything": [0, 1]}
FORK_BASE = {
    "model": {"class_path": "fork.regression.SineSGDRegressor", "init_args": {"hidden": 8}},
    "data": {"class_path": "fork.regression.SineData", "init_args": {"n_samples": 128}},
    "early_stopping": {"monitor": "val/loss", "patience": 2},
    "checkpoint": {"save_top_k": 0, "save_last": False},
    "trainer": {"accelerator": "cpu", "max_epochs": 6},
}


def study(workdir, grid, base, name, *args):
    assert run("--config", str(write_study(workdir, grid, base=base, name=name)), "--jobs", "1", *args) == 0
    return workdir / "lightning_logs" / name


def close(one, two, rel=1e-5):
    """Equal, or for numbers equal up to float32 rounding. A cohort's batched kernels (bmm under vmap, the vmapped
    cross-entropy's mean) may round in another order than a single model's: bit-equal on some CPUs, an ulp apart
    on others (AVX-512). Counts (steps, epochs, steps to a target) differ by far more than 1e-5 when they differ."""
    try:
        return float(one) == pytest.approx(float(two), rel=rel)
    except (TypeError, ValueError):
        return one == two


def tolerance(name):
    """The noise scales (b_simple, b_noise, the gns/ tags, and B_crit/B_simple) are ratios of differences of squared
    gradient norms, which turn an ulp in the weights into a few parts in 10^5; estimates whose quartiles over seeds
    span a factor of 2."""
    return 1e-3 if name.startswith("gns/") or any(k in name for k in ("b_simple", "b_noise", "ratio")) else 1e-5


def hparams_tab(run_folder):
    """The run's HParams tab, or {} where it wrote none (a diverged run)."""
    try:
        return hparams(run_folder)
    except KeyError:
        return {}


def assert_same_cells(serial, cohort):
    """Every row equal but the seconds, and every cell's event file holding the same tags at the same steps, values
    up to float rounding (``close``)."""
    rows, cohort_rows = read_csv(serial / "results.csv"), read_csv(cohort / "results.csv")
    assert [row["cell"] for row in rows] == [row["cell"] for row in cohort_rows]
    for row, cohort_row in zip(rows, cohort_rows, strict=True):
        row.pop("seconds"), cohort_row.pop("seconds")
        assert row.keys() == cohort_row.keys(), row["cell"]
        assert [k for k in row if not close(row[k], cohort_row[k], tolerance(k))] == [], row["cell"]
        events, cohort_events = scalars(serial / row["cell"]), scalars(cohort / row["cell"])
        assert events.keys() == cohort_events.keys()
        for tag, values in events.items():
            assert [step for step, _ in values] == [step for step, _ in cohort_events[tag]], tag
            assert all(
                close(a, b, tolerance(tag)) for (_, a), (_, b) in zip(values, cohort_events[tag], strict=True)
            ), tag
        assert len(list((cohort / row["cell"]).glob("events.out.tfevents.*"))) == 1
        tab, cohort_tab = hparams_tab(serial / row["cell"]), hparams_tab(cohort / row["cell"])  # a diverged: none
        assert tab.keys() == cohort_tab.keys() and all(close(tab[k], cohort_tab[k]) for k in tab), row["cell"]
        # config.yaml as the cell's own fit writes it (a cohort derives it from one parsed cell), but the folder
        config, serial_config = (folder / row["cell"] / "config.yaml" for folder in (cohort, serial))
        assert config.read_text().replace(cohort.name, "X") == serial_config.read_text().replace(serial.name, "X")
        history = json.loads((cohort / row["cell"] / "result.json").read_text())["history"]
        serial_history = json.loads((serial / row["cell"] / "result.json").read_text())["history"]
        assert [list(epoch) for epoch in history] == [list(epoch) for epoch in serial_history]
        assert all(close(a[k], b[k]) for a, b in zip(history, serial_history, strict=True) for k in a)
    return rows


def test_cohort_rows_equal_serial_rows_with_early_stopping_restore_and_divergence(workdir, capsys):
    serial = study(workdir, GRID, BASE, "serial", "--cohorts", "off")
    assert "cohorts" not in capsys.readouterr().out
    cohort = study(workdir, GRID, BASE, "cohort")
    assert "6 cells in 1 cohorts" in capsys.readouterr().out
    rows = assert_same_cells(serial, cohort)
    status = {row["cell"]: row["status"] for row in rows}
    assert status["lr3.0_seed0"] == status["lr3.0_seed1"] == "diverged"
    ok = [row for row in rows if row["status"] == "ok"]
    assert any(int(row["epochs_run"]) < 8 for row in ok)  # stopped early, its best weights restored
    assert any(row["steps_to_target"] for row in ok) and any(row["b_simple_at_target"] for row in ok)


# The critical-batch study in small: three targets checked every step, each held for 5 checks, the run stopped once
# the hardest has held or at 160 steps (which some cells, one of them within its hold, end without the hardest target
# reached), the noise scale measured at each target's weights.
CRITICAL_BASE = {
    "data": {"n_samples": 200},
    "early_stopping": {"patience": None, "restore_best_weights": False},
    "checkpoint": {"save_top_k": 0, "save_last": False},
    "trainer": {
        "accelerator": "cpu",
        "max_epochs": -1,
        "max_steps": 160,
        "check_val_every_n_epoch": 10,
        "callbacks": science_callbacks({"tolerance": [0.5, 0.25, 0.1], "every_n_steps": 1, "hold": 5}),
    },
}
CRITICAL_GRID = {"data.batch_size": [4, 8, 16], "model.lr": [0.1, 0.4], "seed_everything": [0, 1]}


def test_cohorts_with_several_targets_equal_serial_cells_and_their_critical_batch(workdir, capsys):
    serial = study(workdir, CRITICAL_GRID, CRITICAL_BASE, "serial", "--cohorts", "off")
    cohort = study(workdir, CRITICAL_GRID, CRITICAL_BASE, "cohort")
    out = capsys.readouterr().out
    assert "12 cells in 3 cohorts" in out and "cohorts off:" not in out
    rows = assert_same_cells(serial, cohort)
    # The same steps give the same fits, up to the last bits of torch.linalg.lstsq, which vary from call to call
    # with several threads; the noise scales' medians up to their own rounding.
    fits, cohort_fits = read_csv(serial / "critical_batch.csv"), read_csv(cohort / "critical_batch.csv")
    assert [list(fit) for fit in fits] == [list(fit) for fit in cohort_fits]
    for fit, cohort_fit in zip(fits, cohort_fits, strict=True):
        assert [k for k in fit if fit[k]] == [k for k in cohort_fit if cohort_fit[k]]
        assert [
            k for k in fit if fit[k] and not close(fit[k], cohort_fit[k], 1e-3 if tolerance(k) > 1e-5 else 1e-12)
        ] == [], fit
    # every target reached by some cell and missed by another, its noise scale measured at its own weights
    for index in (1, 2, 3):
        steps = [row[f"steps_to_target_{index}"] for row in rows]
        assert any(steps), index
        assert any(row[f"b_simple_at_target_{index}"] for row in rows), index
    assert any(not row["steps_to_target_3"] for row in rows)
    assert len(read_csv(cohort / "critical_batch.csv")) == 3
    tags = scalars(cohort / rows[0]["cell"])
    assert {"target/steps_1", "target/val_loss_3", "gns/b_simple"} <= tags.keys()


def test_cohort_size_splits_cohorts(workdir, capsys):
    grid = {"data.batch_size": [16], "model.lr": [0.05, 0.4], "seed_everything": [0, 1]}
    serial = study(workdir, grid, BASE, "serial", "--cohorts", "off")
    cohort = study(workdir, grid, BASE, "cohort", "--cohort_size", "2")
    assert "4 cells in 2 cohorts" in capsys.readouterr().out
    assert_same_cells(serial, cohort)


def test_a_forks_cohort_with_plain_dataloaders_equals_its_serial_cells(workdir, capsys):
    grid = {"model.lr": [0.05, 0.2], "seed_everything": [0, 1, 2]}
    serial = study(workdir, grid, FORK_BASE, "serial", "--cohorts", "off")
    cohort = study(workdir, grid, FORK_BASE, "cohort")
    assert "6 cells in 1 cohorts" in capsys.readouterr().out
    assert_same_cells(serial, cohort)


# The digits critical-batch study in small: an MLP on plain DataLoaders whose validation logs val_acc beside
# val_loss (every epoch here, so that its tags are written), two targets checked every step.
DIGITS_BASE = {
    "model": {"class_path": "batchsize_lit.problems.digits.MLPClassifier", "init_args": {"hidden": 16}},
    "data": {"class_path": "batchsize_lit.problems.digits.DigitsDataModule"},
    "early_stopping": {"patience": None, "restore_best_weights": False},
    "checkpoint": {"save_top_k": 0, "save_last": False},
    "trainer": {
        "accelerator": "cpu",
        "max_epochs": -1,
        "max_steps": 40,
        "check_val_every_n_epoch": 1,
        "callbacks": science_callbacks({"target": [1.2, 0.9], "every_n_steps": 1, "hold": 3}),
    },
}


def test_a_digits_cohort_with_validation_accuracy_equals_its_serial_cells(workdir, capsys):
    grid = {"data.batch_size": [128, 256], "model.lr": [0.2, 0.8], "seed_everything": [0, 1]}
    serial = study(workdir, grid, DIGITS_BASE, "serial", "--cohorts", "off")
    cohort = study(workdir, grid, DIGITS_BASE, "cohort")
    out = capsys.readouterr().out
    assert "8 cells in 2 cohorts" in out and "cohorts off:" not in out
    rows = assert_same_cells(serial, cohort)  # the vmapped cross-entropy sums in another order
    assert all(row["val_acc"] and row["test_acc"] for row in rows)
    assert any(row["steps_to_target_2"] for row in rows) and any(not row["steps_to_target_2"] for row in rows)
    tags = set().union(*(scalars(cohort / row["cell"]).keys() for row in rows))
    assert {"val_acc", "val_loss", "target/steps_2", "gns/b_simple"} <= tags


class DigitsWithoutBatchMetrics(MLPClassifier):
    """The digits MLP as a fork might write it: its validation logs val_acc, and it has no batch_metrics."""

    batch_metrics = None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"model": {"class_path": "fork.regression.SineRegressor"}}, "SineRegressor has no loss(batch) method"),
        ({"checkpoint": {"save_top_k": 1}}, "checkpoints are saved"),
        ({"model": {"class_path": "fork.regression.StepLossRegressor"}}, "has no loss(batch) method"),
        ({"trainer": {"accelerator": "cpu", "max_epochs": 2, "accumulate_grad_batches": 2}}, "accumulate_grad"),
        (
            {
                "model": {"class_path": "test_cohorts.DigitsWithoutBatchMetrics"},
                "data": {"class_path": "batchsize_lit.problems.digits.DigitsDataModule"},
                "early_stopping": {"patience": 2},
            },
            "validation logs val_acc, val_loss, not just val_loss",
        ),
    ],
)
def test_cells_that_cannot_form_cohorts_say_why_in_one_line(workdir, capsys, change, reason):
    base = {**FORK_BASE, **change, "trainer": {**FORK_BASE["trainer"], "max_epochs": 1, **change.get("trainer", {})}}
    study(workdir, {"seed_everything": [0, 1]}, base, "fallback")
    lines = [line for line in capsys.readouterr().out.splitlines() if "cohort" in line]
    assert len(lines) == 1 and lines[0].startswith("cohorts off: ") and reason in lines[0]
    assert len(read_csv(workdir / "lightning_logs" / "fallback" / "results.csv")) == 2


def test_an_interrupted_cohort_study_reruns_only_its_unfinished_cells(workdir, capsys):
    cohort = study(workdir, GRID, BASE, "cohort")
    first = read_csv(cohort / "results.csv")
    for cell in ("lr0.4_seed1", "lr0.05_seed0"):  # as a study killed before these cells' results were written
        (cohort / cell / "result.json").unlink()
        shutil.rmtree(cohort / cell / "lightning_logs", ignore_errors=True)
    capsys.readouterr()
    study(workdir, GRID, BASE, "cohort")
    out = capsys.readouterr().out
    assert "4 cell(s) already done" in out and "2 cells in 1 cohorts" in out
    again = read_csv(cohort / "results.csv")
    for row, other in zip(first, again, strict=True):
        row.pop("seconds"), other.pop("seconds")
        assert row == other


@pytest.mark.slow
def test_cohorts_in_worker_processes_give_the_same_rows(workdir):
    serial = study(workdir, GRID, BASE, "serial", "--cohorts", "off")
    cohort = study(workdir, {**GRID, "data.batch_size": [16]}, BASE, "jobs", "--jobs", "2", "--cohort_size", "3")
    assert_same_cells(serial, cohort)


def test_a_bad_cohort_size_is_one_line(workdir):
    code = run("--config", str(write_study(workdir, GRID, base=BASE)), "--cohort_size", "0")
    assert code == "error: cohort_size=0 must be a positive integer"
    assert not (workdir / "lightning_logs").exists()


def test_trial_index_runs_its_cell_alone(workdir, capsys):
    folder = study(workdir, GRID, BASE, "array", "--trial_index", "1")
    assert "cohort" not in capsys.readouterr().out
    assert [path.name for path in folder.iterdir()] == ["lr0.05_seed1"]


def test_a_forks_cohort_measures_each_member_with_its_own_buffers_and_unused_parameters(workdir, capsys):
    """The noise scale at each target, of members whose non-persistent buffer differs by seed and whose model has
    a parameter its loss never uses, equals each cell's own measurement."""
    base = {
        **FORK_BASE,
        "model": {"class_path": "fork.regression.RandomScaleRegressor", "init_args": {"hidden": 8}},
        "trainer": {
            **FORK_BASE["trainer"],
            "callbacks": science_callbacks({"target": 0.45, "every_n_steps": 1, "hold": 1}),
        },
    }
    grid = {"model.lr": [0.2], "seed_everything": [0, 1, 2]}
    serial = study(workdir, grid, base, "serial", "--cohorts", "off")
    cohort = study(workdir, grid, base, "cohort")
    assert "3 cells in 1 cohorts" in capsys.readouterr().out
    rows = assert_same_cells(serial, cohort)
    assert len({row["b_simple_at_target"] for row in rows if row["b_simple_at_target"]}) == 3, rows


def test_a_cohort_that_gives_its_metrics_to_the_loggers_at_every_step_writes_the_serial_event_files(
    workdir, capsys, monkeypatch
):
    """The members' metrics are kept and given to their loggers in bursts (every FLUSH_SECONDS, and as each member
    finishes); flushed after every step instead, the event files are the same as the cells' own."""
    from batchsize_lit.study import members

    flushes = []
    monkeypatch.setattr(members, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(members.Members, "flush", lambda self, flush=members.Members.flush: flushes.append(flush(self)))
    serial = study(workdir, GRID, BASE, "serial", "--cohorts", "off")
    cohort = study(workdir, GRID, BASE, "cohort")
    assert "6 cells in 1 cohorts" in capsys.readouterr().out
    assert len(flushes) > 10  # during the fit, not only at its end
    assert_same_cells(serial, cohort)


def test_a_study_with_a_list_of_loggers_writes_each_into_the_cell_s_folder_the_same_with_cohorts(workdir, capsys):
    """TensorBoard and CSV together: each cell's folder holds both, and a cohort's members log to every logger."""
    loggers = [{"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}, "lightning.pytorch.loggers.CSVLogger"]
    base = {**BASE, "trainer": {**BASE["trainer"], "logger": loggers}}
    grid = {"data.batch_size": [16], "model.lr": [0.05, 0.4], "seed_everything": [0]}
    serial = study(workdir, grid, base, "serial", "--cohorts", "off")
    cohort = study(workdir, grid, base, "cohort")
    assert "2 cells in 1 cohorts" in capsys.readouterr().out
    rows = assert_same_cells(serial, cohort)
    for row in rows:
        csv_rows, cohort_csv_rows = (read_csv(folder / row["cell"] / "metrics.csv") for folder in (serial, cohort))
        assert len(csv_rows) > 5 and [r.keys() for r in csv_rows] == [r.keys() for r in cohort_csv_rows]
        for a, b in zip(csv_rows, cohort_csv_rows, strict=True):
            assert all(close(a[k], b[k]) if a[k] else a[k] == b[k] for k in a), row["cell"]
