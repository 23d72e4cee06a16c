"""The study command: grid expansion, a small study end to end, one cell of a job array, report-only, resume."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from batchsize_lit.study.grid import cell_name, expand

from helpers import BASE, ROOT, hparams, read_csv, run, run_cli, write_study


def test_expand_is_the_product_in_grid_order():
    grid = {"data.batch_size": [16, 128], "trainer.max_epochs": [5, 20], "model.lr": [0.1]}
    cells = expand(grid)
    assert len(cells) == 4
    assert [cell_name(cell, grid) for cell in cells] == ["bs16_ep5", "bs16_ep20", "bs128_ep5", "bs128_ep20"]
    assert all(cell["model.lr"] == 0.1 for cell in cells)


def test_grid_values_must_be_lists():
    with pytest.raises(ValueError, match=r"grid\.data\.batch_size=16"):
        expand({"data.batch_size": 16})


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"data.batch_sise": [8, 16]}, "unknown key data.batch_sise; did you mean batch_size?"),
        ({"trainer.max_epoch_count": [1]}, "trainer.max_epoch_count"),
        ({"data.batch_size": [8, 500]}, "cell bs500: data.batch_size=500 is larger than the training split"),
        ({"model.lr": [0.1, -1.0]}, "model.lr=-1.0 must be > 0"),
    ],
)
def test_bad_grid_fails_before_anything_runs(workdir, capsys, grid, message):
    code = run("--config", str(write_study(workdir, grid)))
    assert code != 0 and str(code).startswith("error: ") and message in str(code)
    assert not (workdir / "lightning_logs").exists()


@pytest.mark.parametrize(
    ("args", "text", "message"),
    [
        ([], "", "--config given.yaml is empty"),
        ([], "grid:\n  data.batch_size: [16\n", "--config given.yaml is not valid YAML at line 3, column 1"),
        ([], "gird:\n  data.batch_size: [16]\n", "Option 'gird.data.batch_size' is not accepted; did you mean grid?"),
        ([], "data:\n  batch_size: 16\n", "--config given.yaml is a fit config: run it with batchsize-lit fit"),
        (["--jobs=-3"], "grid:\n  data.batch_size: [16]\n", "jobs=-3 must be a positive integer"),
        (["--job=1"], "grid:\n  data.batch_size: [16]\n", "unrecognized arguments: --job=1; did you mean --jobs?"),
    ],
)
def test_a_bad_study_command_is_named_in_one_line(workdir, args, text, message):
    (workdir / "given.yaml").write_text(text)
    code = run("--config", "given.yaml", *args)
    assert str(code).startswith("error: ") and message in str(code) and "\n" not in str(code)
    assert not (workdir / "lightning_logs").exists()


def test_two_cell_study_end_to_end(workdir, capsys):
    config = write_study(workdir, {"data.batch_size": [8, 64], "model.lr": [0.1]})
    assert run("--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "[1/2] bs8" in out and "[2/2] bs64" in out and "ETA" in out
    assert "lr_effective" not in out  # the same as lr in every cell: the printed table leaves it out
    folder = workdir / "lightning_logs" / "tiny"
    rows = read_csv(folder / "results.csv")
    assert [row["cell"] for row in rows] == ["bs8", "bs64"]
    for column in ["batch_size", "max_epochs", "lr", "seed", "epochs_run", "steps", "samples", "train_loss",
                   "val_loss", "test_loss", "weight", "bias", "seconds", "status"]:  # fmt: skip
        assert all(row[column] != "" for row in rows), column
    assert [int(row["steps"]) for row in rows] == [3 * 20, 3 * 3]  # 160 training points: ceil(160 / batch) a epoch
    assert [int(row["samples"]) for row in rows] == [480, 480]
    assert all(row["status"] == "ok" and row["epochs_run"] == "3" for row in rows)
    for png in ["train_loss_by_epoch.png", "train_loss_by_step_and_samples.png", "val_loss_by_epoch.png"]:
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for cell in ["bs8", "bs64"]:
        assert len(list((folder / cell).glob("events.out.tfevents.*"))) == 1  # fit and test share one event file
        events = EventAccumulator(str(folder / cell))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert "by_epoch/train_loss" in tags and "by_samples/val_loss" in tags
        # The HParams tab records what the grid varies and the monitored metric, not the constant lr.
        assert hparams(folder / cell) == {"batch_size": int(cell[2:]), "monitor": "val_loss"}
        train = [e.value for e in events.Scalars("by_epoch/train_loss")]
        row = next(r for r in rows if r["cell"] == cell)
        assert float(row["train_loss"]) == pytest.approx(train[-1], rel=1e-6)


def test_trial_index_report_only_and_resume(workdir, capsys):
    config = str(write_study(workdir, {"data.batch_size": [8, 64], "seed_everything": [0, 1]}, name="arr"))
    folder = workdir / "lightning_logs" / "arr"
    assert run("--config", config, "--trial_index", "2") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["bs64_seed0"]
    assert not (folder / "results.csv").exists()

    assert run("--config", config) == 0
    assert "1 cell(s) already done" in capsys.readouterr().out
    first = read_csv(folder / "results.csv")
    assert len(first) == 4
    done = (folder / "bs64_seed0" / "result.json").stat().st_mtime_ns

    assert run("--config", config, "--report_only", "true") == 0
    out = capsys.readouterr().out
    assert "Mean ± sd over seeds" in out and "bs8 " in out
    assert read_csv(folder / "results.csv") == first
    assert (folder / "bs64_seed0" / "result.json").stat().st_mtime_ns == done

    assert run("--config", config, "--redo", "true", "--trial_index", "2") == 0
    assert (folder / "bs64_seed0" / "result.json").stat().st_mtime_ns != done


def test_trial_index_out_of_range(workdir):
    code = run("--config", str(write_study(workdir, {"data.batch_size": [8]})), "--trial_index", "3")
    assert "trial_index=3 is outside the grid's 1 cells" in str(code)


def test_divergent_cell_is_recorded_and_the_study_goes_on(workdir, capsys):
    base = {**BASE, "trainer": {"accelerator": "cpu", "max_epochs": 20}}
    config = write_study(workdir, {"model.lr": [5.0, 0.1]}, base=base)
    assert run("--config", str(config)) == 0
    rows = read_csv(workdir / "lightning_logs" / "tiny" / "results.csv")
    assert [(row["cell"], row["status"]) for row in rows] == [("lr5.0", "diverged"), ("lr0.1", "ok")]
    assert int(rows[0]["epochs_run"]) < int(rows[1]["epochs_run"]) == 20


def test_lr_scaling_shows_in_the_results(workdir, capsys):
    base = {**BASE, "model": {"base_batch_size": 8, "lr": 0.05, "lr_scaling": "sqrt"}}
    assert run("--config", str(write_study(workdir, {"data.batch_size": [8, 32]}, base=base))) == 0
    rows = read_csv(workdir / "lightning_logs" / "tiny" / "results.csv")
    assert [float(row["lr_effective"]) for row in rows] == pytest.approx([0.05, 0.1])
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("cell "))
    assert header.split()[:5] == ["cell", "batch_size", "max_epochs", "lr", "lr_effective"]  # shown: it varies
    assert next(line for line in table if line.startswith("bs32 ")).split()[3:5] == ["0.05", "0.1"]


def test_jobs_give_the_same_results_as_a_serial_run(workdir):
    grid = {"data.batch_size": [8, 64]}
    assert run("--config", str(write_study(workdir, grid, name="serial")), "--jobs", "1") == 0
    assert run("--config", str(write_study(workdir, grid, name="parallel")), "--jobs", "2") == 0
    serial, parallel = (read_csv(workdir / "lightning_logs" / name / "results.csv") for name in ("serial", "parallel"))
    for one, two in zip(serial, parallel, strict=True):
        for key in ["cell", "steps", "train_loss", "val_loss", "test_loss", "weight", "bias"]:
            assert one[key] == two[key], key


@pytest.mark.slow
def test_a_long_study_keeps_memory_and_open_files_flat(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/long_study.py"), "--cells", "100"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    ratio = float(re.search(r"RSS after cell 100 / after cell 10: ([\d.]+)", result.stdout).group(1))
    files = re.search(r"open files after cell 10: (\d+), after cell 100: (\d+)", result.stdout)
    assert ratio <= 1.10, result.stdout
    assert int(files.group(2)) <= int(files.group(1)), result.stdout


@pytest.mark.slow
def test_a_slurm_job_array_reports_what_a_local_run_does(tmp_path):
    """Each cell in its own process with the variables a SLURM array task has (Lightning reads them too), then one
    report-only call: the same results.csv as a local run of the whole grid."""
    config = str(write_study(tmp_path, {"data.batch_size": [8, 64]}, name="array"))
    local, array = tmp_path / "local", tmp_path / "array"
    local.mkdir(), array.mkdir()
    assert run_cli("study", "--config", config, cwd=local).returncode == 0
    for task in range(2):
        slurm = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "2",
                 "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1", "SLURM_JOB_ID": str(4243 + task),
                 "SLURM_JOB_NAME": "batch-sweep", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                 "SLURM_NODEID": "0", "SLURM_CPUS_PER_TASK": "2", "SLURM_JOB_NUM_NODES": "1"}  # fmt: skip
        result = run_cli("study", "--config", config, "--trial_index", str(task), cwd=array, env=slurm)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "warn" not in result.stderr.lower(), result.stderr
    assert not (array / "lightning_logs/array/results.csv").exists()
    report = run_cli("study", "--config", config, "--report_only", "true", cwd=array)
    assert report.returncode == 0, report.stderr
    rows = [read_csv(folder / "lightning_logs/array/results.csv") for folder in (local, array)]
    for row in rows[0] + rows[1]:
        del row["seconds"]
    assert rows[0] == rows[1]


def test_the_check_builds_one_cell_per_new_grid_value(monkeypatch):
    from batchsize_lit.study import run as study_run
    from batchsize_lit.study.grid import cell_name, expand, fit_args

    grid = {
        "data.batch_size": list(range(1, 11)),
        "model.lr": [0.1, 0.2, 0.3, 0.4, 0.5],
        "seed_everything": list(range(10)),
    }
    cells = {cell_name(c, grid): fit_args(None, c, Path("x"), cell_name(c, grid), list(grid)) for c in expand(grid)}
    built = []
    monkeypatch.setattr(study_run, "CellCLI", lambda args, defaults: built.append(args))
    study_run.check_cells(cells, (None, None))
    assert len(built) == 23  # the first cell, then 9 more seeds, 4 more rates, 9 more batch sizes
    given = {arg for args in built for arg in args}
    assert all(f"--model.lr={lr}" in given for lr in grid["model.lr"])
    assert all(f"--data.batch_size={b}" in given for b in grid["data.batch_size"])


def test_the_fit_keys_a_study_tells_apart_are_the_fit_cli_s_own(workdir):
    """A config of keys that `batchsize-lit fit` accepts (weights_only, an argument of Lightning's fit) is named a
    fit config; the study's own keys are not fit keys."""
    from batchsize_lit.study import build_parser, fit_keys

    study_keys = frozenset(build_parser().get_defaults().keys())
    keys = fit_keys(study_keys)
    assert {"data", "model", "trainer", "early_stopping", "ckpt_path", "weights_only"} <= keys
    assert not keys & study_keys and "config" not in keys
    (workdir / "given.yaml").write_text("weights_only: true\n")
    code = run("--config", "given.yaml")
    assert (
        str(code) == "error: --config given.yaml is a fit config: run it with batchsize-lit fit, or give its keys "
        "as a study's base"
    )
