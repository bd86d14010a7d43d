"""The inference engine's threads: the decode feed and one worker per device.

`Feed` iterates a DataLoader on its own thread, so the engine can stop waiting for the next batch at its
deadline (`get(timeout)`). `DeviceWorker` runs one replica's batches in order on its own thread (CUDA kernels
and most CPU ops release the GIL, so D workers keep D devices busy); `submit` returns a Future. Both are
daemon threads: a batch still running when the deadline passes cannot keep the process alive. Otherwise the
engine waits for them to end (`close(wait=True)`): a daemon thread still inside torch or the DataLoader's
shutdown when the interpreter exits aborts the process ("terminate called without an active exception",
exit 134), after every output was written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

_END = object()
_POLL_S = 0.1


class Feed:
    """The items of `iterable`, produced ahead on a daemon thread (at most `depth` waiting)."""

    def __init__(self, iterable: Iterable, depth: int = 2, name: str = "feed"):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iterable,), name=name, daemon=True)
        self._thread.start()

    def _fill(self, iterable: Iterable) -> None:
        try:
            for item in iterable:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: Any) -> bool:
        """Queue `item` unless the feed was closed meanwhile; False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float | None = None) -> Any:
        """The next item.

        Raises:
            StopIteration: the iterable is exhausted.
            TimeoutError: nothing arrived within `timeout` seconds.
            BaseException: whatever the iterable raised.
        """
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no item within {timeout:.1f}s") from None
        if item is _END:
            self._queue.put(_END)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, wait: bool = False) -> None:
        """Stop producing (an item being produced is finished and dropped); with `wait`, until the thread and
        the iterable's own clean-up (a DataLoader's worker processes) have ended."""
        self._stop.set()
        if wait:
            self._thread.join()


class DeviceWorker:
    """One daemon thread that runs submitted calls in order."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the caller sees it from future.result()
                future.set_exception(exc)

    def close(self, wait: bool = False) -> None:
        """End the thread after the calls already submitted; with `wait`, until it has ended."""
        self._jobs.put((None, None, None))
        if wait:
            self._thread.join()
