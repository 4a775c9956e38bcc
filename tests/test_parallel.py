import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import cv2
import numpy as np
import pytest

from colorizer.colorize.lab_kernels import lab_planes_to_rgb8
from colorizer.colorize.worker import STRIP_PIXELS, full_L, recombine
from colorizer.data.images import decode
from colorizer.parallel import INLINE, OrderedMap, RestartingPool, batched, process_pool, thread_pool
from colorizer.runtime import keep_freed_memory
from tests.helpers import PROGRAMS, colourful, encode

INITIALISED = "not yet"


def mark_initialised() -> None:
    global INITIALISED
    INITIALISED = f"initialised at nice {os.nice(0)}"


def report_state() -> tuple[str, int]:
    return INITIALISED, os.nice(0)


def test_workers_run_their_initializer_at_the_asked_priority():
    with process_pool(2, mark_initialised, nice=5, start_now=True) as pool:
        results = [pool.submit(report_state).result(timeout=60) for _ in range(4)]
    expected_nice = min(os.nice(0) + 5, 19)
    # the initializer ran after the priority was lowered (it imports at the lower priority too)
    assert set(results) == {(f"initialised at nice {expected_nice}", expected_nice)}


def thread_state() -> tuple[str, int]:
    return INITIALISED, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_thread_pool_threads_run_at_the_asked_priority_and_the_caller_keeps_its_own():
    global INITIALISED
    INITIALISED = "not yet"
    before = os.nice(0)
    with thread_pool(2, mark_initialised, nice=5) as pool:
        results = {pool.submit(thread_state).result(timeout=60) for _ in range(4)}
    assert os.nice(0) == before  # only the pool's threads were lowered
    if sys.platform.startswith("linux"):  # each thread has its own priority there
        lowered = min(before + 5, 19)
        # ... and the initializer ran after the priority was lowered
        assert results == {(f"initialised at nice {lowered}", lowered)}


def test_a_restarting_pool_fails_the_tasks_in_flight_when_a_worker_dies_then_carries_on():
    pool = RestartingPool(lambda: process_pool(1, start_now=True))
    with pool:
        dying = pool.submit(os._exit, 1)  # as a worker killed for memory would
        with pytest.raises(BrokenProcessPool):
            dying.result(timeout=60)
        assert pool.submit(os.getpid).result(timeout=60) != os.getpid()  # a new pool took over
        assert pool.restarts == 1


def test_a_pool_without_start_now_starts_workers_on_demand():
    with process_pool(1) as pool:
        assert pool.submit(os.getpid).result(timeout=60) != os.getpid()


def test_ordered_map_keeps_the_order_bounds_the_work_in_flight_and_hands_back_errors():
    taken = []
    yielded = []

    def items():
        for i in range(40):
            taken.append(i)
            assert len(taken) - len(yielded) <= 4, "more than window + 1 items taken ahead"
            yield i

    def work(i):
        time.sleep(0.002 * (i % 5))  # later items often finish first
        if i == 7:
            raise ValueError("seven")
        return i * i

    with ThreadPoolExecutor(4) as pool:
        for item, result in OrderedMap(pool, work, items(), window=3):
            yielded.append((item, result))
    assert [item for item, _ in yielded] == list(range(40))
    assert isinstance(yielded[7][1], ValueError) and str(yielded[7][1]) == "seven"
    assert all(result == item * item for item, result in yielded if item != 7)


def test_ordered_map_inline_runs_each_item_as_it_is_taken():
    calls = []
    pairs = list(OrderedMap(INLINE, lambda i: calls.append(i) or -i, iter(range(5)), window=2))
    assert pairs == [(i, -i) for i in range(5)] and calls == list(range(5))
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_started_ordered_map_runs_its_first_window_before_anyone_iterates():
    ran = []
    with ThreadPoolExecutor(2) as pool:
        mapped = OrderedMap(pool, lambda i: ran.append(i) or i + 100, iter(range(10)), window=3).start()
        deadline = time.monotonic() + 5
        while len(ran) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(ran) == [0, 1, 2], "the first window runs at once, and nothing past it"
        assert list(mapped) == [(i, i + 100) for i in range(10)], "then every item once, in order"
    assert sorted(ran) == list(range(10))


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, str(PROGRAMS / "faults_per_reuse.py"), mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    if not sys.platform.startswith("linux"):
        assert keep_freed_memory() is False  # a no-op where there is no glibc
        return
    default, kept = faults("default"), faults("keep")
    assert default > 1000  # glibc maps and unmaps each 64 MB array: its pages are faulted in every time
    assert kept < default / 10  # the same pages, reused


def test_L_of_a_grey_plane_equals_L_of_the_same_photo_in_rgb():
    grey = np.asarray(colourful(90, 70).mean(axis=2), dtype=np.uint8)
    as_grey = decode(encode(grey), 10**7)
    as_rgb = decode(encode(np.repeat(grey[..., None], 3, axis=2)), 10**7)
    assert as_grey.is_grey and not as_rgb.is_grey
    np.testing.assert_allclose(full_L(as_grey), full_L(as_rgb), atol=1e-3)
    np.testing.assert_allclose(full_L(as_grey, (32, 32)), full_L(as_rgb, (32, 32)), atol=1e-3)


@pytest.mark.parametrize("width", [1000, STRIP_PIXELS + 3])  # strips of 65 rows and a short last one; 1-row strips
@pytest.mark.parametrize("grey", [True, False])
def test_recombine_in_strips_equals_the_whole_photo_converted_at_once(width, grey):
    height = 200 if width < STRIP_PIXELS else 3
    photo = colourful(width, height)
    pixels = np.asarray(photo.mean(axis=2), dtype=np.uint8) if grey else photo
    decoded = decode(encode(pixels, "PNG"), 10**7)
    assert decoded.is_grey == grey
    ab_small = np.random.default_rng(0).uniform(-60, 60, (2, 16, 16)).astype(np.float32)
    a, b = (cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in ab_small)
    expected = lab_planes_to_rgb8(full_L(decoded), a, b)
    # a*b* upsampled down the rows inside the conversion: the same up to float rounding (~4e-6),
    # which may take a value that sits on a half level to the other side
    difference = np.abs(recombine(decoded, ab_small).astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-4
