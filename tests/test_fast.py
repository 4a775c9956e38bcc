"""The switch of every fast path (`colorizer.fast`): its variable, its scope, and the fallback of a
fast path whose private API this torch or numba lacks. The paths themselves are compared with their
plain twins in test_fused_blocks, test_models, test_inference, test_optimizers and test_colorize."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from colorizer import fast
from colorizer.training import optimizers
from colorizer.training.optimizers import ChannelsLastAdam


def test_a_fast_path_whose_private_api_is_missing_warns_once_and_runs_plain(caplog):
    calls = []

    def probe():
        calls.append(1)
        raise AttributeError("module 'torch.ops.mkldnn' has no attribute '_convolution_pointwise'")

    with caplog.at_level(logging.WARNING, logger="colorizer"), fast.enabled_as(True):
        assert not fast.usable("a test path", probe)
        assert not fast.usable("a test path", probe)
    assert calls == [1]  # probed once per process
    [record] = caplog.records
    assert "a test path: not available" in record.getMessage() and "plain path runs instead" in record.getMessage()


def test_with_the_switch_off_nothing_is_probed_and_every_path_is_plain():
    def probe():
        raise AssertionError("probed with the fast paths off")

    before = fast.enabled()
    with fast.enabled_as(False):
        assert not fast.enabled() and not fast.usable("another test path", probe)
        assert type(optimizers.adam(torch.nn.Linear(2, 2).parameters(), 1e-3, (0.5, 0.999))) is torch.optim.Adam
    assert fast.enabled() == before
    with fast.enabled_as(True):
        assert isinstance(optimizers.adam(torch.nn.Linear(2, 2).parameters(), 1e-3, (0.5, 0.999)), ChannelsLastAdam)


def test_the_switch_reaches_the_processes_this_one_starts():
    program = "from colorizer import fast; print(fast.enabled())"
    variable_before = os.environ.get(fast.VARIABLE)
    for on in (False, True):
        with fast.enabled_as(on):
            assert os.environ[fast.VARIABLE] == ("1" if on else "0")
            done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == str(on)
    assert os.environ.get(fast.VARIABLE) == variable_before


@pytest.mark.parametrize(("value", "expected"), [("0", "False"), ("off", "False"), ("1", "True"), ("", "True")])
def test_the_variable(value, expected):
    program = "from colorizer import fast; print(fast.enabled())"
    environment = os.environ | {fast.VARIABLE: value}
    done = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


def test_a_mistyped_variable_stops_a_command_with_one_line(tmp_path):
    environment = os.environ | {fast.VARIABLE: "fastest"}
    command = [sys.executable, "-m", "colorizer", "colorize", str(tmp_path), str(tmp_path / "out")]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "colorizer colorize: COLORIZER_FAST='fastest': use 1 (the fast paths, the default) or 0 (the plain ones)"
    ]
