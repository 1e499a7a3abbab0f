"""Reading a Dapr streaming subscription with a deadline: the SDK's ``next_message`` blocks
until an event comes, so a reader thread hands events over through a queue the test waits
on, never longer than its deadline."""

from __future__ import annotations

import queue
import threading
from typing import Any


class Reader:
    """Reads ``subscription`` (from ``DaprClient.subscribe``) on a thread of its own."""

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription
        self._events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                message = self.subscription.next_message()
            except Exception as e:  # the stream ended (closed by the test) or failed
                self._events.put(e)
                return
            if message is not None:
                self._events.put(message)

    def next(self, timeout: float = 20) -> Any:
        """The next event, waiting at most ``timeout`` seconds."""
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.subscription.close()
        self._thread.join(timeout=10)
