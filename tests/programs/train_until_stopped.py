"""A long training under `run_entry`, as the command runs it, to be stopped by a signal (argv:
shards, output root; run by tests/test_tracking.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: `tests` as a package
from colorizer.runtime import run_entry
from tests.helpers import run_train, tiny_params

sys.exit(run_entry("train", lambda: run_train(tiny_params(epochs=500), Path(sys.argv[1]), Path(sys.argv[2]))))
