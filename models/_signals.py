"""Let a short critical section (an atomic file write) finish before Ctrl-C or SIGTERM acts.

A second Ctrl-C pressed while ``fit`` writes its checkpoint after the first one would
otherwise abort that write, and the run would stop with no checkpoint at all.
"""

import contextlib
import signal
import threading

#: the signals held back: Ctrl-C, and the polite stop of ``kill``, ``timeout``, batch systems
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred():
    """Hold back SIGINT and SIGTERM until the block ends, then deliver each one received
    (once, in the order they came) to the handler installed before.

    Only the main thread runs Python signal handlers and may install them: elsewhere the
    block runs unprotected. A signal whose handler was not installed from Python (Python
    cannot restore it) is not held back either.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def hold(signum, frame):
        if signum not in received:
            received.append(signum)

    previous = {}
    for signum in DEFERRED_SIGNALS:
        if signal.getsignal(signum) is not None:
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)
