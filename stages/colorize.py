"""DVC stage `colorize`: the same as `colorizer colorize-test` (see colorizer.cli); paths come from dvc.yaml."""

import sys

from colorizer.cli import main

if __name__ == "__main__":
    sys.exit(main(["colorize-test", *sys.argv[1:]]))
