"""Unit tests of the shared/exclusive lock that lets pulls run side by side and loads alone."""

import threading
import time

from services.storage.locks import SharedExclusiveLock


def test_shared_holders_overlap_and_exclusive_waits_for_them():
    lock = SharedExclusiveLock()
    inside, log = threading.Barrier(2), []

    def shared(name):
        with lock.shared():
            inside.wait(timeout=5)  # both shared holders are in at once, or this times out
            log.append(name)

    threads = [threading.Thread(target=shared, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(log) == ["a", "b"]


def test_exclusive_excludes_shared_and_a_waiting_exclusive_blocks_new_shared_holders():
    lock = SharedExclusiveLock()
    events = []
    first_in = threading.Event()

    def first():
        with lock.shared():
            first_in.set()
            time.sleep(0.2)
            events.append("shared-1 out")

    def writer():
        first_in.wait(timeout=5)
        with lock.exclusive():
            events.append("exclusive in")
            time.sleep(0.1)
            events.append("exclusive out")

    def late_reader():
        first_in.wait(timeout=5)
        deadline = time.monotonic() + 5
        while not lock._exclusive_waiting and time.monotonic() < deadline:
            time.sleep(0.001)  # until the writer waits: then this reader must queue behind it
        with lock.shared():
            events.append("shared-2 in")

    threads = [threading.Thread(target=target) for target in (first, writer, late_reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert events == ["shared-1 out", "exclusive in", "exclusive out", "shared-2 in"]
