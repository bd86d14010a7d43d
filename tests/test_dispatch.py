"""The engine's threads: a feed whose wait can be bounded, and in-order device workers."""

from __future__ import annotations

import threading
import time

import pytest

from steel_seg.engine.dispatch import DeviceWorker, Feed


def slow_numbers(n: int, seconds: float):
    for i in range(n):
        time.sleep(seconds)
        yield i


def test_feed_yields_in_order_then_stops():
    feed = Feed(iter(range(5)))
    assert [feed.get(timeout=5) for _ in range(5)] == [0, 1, 2, 3, 4]
    for _ in range(2):  # the end stays the end
        with pytest.raises(StopIteration):
            feed.get(timeout=5)


def test_a_bounded_wait_on_the_feed_times_out():
    feed = Feed(slow_numbers(2, 1.0))
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        feed.get(timeout=0.2)
    assert time.perf_counter() - start < 0.9
    assert feed.get(timeout=5) == 0
    feed.close()


def test_the_feed_hands_errors_to_the_consumer():
    def broken():
        yield 1
        raise OSError("disk gone")

    feed = Feed(broken())
    assert feed.get(timeout=5) == 1
    with pytest.raises(OSError, match="disk gone"):
        feed.get(timeout=5)


def test_device_worker_runs_calls_in_order_on_its_own_thread():
    worker, seen = DeviceWorker("w"), []

    def job(i: int) -> str:
        seen.append(i)
        return threading.current_thread().name

    futures = [worker.submit(job, i) for i in range(4)]
    assert [f.result(timeout=5) for f in futures] == ["w"] * 4 and seen == [0, 1, 2, 3]
    failing = worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    assert worker.submit(job, 9).result(timeout=5) == "w"
    worker.close()
