"""The README's numbers come from the committed study results and benchmark records under docs/results/."""

import json
import math
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from batchsize_lit.science import critical_batch_by_target

from helpers import CONFIGS, ROOT, run_cli

# docs/ is no package: the README's cog blocks import readme_parts the same way.
sys.path.insert(0, str(ROOT / "docs"))
import readme_parts

# Each study the README reports has its folder under docs/results/.
DOCUMENTED = sorted(path.parent.name for path in (ROOT / "docs/results").glob("*/results.csv"))
CRITICAL = [study for study in DOCUMENTED if (ROOT / "docs/results" / study / "critical_batch.csv").is_file()]
# What a benchmark record's header and JSON say of the machine, so that a reader can weigh its numbers.
MACHINE = {"cpus", "cpu_model", "load_average_start", "load_average_end", "gpu", "torch", "lightning", "commit"}


def compared(study: str) -> list[str]:
    """The results columns a rerun of one of the study's cells must give again: the steps to each target, or else
    the steps and losses."""
    columns = list(readme_parts.rows(study)[0])
    steps = [column for column in columns if column.startswith("steps_to_target")]
    return steps or ["steps", "train_loss", "monitor_best"]


def stable_cells(rows: list[dict], columns: list[str]) -> list[int]:
    """The cells away from the edge of stability: below the grid's largest learning rate, with every seed of their
    setting ok and its steps to each target within 50% of their mean. At the edge an ulp of another CPU's rounding
    (AVX-512 kernels against AVX2 ones) moves a target by dozens of steps: measured, digits at batch 512 and lr 1.6,
    seed 4, reached it at step 109 on one CPU and 75 on another."""
    targets = [column for column in columns if column.startswith("steps_to_target")]
    top = max((row["lr"] for row in rows if row.get("lr") is not None), default=None)
    setting = lambda row: (row.get("batch_size"), row.get("lr"), row.get("max_epochs"))  # noqa: E731
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(setting(row), []).append(row)

    def stable(group: list[dict]) -> bool:
        if any(row["status"] != "ok" for row in group) or (targets and group[0].get("lr") == top):
            return False
        for column in targets:
            steps = [row[column] for row in group]
            if any(step is None for step in steps):
                return False
            mean = sum(steps) / len(steps)
            if max(abs(step - mean) for step in steps) > 0.5 * mean:
                return False
        return True

    return [index for index, row in enumerate(rows) if stable(groups[setting(row)])]


def test_the_readme_is_what_the_committed_results_generate():
    """`cog -r README.md` regenerates it; a number typed by hand, or results changed without it, fail here."""
    check = subprocess.run([sys.executable, "-m", "cogapp", "--check", "--diff", "README.md"], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("study", DOCUMENTED)
def test_each_documented_study_commits_its_results(study):
    assert {"study_seed", "study_critical_batch", "study_digits_critical_batch"} <= set(DOCUMENTED)
    rows = readme_parts.rows(study)
    assert rows and all(row["status"] in ("ok", "diverged") for row in rows)
    if study in CRITICAL:
        assert len(readme_parts.critical(study)) >= 3  # B_crit at 3 targets or more
    if study in ("study_critical_batch", "study_digits_critical_batch"):
        assert len({row["seed"] for row in rows}) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("study", CRITICAL)
def test_the_committed_critical_batch_csv_is_what_its_results_give(study):
    """critical_batch.csv is the study's fit of its committed results.csv, bootstrap included."""
    fits = critical_batch_by_target(readme_parts.rows(study))
    committed = readme_parts.critical(study)
    assert len(fits) == len(committed)
    for found, row in zip(fits, committed, strict=True):
        assert found["target"] == pytest.approx(row["target"], rel=1e-12)
        for key in ["b_crit", "b_crit_low", "b_crit_high", "s_min", "e_min", "b_simple", "b_noise"]:
            if row[key] is not None:  # no B_noise for a model too large for its Hessian
                assert found["fit"][key] == pytest.approx(row[key], rel=1e-9), key


@pytest.mark.slow
@pytest.mark.parametrize("study", DOCUMENTED)
def test_a_rerun_of_random_cells_gives_the_committed_rows(study, tmp_path):
    """Two cells picked at random among the stable ones (named in the failure) rerun from the shipped config: the
    same steps to each target, and the same losses up to float32 rounding."""
    rows = readme_parts.rows(study)
    for index in random.sample(stable_cells(rows, compared(study)), 2):
        done = run_cli("study", "--config", str(CONFIGS / f"{study}.yaml"), "--trial_index", str(index),
                       "--root", str(tmp_path), "--name", "rerun", cwd=tmp_path, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        committed = rows[index]
        row = json.loads((tmp_path / "rerun" / committed["cell"] / "result.json").read_text())["row"]
        for column in compared(study):
            expected, got = committed.get(column), row.get(column)
            # float32 values to rounding: another CPU's kernels (AVX-512 against AVX2) may sum in another order
            same = (
                got == expected
                if isinstance(expected, int) or expected is None
                else math.isclose(got, expected, rel_tol=1e-5)
            )
            assert same, f"{study} cell {committed['cell']} (trial_index {index}): {column} {got} != {expected}"


@pytest.mark.parametrize("name", list(readme_parts.RECORDED))
def test_each_benchmark_record_the_readme_reads_is_committed_whole(name):
    """The README's performance and cohort numbers come from these files; cog --check cannot tell a record that was
    never written from one the README does not use, so each must be here: the output under its header, the key
    numbers with the machine."""
    assert f'"{name}"' in (ROOT / "README.md").read_text(), f"the README reads no record of {name}"
    record = readme_parts.bench(name)
    script = record["command"].split()[1]  # a benchmark's record, or one of its configs' (cohorts_study_...)
    assert record["command"].startswith("python benchmarks/") and "--record" in record["command"]
    assert name == Path(script).stem or name.startswith(f"{Path(script).stem}_"), record["command"]
    assert set(record["machine"]) >= MACHINE and record["numbers"], record
    header = (readme_parts.BENCHMARKS / f"{name}.txt").read_text().split("\n# ")
    assert header[0] == f"# {record['command']}" and f"torch {record['machine']['torch']}" in header[-1]
    assert readme_parts.bench_output(name).count("\n") > 2  # the printed table, not just the header


def test_record_writes_what_a_benchmark_prints_and_its_numbers(tmp_path, capsys):
    """--record: the console output unchanged, the same text under the header, the numbers in the JSON; a run that
    fails leaves the last record as it was."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import record

    console = sys.stdout
    with record.Recording("demo", str(tmp_path)) as numbers:
        print("n ratio\n1 1.234567")
        numbers["ratio"] = 1.2345678
    assert sys.stdout is console and capsys.readouterr().out.startswith("n ratio\n1 1.234567\n")
    text = (tmp_path / "demo.txt").read_text()
    header = [line for line in text.splitlines() if line.startswith("# ")]
    assert header[0] == f"# {shlex.join(['python', 'benchmarks/' + Path(sys.argv[0]).name, *sys.argv[1:]])}"
    assert len(header) == 4 and text.endswith("\nn ratio\n1 1.234567\n")
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["numbers"] == {"ratio": 1.2346} and set(saved["machine"]) >= MACHINE
    with pytest.raises(RuntimeError), record.Recording("demo", str(tmp_path)):
        print("half a table")
        raise RuntimeError
    assert sys.stdout is console and (tmp_path / "demo.txt").read_text() == text


@pytest.mark.slow
def test_a_benchmark_run_with_record_writes_its_table_and_rows(tmp_path):
    """A real benchmark, small: its --help documents --record, and the recorded rows are the printed ones."""
    script = str(ROOT / "benchmarks/data_path.py")
    assert "--record" in subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True).stdout
    done = subprocess.run([sys.executable, script, "--sizes", "1000", "--batches", "16,128", "--repeats", "1",
                           "--record", str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "data_path.json").read_text())["numbers"]["rows"]
    assert [(row["n"], row["batch"]) for row in rows] == [(1000, 16), (1000, 128)]
    printed = (tmp_path / "data_path.txt").read_text().splitlines()[-2:]
    assert [line.split()[:3] for line in printed] == [
        [str(row["n"]), str(row["batch"]), str(row["batches"])] for row in rows
    ]
