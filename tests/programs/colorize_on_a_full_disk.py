"""`colorizer colorize SRC DST --model MODEL` in a process whose files may not grow past LIMIT
bytes (argv 4): a write past it fails as on a full disk (run by tests/test_colorize.py)."""

import resource
import signal
import sys

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[4]), int(sys.argv[4])))
from colorizer.cli import main  # noqa: E402 - after the limits

sys.exit(main(["colorize", sys.argv[1], sys.argv[2], "--model", sys.argv[3], "--workers", "1"]))
