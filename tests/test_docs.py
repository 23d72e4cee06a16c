"""The README's study numbers, tables and figures come from the committed results under docs/results/."""

import json
import math
import random
import subprocess
import sys

import pytest

from batchsize_lit.science import critical_batch_by_target

from helpers import CONFIGS, ROOT, run_cli

# docs/ is no package: the README's cog blocks import readme_parts the same way.
sys.path.insert(0, str(ROOT / "docs"))
import readme_parts

# Each study the README reports has its folder under docs/results/.
DOCUMENTED = sorted(path.parent.name for path in (ROOT / "docs/results").glob("*/results.csv"))
CRITICAL = [study for study in DOCUMENTED if (ROOT / "docs/results" / study / "critical_batch.csv").is_file()]


def compared(study: str) -> list[str]:
    """The results columns a rerun of one of the study's cells must give again: the steps to each target, or else
    the steps and losses."""
    columns = list(readme_parts.rows(study)[0])
    steps = [column for column in columns if column.startswith("steps_to_target")]
    return steps or ["steps", "train_loss", "monitor_best"]


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
    """Two cells picked at random (named in the failure) rerun from the shipped config: the same steps to each
    target, or the same losses."""
    rows = readme_parts.rows(study)
    for index in random.sample(range(len(rows)), 2):
        done = run_cli("study", "--config", str(CONFIGS / f"{study}.yaml"), "--trial_index", str(index),
                       "--root", str(tmp_path), "--name", "rerun", cwd=tmp_path, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        committed = rows[index]
        row = json.loads((tmp_path / "rerun" / committed["cell"] / "result.json").read_text())["row"]
        for column in compared(study):
            expected, got = committed.get(column), row.get(column)
            same = got == expected if isinstance(expected, int) or expected is None else math.isclose(got, expected)
            assert same, f"{study} cell {committed['cell']} (trial_index {index}): {column} {got} != {expected}"
