"""Signal handlers set for a while and put back."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def handled(signum: int, handler: Callable[[int, Any], Any] | int) -> Iterator[None]:
    """``handler`` for ``signum`` meanwhile, then the one before. Nothing changes outside the main
    thread (only it may set handlers) or where the current handler was not set from Python
    (``signal.getsignal`` gives None for it, which cannot be set back)."""
    previous = signal.getsignal(signum)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held until the block ends, then delivered again to the handlers they would
    have met: for work an interrupt must not cut in half. Nothing is held outside the main thread
    (only it runs signal handlers) or where a handler was not set from Python."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    caught: list[int] = []
    for signum in signals:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])
