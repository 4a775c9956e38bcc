"""Process-wide settings, made once by the entry points (`colorizer`, the stage scripts, bench)
before torch loads; importing the library changes nothing process-wide. Also where an entry point
turns a user's mistake into one line and an exit code.

Keep freed memory for reuse instead of handing it straight back to the operating system: glibc
serves every large allocation with its own `mmap` and returns it with `munmap` when freed, so each
training step's activations, each inference batch, and each photo's full-size planes in
colorize's workers come back as fresh pages that the kernel must fault in and zero again: a large
share of training, inference and a worker's time per photo on a 2-core machine (`make bench` runs
the naive references with the process defaults). PyTorch's CPU tuning guide
fixes this by preloading jemalloc or tcmalloc; glibc's own `mallopt` gets the same effect with no
extra dependency and nothing to preload. Memory freed stays in the process for its next use (peak
use is unchanged; the process just does not shrink back between batches).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import inspect
import logging
import os
import resource  # here, not where memory has run out: loading it then may fail to map too
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Errors of the storage, not of the program: a full disk or quota, a failing device, a read-only mount.
# seconds a storage may keep colorize waiting (storage.timeout_seconds); named here for the message
STORAGE_TIMEOUT_VARIABLE = "COLORIZER_STORAGE_TIMEOUT"
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def keep_freed_memory(up_to_bytes: int = 1 << 30) -> bool:
    """Make this process reuse freed memory (glibc on Linux): blocks up to `up_to_bytes` come from the
    heap, and up to that much free heap is kept rather than returned. True if the allocator took it.
    Process-wide and idempotent; elsewhere (macOS, musl) a no-op that returns False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, up_to_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, up_to_bytes))


def setup_process(keep_memory: bool = True) -> None:
    """The speed settings of every entry point; call it first, before torch is imported.

    torch's OpenMP threads busy-wait ~300k spins after every parallel region before they sleep. When
    the main process then waits on worker processes (colorize's decoders and writers, the data
    loader), the spinning takes the cores those workers need: 1000 spins made `colorize` faster end
    to end on a 2-core machine and left training speed unchanged (measured with `make bench`).
    libgomp reads the variable once, when torch loads. A value the user set is kept."""
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    # albumentations asks PyPI for a newer release when it is imported; this pipeline runs offline
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    for stream in ("stdout", "stderr"):  # closed by the caller (`2>&-`): write nowhere rather than fail
        if getattr(sys, stream) is None:
            setattr(sys, stream, open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    if keep_memory:
        keep_freed_memory()
    # A scheduler's SIGTERM (a cluster job's time limit, `kill`) ends a run as Ctrl-C does: training
    # marks its MLflow run KILLED and keeps its checkpoint, colorize writes its report.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def stop_with_parent(period_seconds: float = 1.0) -> None:
    """Stop this process, as SIGTERM does (a trainer keeps its checkpoint and marks its MLflow run
    KILLED), when the process that started it dies: a `dvc repro` killed with -9 or SIGTERM would
    otherwise leave its stage running alone while the next `dvc repro` starts a second one. The
    launchers between dvc and this process outlive dvc and are looked through (`launchers`). A
    thread polls the pids (portable, and unlike prctl's parent-death signal it is not fooled by the
    parent's starting thread ending)."""
    parent = os.getppid()
    watched = launchers(parent, under_torchrun="TORCHELASTIC_RUN_ID" in os.environ)

    def watch() -> None:
        while os.getppid() == parent and all(_alive(pid) for pid in watched):
            time.sleep(period_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


_SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"}


def launchers(parent: int, under_torchrun: bool) -> list[int]:
    """The processes whose death means this one's starter died: `parent`, and above it, while the
    one looked at merely relays a command, its parent too. Relays are torchrun's agent and a shell
    running `-c CMD` (how dvc runs a stage's cmd: `$SHELL -c`, or `/bin/sh -c` when SHELL is unset;
    bash replaces itself with a lone command but dash does not, so the shell may sit between dvc and
    torchrun and outlive dvc). The first process that is neither (dvc, a batch script, a terminal's
    shell) is the last one watched, so a user's `nohup dvc repro &` still survives its terminal.
    Without /proc (not Linux) only `parent`."""
    chain = [parent]
    relays = under_torchrun or _runs_a_command_string(parent)  # under torchrun the parent is its agent
    while relays and len(chain) < 8:
        above = _parent_of(chain[-1])
        if not above or above <= 1:
            break
        chain.append(above)
        relays = _runs_a_command_string(above)
    return chain


def _runs_a_command_string(pid: int) -> bool:
    """A shell started as `sh -c CMD`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    name = os.path.basename(argv[0].decode(errors="replace")).lstrip("-")
    return name in _SHELLS and b"-c" in argv[1:]


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None  # not Linux, or gone


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (dead, its exit status not yet collected)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def setup_logging(verbosity: int = 0) -> None:
    """How much the library's loggers (colorizer.*) show on stderr: -q (verbosity < 0) warnings and
    errors only, and no progress bars; by default also progress and each step's summary; -v debug
    details (workers, devices, precision) too. The library itself only logs: choosing is the entry
    point's job, so a program that imports colorizer keeps its own logging set-up."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"))
    logger = logging.getLogger("colorizer")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def run_entry(name: str, work: Callable[[], int | None]) -> int:
    """Run an entry point's work: a user's mistake (UserError, a missing file) or a full or failing
    disk is one line on stderr and exit code 2, Ctrl-C or SIGTERM is exit code 130, anything else a
    traceback (a bug)."""
    from colorizer import fast
    from colorizer.config import UserError

    try:
        fast.enabled()  # a mistyped COLORIZER_FAST is this one line, before any work
        return work() or 0
    except BrokenPipeError:
        # the reader went away (`colorizer colorize --dry-run | head -1`): what it read was whole; as
        # Python's docs advise, point stdout at devnull so the exit's flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command a pipe's reader stopped
    except (UserError, FileNotFoundError) as e:
        print(f"colorizer {name}: {e}", file=sys.stderr)
        return 2
    except TimeoutError as e:  # a storage that stopped answering (fsspec's and socket timeouts)
        print(
            f"colorizer {name}: the storage did not answer in time ({e or 'timed out'}); every output written so "
            f"far is complete: check it and rerun to go on ({STORAGE_TIMEOUT_VARIABLE} sets the wait in seconds)",
            file=sys.stderr,
        )
        return 2
    except MemoryError:
        return _out_of_memory(name, "MemoryError")
    except ImportError as e:  # a library that could not be mapped into a limited address space
        if not _memory_failure(e):
            raise
        return _out_of_memory(name, str(e))
    except OSError as e:
        if _memory_failure(e):
            return _out_of_memory(name, e.strerror or str(e))
        if e.errno not in STORAGE_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"colorizer {name}: {where}{e.strerror or e}; every output written so far is complete "
            "(written whole, then renamed): fix the storage and rerun to go on",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"colorizer {name}: interrupted", file=sys.stderr)
        return 130


def leave_blocked_threads(code: int, grace_seconds: float = 5.0) -> None:
    """After Ctrl-C or SIGTERM (exit code 130), with the report written: a worker thread blocked in a
    read (a hung network mount, a server that stopped answering) would hold the interpreter's exit
    forever, since it joins every worker thread. The workers get `grace_seconds` to finish; then the
    process leaves without them."""
    if code != 130:
        return
    deadline = time.monotonic() + grace_seconds
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in others):
        print(
            f"colorizer: {sum(t.is_alive() for t in others)} worker(s) still blocked (in a read?): leaving them",
            file=sys.stderr,
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


MEMORY_MESSAGES = ("failed to map segment", "unable to mmap", "cannot allocate memory", "out of memory")


def _address_space_limit() -> int | None:
    """This process's address-space limit in bytes (`ulimit -v`), or None where there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _memory_failure(e: BaseException) -> bool:
    """Whether an error is memory running out: ENOMEM, a mapping refused, or, under an address-space
    limit, a shared library that could not be loaded (what a library reports when its mmap fails)."""
    text = str(e).lower()
    if getattr(e, "errno", None) == errno.ENOMEM or any(message in text for message in MEMORY_MESSAGES):
        return True
    return _address_space_limit() is not None and ("shared object" in text or ".so" in text)


def _out_of_memory(name: str, detail: str) -> int:
    limit = _address_space_limit()
    where = f"; this process may map {limit / 2**30:.2f} GiB (ulimit -v): raise that" if limit else ""
    print(
        f"colorizer {name}: out of memory ({detail.splitlines()[0][:160]}){where}, or lower --batch-size "
        "and --workers; every output written so far is complete",
        file=sys.stderr,
    )
    return 2


def stage_main(work: Callable[..., object], distributed: bool = False) -> int:
    """The entry point of a DVC stage script: its paths come from dvc.yaml as `--name value` flags,
    one per parameter of `work` (all paths), and `work` loads its params section and calls the
    library. Call it with the stage's function; the stage, the script and the function share a name.
    `distributed`: with train.nproc_per_node > 1 the script hands itself over to torchrun (one
    process per rank); with one rank it runs here, so an error is its one line, not torchrun's
    report of a failed child around it."""
    name = work.__name__
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py", description=inspect.getdoc(work))
    for parameter in inspect.signature(work).parameters:
        parser.add_argument(f"--{parameter.replace('_', '-')}", type=Path, required=True, dest=parameter)
    args = parser.parse_args()
    if distributed and "LOCAL_RANK" not in os.environ and (ranks := _ranks_asked()) > 1:
        script = sys.argv[0]
        print(f"{name}: torchrun --standalone --nproc-per-node={ranks} {' '.join(sys.argv)}", flush=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        os.execv(sys.executable, [*command, script, *sys.argv[1:]])  # in this process's place: DVC's signals reach it
    setup_process()
    setup_logging()
    stop_with_parent()
    return run_entry(name, lambda: work(**vars(args)))


def _ranks_asked() -> int:
    """train.nproc_per_node, or 1 where params.yaml can't be read (the stage then says why)."""
    from colorizer.config import UserError, load_params

    try:
        return load_params().train.nproc_per_node
    except UserError:
        return 1
