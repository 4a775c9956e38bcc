"""Import every module of the library and print what process state changed meanwhile: environment
variables, the umask, signal handlers, the working directory, torch's and OpenCV's thread counts,
and the logging configuration (run by tests/test_runtime.py: it must print nothing)."""

import importlib
import logging
import os
import pkgutil
import signal

os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # no request to PyPI from this test
import albumentations  # noqa: E402, F401 - the libraries' own import effects are theirs (MLflow sets a variable)
import cv2  # noqa: E402
import mlflow.pyfunc  # noqa: E402, F401
import numba  # noqa: E402, F401
import torch  # noqa: E402

import colorizer  # noqa: E402

del os.environ["NO_ALBUMENTATIONS_UPDATE"]
calls = []  # a umask or signal set and set back is a change too, while it lasts (another thread sees it)
for module, name in ((os, "umask"), (signal, "signal")):
    original = getattr(module, name)
    setattr(module, name, lambda *args, _f=original, _n=name: calls.append(_n) or _f(*args))


def umask() -> str:
    with open("/proc/self/status") as status:
        return next(line for line in status if line.startswith("Umask:"))


def state() -> dict:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    root = logging.getLogger()
    return {
        "environment": dict(os.environ),
        "umask": umask(),
        "signals": handlers,
        "cwd": os.getcwd(),
        "threads": (torch.get_num_threads(), cv2.getNumThreads()),
        "logging": (root.level, list(root.handlers), logging.getLogger("colorizer").level),
    }


before = state()
skipped = {"colorizer.__main__", "colorizer.serving.model_from_code"}  # entry point; MLflow runs it when loading
for module in pkgutil.walk_packages(colorizer.__path__, "colorizer."):
    if module.name not in skipped:
        importlib.import_module(module.name)
after = state()
if calls:
    print("called", sorted(set(calls)))
for key in before:
    if before[key] != after[key]:
        if key == "environment":
            changed = {k for k in set(before[key]) | set(after[key]) if before[key].get(k) != after[key].get(k)}
            print(key, sorted(changed))
        else:
            print(key, before[key], "->", after[key])
