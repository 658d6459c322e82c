"""Let a short critical section (an atomic file write) finish before Ctrl-C or SIGTERM acts.

A second Ctrl-C pressed while ``fit`` writes its checkpoint after the first one would
otherwise abort that write, and the run would stop with no checkpoint at all.
"""

import contextlib
import signal
import threading

#: the signals held back: Ctrl-C, and the polite stop of ``kill``, ``timeout``, batch systems
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def python_handles(signum) -> bool:
    """This thread may replace the handler of ``signum`` and restore it afterwards: the main
    thread (only it runs Python signal handlers and may install them), with a handler
    installed from Python (``getsignal`` is None otherwise, and could not be restored)."""
    is_main = threading.current_thread() is threading.main_thread()
    return is_main and signal.getsignal(signum) is not None


@contextlib.contextmanager
def signals_deferred():
    """Hold back SIGINT and SIGTERM until the block ends; then the first one received is
    delivered to the handler installed before (a later one would only stop the same
    process again).

    If the block raises, its exception propagates and a held signal is dropped: the caller
    is stopping on that exception already (e.g. an ``OSError`` of the write, which must
    not be hidden behind a ``KeyboardInterrupt``). Only the main thread runs Python signal
    handlers and may install them: elsewhere the block runs unprotected; so does a signal
    whose handler was not installed from Python (Python could not restore it).
    """
    received = []

    def hold(signum, frame):
        received.append(signum)

    previous = {}
    try:
        for signum in DEFERRED_SIGNALS:
            if python_handles(signum):
                previous[signum] = signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        signal.raise_signal(received[0])
