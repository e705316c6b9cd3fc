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
