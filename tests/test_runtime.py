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
