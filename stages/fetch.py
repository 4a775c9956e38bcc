"""DVC stage `fetch`: the same as `colorizer fetch` (see colorizer.cli); paths come from dvc.yaml."""

import sys

from colorizer.cli import main

if __name__ == "__main__":
    sys.exit(main(["fetch", *sys.argv[1:]]))
