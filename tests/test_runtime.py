"""The entry points' process set-up, with real processes: who started a stage, and stopping with it."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from colorizer.runtime import launchers
from tests.helpers import PROGRAMS

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

PRINT_LAUNCHERS = "import os; from colorizer.runtime import launchers; print(launchers(os.getppid(), False))"


def test_a_shell_running_the_command_is_looked_through_to_the_process_that_started_it():
    # dvc runs a stage as `$SHELL -c CMD`; dash (/bin/sh here) stays between them instead of exec'ing
    shell = subprocess.Popen(
        ["/bin/sh", "-c", f'"{sys.executable}" -c "{PRINT_LAUNCHERS}"; true'], stdout=subprocess.PIPE, text=True
    )
    out, _ = shell.communicate(timeout=60)
    assert out.strip() == str([shell.pid, os.getpid()])


def test_a_parent_that_is_not_a_relay_is_the_only_one_watched():
    out = subprocess.run([sys.executable, "-c", PRINT_LAUNCHERS], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([os.getpid()])
    assert launchers(os.getpid(), False) == [os.getpid()]


def test_the_stage_stops_when_its_starter_dies_though_the_shell_between_them_lives_on(tmp_path):
    stage = tmp_path / "stage.py"
    stage.write_text(
        textwrap.dedent(
            """
            import sys, time
            from colorizer.runtime import setup_process, stop_with_parent
            setup_process(keep_memory=False)
            stop_with_parent(period_seconds=0.1)
            open(sys.argv[1] + ".started", "w").close()
            try:
                time.sleep(120)
            except KeyboardInterrupt:  # what SIGTERM becomes: the stage's clean way out
                open(sys.argv[1] + ".stopped", "w").close()
            """
        )
    )
    mark = tmp_path / "mark"
    # stands in for dvc: starts the stage through `/bin/sh -c`, then waits on it
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.run(['/bin/sh', '-c', sys.argv[1]])",
            f'"{sys.executable}" "{stage}" "{mark}"; true',
        ]
    )
    deadline = time.monotonic() + 60
    while not Path(f"{mark}.started").exists():
        assert starter.poll() is None and time.monotonic() < deadline, "the stage did not start"
        time.sleep(0.05)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 20
    while not Path(f"{mark}.stopped").exists():
        assert time.monotonic() < deadline, "the stage went on alone after its starter died"
        time.sleep(0.05)


def test_an_address_space_limit_is_one_line_not_a_traceback(tmp_path):
    """`ulimit -v`: whichever library fails to map first (torch's, numba's, numpy's), the run ends
    with one line that says memory ran out and what the limit is."""
    import numpy as np
    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.fromarray(np.full((30, 40), 128, np.uint8)).save(tmp_path / "src" / "a.png")
    colorizer = Path(sys.executable).with_name("colorizer")
    refused = 0
    for kilobytes in (300_000, 600_000):
        done = subprocess.run(
            [
                "bash",
                "-c",
                f'ulimit -v {kilobytes}; exec "$0" colorize "$1" "$2" --workers 1',
                colorizer,
                tmp_path / "src",
                tmp_path / f"dst-{kilobytes}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0:  # this machine's libraries fit: nothing to see at this limit
            continue
        assert done.returncode == 2, done.stderr[-2000:]
        [line] = done.stderr.strip().splitlines()
        assert "out of memory" in line and "ulimit -v" in line
        refused += 1
    assert refused  # 300 MB never holds torch


def test_importing_any_module_changes_no_process_state():
    """colorizer/__init__.py's promise, checked for every module: entry points make the process-wide
    settings (`setup_process`), importing the library makes none (its libraries, imported first,
    keep their own import effects)."""
    done = subprocess.run(
        [sys.executable, str(PROGRAMS / "import_every_module.py")],
        env={k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
