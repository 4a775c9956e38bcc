"""DVC stage `shard`: the same as `colorizer shard` (see colorizer.cli); paths come from dvc.yaml."""

import sys

from colorizer.cli import main

if __name__ == "__main__":
    sys.exit(main(["shard", *sys.argv[1:]]))
