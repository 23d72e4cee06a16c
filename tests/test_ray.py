"""The Ray executor: a clear error without Ray, each cell's resources, and, with Ray, the same results as the local
executor, resume, a crashed worker recorded as a failed cell, and a quiet console."""

import logging
import os
import sys
from pathlib import Path

import pytest

from batchsize_lit import LinearRegressor
from batchsize_lit.study.grid import fit_args
from batchsize_lit.study.ray_executor import cell_options, trainer_setting

from helpers import BASE, ROOT, read_csv, run, run_cli, write_study

SAME = ["cell", "steps", "epochs_run", "train_loss", "val_loss", "test_loss", "weight", "bias", "status"]


class CrashingRegressor(LinearRegressor):
    """The bundled model, except that at lr 0.5 its training step kills the process it runs in, as a segfault or
    the out-of-memory killer would."""

    def training_step(self, batch, batch_idx):
        if self.hparams.lr == 0.5:
            os._exit(3)
        return super().training_step(batch, batch_idx)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs for the module, its workers able to import this file's classes."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:  # workers inherit the environment of the Ray processes started here
        patch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def test_missing_ray_is_one_clear_line_before_anything_runs(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without Ray installed
    code = run("--config", str(write_study(workdir, {"data.batch_size": [8, 64]})), "--executor", "ray")
    assert str(code).startswith("error: ") and "\n" not in str(code)
    assert 'pip install -e ".[ray]"' in str(code)
    assert not (workdir / "lightning_logs").exists()


def test_no_cluster_at_the_address_is_one_clear_line(workdir, monkeypatch):
    ray = pytest.importorskip("ray")

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    config = str(write_study(workdir, {"data.batch_size": [8, 64]}))
    code = run("--config", config, "--executor", "ray", "--ray_address", "auto")
    assert (
        str(code)
        == "error: ray_address=auto: Could not find any running Ray instance. Please specify the one to connect to."
    )
    assert not (workdir / "lightning_logs").exists()


def test_each_cell_asks_for_a_cpu_and_a_gpu_where_its_trainer_uses_one():
    def args(cell: dict, base: dict | None = None) -> list[str]:
        return fit_args(base, cell, Path("lightning_logs/s"), "c")

    cpu = args({}, BASE)
    assert trainer_setting(cpu, "accelerator") == "cpu" and trainer_setting(cpu, "max_epochs") == 3
    assert cell_options(cpu, None, cluster_gpus=4) == {"num_cpus": 1, "num_gpus": 0}
    assert cell_options(args({"trainer.accelerator": "gpu"}, BASE), None, 0) == {"num_cpus": 1, "num_gpus": 1}
    assert cell_options(args({}, {"trainer": {"accelerator": "cuda"}}), None, 0)["num_gpus"] == 1
    assert cell_options(args({}), None, cluster_gpus=0)["num_gpus"] == 0  # auto: a GPU where the cluster has one
    assert cell_options(args({}), None, cluster_gpus=2)["num_gpus"] == 1
    resources = {"num_cpus": 2, "num_gpus": 0.5, "memory": 1e9, "fast_disk": 1}
    assert cell_options(cpu, resources, 0) == {"num_cpus": 2, "num_gpus": 0.5, "memory": 1e9,
                                               "resources": {"fast_disk": 1}}  # fmt: skip


@pytest.mark.slow
def test_ray_gives_the_local_results_and_resumes(ray_cluster, workdir, capsys):
    grid = {"data.batch_size": [8, 64]}
    assert run("--config", str(write_study(workdir, grid, name="local")), "--jobs", "1") == 0
    config = str(write_study(workdir, grid, name="onray"))
    capsys.readouterr()
    assert run("--config", config, "--executor", "ray") == 0
    out = capsys.readouterr().out
    assert "[1/2] " in out and "[2/2] " in out and "ETA" in out
    local, on_ray = (read_csv(workdir / "lightning_logs" / name / "results.csv") for name in ("local", "onray"))
    assert [row["cell"] for row in on_ray] == ["bs8", "bs64"]
    for one, two in zip(local, on_ray, strict=True):
        for key in SAME:
            assert one[key] == two[key], key
    folder = workdir / "lightning_logs" / "onray"
    assert all((folder / cell / "checkpoints").is_dir() for cell in ["bs8", "bs64"])  # the workers ran here too
    assert not (ROOT / "lightning_logs" / "onray").exists()
    done = {cell: (folder / cell / "result.json").stat().st_mtime_ns for cell in ["bs8", "bs64"]}

    assert run("--config", config, "--executor", "ray") == 0
    assert "2 cell(s) already done" in capsys.readouterr().out
    assert {cell: (folder / cell / "result.json").stat().st_mtime_ns for cell in done} == done
    assert read_csv(folder / "results.csv") == on_ray
    assert ray_cluster.is_initialized()  # a Ray instance the study did not start is left running


@pytest.mark.slow
def test_a_crashed_worker_is_a_failed_cell_and_the_study_goes_on(ray_cluster, workdir, capsys):
    base = {**BASE, "model": {"class_path": "test_ray.CrashingRegressor"}}
    config = write_study(workdir, {"model.lr": [0.5, 0.1]}, base=base)
    assert run("--config", str(config), "--executor", "ray") == 1
    captured = capsys.readouterr()
    assert "cell lr0.5 failed: " in captured.err and "1 cell(s) failed: lr0.5" in captured.out
    folder = workdir / "lightning_logs" / "tiny"
    rows = read_csv(folder / "results.csv")
    assert [(row["cell"], row["status"]) for row in rows] == [("lr0.5", "failed"), ("lr0.1", "ok")]
    assert rows[0]["batch_size"] == rows[1]["batch_size"] == "32" and rows[0]["epochs_run"] == "0"
    assert "WorkerCrashedError" in (folder / "lr0.5" / "traceback.txt").read_text()


@pytest.mark.slow
def test_a_config_every_cell_would_fail_on_stops_the_study_in_one_line(ray_cluster, workdir):
    base = {**BASE, "early_stopping": {"monitor": "val_los"}}
    config = write_study(workdir, {"model.lr": [0.1, 0.2, 0.3]}, base=base)
    line = str(run("--config", str(config), "--executor", "ray"))
    assert line.startswith("error: cell lr0.") and "early_stopping.monitor='val_los' is not logged" in line
    assert "\n" not in line and not list((workdir / "lightning_logs/tiny").glob("*/result.json"))


@pytest.mark.slow
def test_the_command_starts_ray_and_keeps_the_console_to_its_own_lines(tmp_path):
    pytest.importorskip("ray")
    config = write_study(tmp_path, {"data.batch_size": [8, 64]})
    result = run_cli("study", "--config", str(config), "--executor", "ray", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["[1/2]", "[2/2]"] and lines[2].startswith("cell ")
    assert len(read_csv(tmp_path / "lightning_logs" / "tiny" / "results.csv")) == 2
