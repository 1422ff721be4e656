"""A time limit for a block of code."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def time_limit(seconds: float, message: str | None = None):
    """A TimeoutError (``message``) in the block after ``seconds``, raised by a signal: in the main thread only
    (elsewhere, or where there is no SIGALRM, the block runs without a limit)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(message or f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
