"""The loop's threads: proposal threads put checked candidates on a queue, evaluation workers take them off.

At most `workers + ahead` candidates are proposed and not yet evaluated (the slots): with a slow language model
a proposal is made while the GPUs train, and with `ahead=0` and one worker every proposal waits for, and learns
from, every result before it. Nothing here knows what a candidate is: `produce` and `consume` are the stages."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")


class Next(Enum):
    """What `produce` may return instead of an item."""

    SKIP = "nothing to evaluate this time (recorded as failed or inert); the slot is free again"
    DONE = "this proposal thread is finished"


class Pipeline(Generic[Item]):
    def __init__(self, workers: int = 1, producers: int = 1, ahead: int = 0) -> None:
        self.workers = max(1, workers)
        self.producers = max(1, producers)
        self.ahead = max(0, ahead)

    def run(self, produce: Callable[[], Item | Next], consume: Callable[[Item, int], None]) -> None:
        """Run until every producer returned DONE and every item was consumed; the first error stops every
        thread and is raised once they all stopped. `consume` gets the item and its worker's slot number."""
        ready: queue.Queue = queue.Queue(maxsize=self.workers)
        stop = threading.Event()
        closed = threading.Semaphore(0)
        in_flight = threading.Semaphore(self.workers + self.ahead)  # proposed and not yet evaluated

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def take_slot() -> bool:
            while not stop.is_set():
                if in_flight.acquire(timeout=0.5):
                    return True
            return False

        def producer() -> None:
            try:
                while take_slot():
                    queued = False
                    try:
                        item = produce()
                        if item is Next.DONE:
                            return
                        if item is not Next.SKIP:
                            if not put(item):
                                return
                            queued = True  # its evaluation frees the slot
                    finally:
                        if not queued:
                            in_flight.release()
            finally:
                closed.release()

        def close_queue() -> None:  # once every proposal thread is done, tell every evaluation worker
            for _ in range(self.producers):
                closed.acquire()
            for _ in range(self.workers):
                put(None)

        def take():  # the next item; None once the queue is closed or another thread failed
            while not stop.is_set():
                try:
                    return ready.get(timeout=0.5)
                except queue.Empty:
                    continue
            return None

        def consumer(slot: int) -> None:
            try:
                while (item := take()) is not None:
                    try:
                        consume(item, slot)
                    finally:
                        in_flight.release()
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(self.workers + self.producers + 1) as pool:
            futures = ([pool.submit(producer) for _ in range(self.producers)] + [pool.submit(close_queue)]
                       + [pool.submit(consumer, slot) for slot in range(self.workers)])
            errors = []
            for future in futures:
                try:
                    future.result()
                except BaseException as err:  # noqa: BLE001 - re-raised below, after every thread stopped
                    stop.set()
                    errors.append(err)
            if errors:
                raise errors[0]
