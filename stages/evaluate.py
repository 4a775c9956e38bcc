"""DVC stage `evaluate`: the same as `colorizer train` (see colorizer.cli); paths come from dvc.yaml."""

import sys

from colorizer.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
