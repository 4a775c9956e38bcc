"""`python -m colorizer`: the same as the `colorizer` command."""

import sys

from colorizer.cli import main

if __name__ == "__main__":
    sys.exit(main())
