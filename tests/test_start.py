"""The start of a command in a terminal: a line at once, before Lightning's import, cleared when the command speaks."""

import os
import re
import subprocess
import sys
import time

import pytest

from batchsize_lit.__main__ import starting_line

from helpers import CONFIGS

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")


def in_a_terminal(args: list[str], cwd: str, until: re.Pattern | None = None, timeout: float = 120) -> str:
    """What ``python ARGS`` writes to a pseudo-terminal (stdout and stderr both), up to ``until`` or its exit."""
    primary, secondary = os.openpty()
    env = {key: value for key, value in os.environ.items() if key not in ("JSONARGPARSE_DEBUG", "LOCAL_RANK")}
    process = subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    text, deadline = "", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not (until and until.search(text)):
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the other end closed: the process exited
                break
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    finally:
        process.kill()
        process.wait()
        os.close(primary)
    return text


def screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: a carriage return moves back to the line's start and overwrites."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part) :]
        lines.append(line.rstrip())
    return [line for line in lines if line]


def test_a_fit_shows_its_line_before_lightning_is_imported(tmp_path):
    """``-X importtime`` writes a line as each import ends, to the same terminal: the start line comes first."""
    marker = re.compile(r"\|\s+(torch|lightning)(\.|\s*$)", re.MULTILINE)
    args = ["-X", "importtime", "-m", "batchsize_lit", "fit", "--config", str(CONFIGS / "b16.yaml")]
    text = in_a_terminal(args, str(tmp_path), until=marker)
    first = marker.search(text)
    assert first, text[-2000:]
    line = f"starting fit ({CONFIGS / 'b16.yaml'}): importing Lightning ..."
    assert line in text[: first.start()], text[: first.start()][-2000:]


def test_in_a_terminal_bad_input_still_leaves_its_one_line(tmp_path):
    """The start line is blanked before the command's own output: the screen holds the error alone."""
    text = in_a_terminal(["-m", "batchsize_lit", "fit", "--data.batch_size=0"], str(tmp_path))
    assert text.startswith("starting fit: importing Lightning ..."), text
    assert screen(text) == ["error: data.batch_size=0 must be a positive integer"], text
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["fit", "--config", "a.yaml", "--config=b.yaml"], "starting fit (a.yaml, b.yaml): importing Lightning ..."),
        (["study", "-c", "s.yaml", "--jobs", "2"], "starting study (s.yaml): importing Lightning ..."),
        (["validate", "--ckpt_path", "last"], "starting validate: importing Lightning ..."),
        (["fit", "--config", "a.yaml", "--help"], None),
        (["fit", "--print_config=skip_null"], None),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_line_names_a_run_and_its_configs_and_nothing_else(argv, line):
    assert starting_line(argv) == line
