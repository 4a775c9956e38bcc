"""A training long enough to be interrupted (argv: shards, output root; run by tests/test_train.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: `tests` as a package
from tests.helpers import run_train, tiny_params

run_train(tiny_params(epochs=500), Path(sys.argv[1]), Path(sys.argv[2]))
