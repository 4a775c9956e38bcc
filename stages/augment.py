"""DVC stage `augment`: the same as `colorizer augment` (see colorizer.cli); paths come from dvc.yaml."""

import sys

from colorizer.cli import main

if __name__ == "__main__":
    sys.exit(main(["augment", *sys.argv[1:]]))
