"""Decode pairs ahead of the computation, in worker threads or worker processes.

Pillow and OpenCV release the GIL while they decode, so threads overlap decoding with computing;
but with many cores the Python work around each decode holds the GIL long enough that threads stop
scaling (16 threads reached about 7x one core on a 16-core machine). Worker processes do not share
a GIL: each decodes a pair and hands its pixels back through shared memory (a copy the size of the
image, not a pickle through a pipe). This module imports neither torch nor the engine, so worker
processes start in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import multiprocessing
import os
import signal
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from .errors import ImageReadError, LossctlError
from .io import LoadedPair, LoadedSegmentation, Pair, load_pair, score_header, set_max_pixels
from .sharding import pair_pixels
from .signals import handled, interrupts_deferred

DECODERS = ("auto", "threads", "processes")


@dataclass(frozen=True)
class DecodeFailure:
    """A pair whose files could not be read (or whose sizes differ): ``reason`` is one line."""

    pair: Pair
    reason: str


Decoded = LoadedPair | LoadedSegmentation | DecodeFailure


def use_processes(decoder: str, workers: int, pairs: int) -> bool:
    """``auto``: processes where threads would contend for the GIL (more than 2 workers) and the
    folder is large enough to repay starting them (at least 8 pairs per worker)."""
    if decoder not in DECODERS:
        raise LossctlError(f"--decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    if decoder == "auto":
        return workers > 2 and pairs >= 8 * workers
    return decoder == "processes"


def decodable(pairs: Iterable[Pair]) -> list[Pair]:
    """The pairs that are decoded and computed: those whose files were both found (the others are
    reported as unmatched or conflicting without reading them)."""
    return [pair for pair in pairs if pair.status == "pending"]


# How far decoding in processes may run ahead of the engine, from before the main process imports
# torch (1-3 s, while the other cores would idle) and, on a GPU, for the whole run: a window of two
# batches fills in a fraction of that time on 16 cores, and then the decoders wait.
HEAD_START_BYTES = 2 << 30
# And at most this many pairs: each decoded pair also holds a few kilobytes besides its pixels
# (its objects, its shared-memory blocks), so 2 GiB of thumbnails would be tens of thousands of
# pairs, and peak memory would grow with the folder (20,000 32x32 pairs: +11% against 1,000; +5%
# with this cap). 1,024 pairs of 512x512 is more than the bytes allow anyway.
HEAD_START_PAIRS = 1024


def head_start_window(pairs: Sequence[Pair], with_weights: bool) -> int:
    """Pairs to decode ahead of the engine: about ``HEAD_START_BYTES`` (an eighth of the machine's
    memory at most) of pairs like the first, judged from its headers (:func:`decoded_bytes`), at most
    ``HEAD_START_PAIRS`` and at least one."""
    size = decoded_bytes(pairs[0], with_weights) if pairs else None
    budget = min(HEAD_START_BYTES, _physical_memory() // 8)
    return max(1, min(HEAD_START_PAIRS, budget // size)) if size else 1


def decoded_bytes(pair: Pair, with_weights: bool) -> int | None:
    """About the memory a decoded ``pair`` holds, from its headers: a segmentation pair's scores
    (as stored) and its int64 labels; an image pair as two images of up to three 16-bit channels,
    and a float32 weight map. None where no header can be read."""
    if pair.is_segmentation:
        if (header := score_header(pair.pred)) is None or len(header[0]) < 2:
            return None
        shape, dtype = header
        return int(np.prod(shape)) * dtype.itemsize + 8 * shape[-2] * shape[-1]
    pixels = pair_pixels(pair)
    return pixels * (2 * 3 * 2 + (4 if with_weights else 0)) if pixels else None


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume a small machine
        return 8 << 30


def decode_pair(pair: Pair, with_weights: bool) -> Decoded:
    """:func:`lossctl.io.load_pair`, a pair that cannot be read as a :class:`DecodeFailure`."""
    try:
        return load_pair(pair, with_weights)
    except ImageReadError as error:
        return DecodeFailure(pair, str(error))


@dataclass(frozen=True)
class _SharedArray:
    """A worker's array left in a named shared-memory block for the parent to take."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def put(cls, array: np.ndarray) -> _SharedArray | np.ndarray:
        """The array in a new shared block; or the array itself (sent pickled through the pool's
        pipe) when the shared-memory file system lacks room for it: containers often mount a 64 MB
        /dev/shm, and writing past its end would kill the worker with SIGBUS."""
        if not _shared_memory_has_room(array.nbytes):
            return array
        block = shared_memory.SharedMemory(create=True, size=max(1, array.nbytes))
        try:
            np.ndarray(array.shape, array.dtype, buffer=block.buf)[...] = array
        finally:
            block.close()
        return cls(block.name, array.shape, array.dtype.str)

    @staticmethod
    def take(value: _SharedArray | np.ndarray) -> np.ndarray:
        return value._copy_out() if isinstance(value, _SharedArray) else value

    def _copy_out(self) -> np.ndarray:
        with _opened_then_freed(self.name) as block:
            return np.ndarray(self.shape, np.dtype(self.dtype), buffer=block.buf).copy()


_OPENING: set[str] = set()
_OPENING_LOCK = threading.Lock()


@contextmanager
def _opened_then_freed(name: str) -> Iterator[shared_memory.SharedMemory]:
    """The shared block ``name``, open, then closed and unlinked; FileNotFoundError where it is
    gone or another thread has it open.

    One thread at a time opens a block: before Python 3.13, opening a block registers it with the
    resource tracker again, and a thread that opened it just before another unlinked it would
    register it after that unlink's unregistering; the tracker would warn of a leaked block at exit."""
    with _OPENING_LOCK:
        if name in _OPENING:
            raise FileNotFoundError(f"shared block {name} is being freed by another thread")
        _OPENING.add(name)
    try:
        block = shared_memory.SharedMemory(name=name)
        try:
            yield block
        finally:
            block.close()
            block.unlink()
    finally:
        with _OPENING_LOCK:
            _OPENING.discard(name)


SHM_FOLDER = "/dev/shm"
SHM_HEADROOM = 64 << 20  # left free for the other workers' blocks in flight


def _shared_memory_has_room(size: int) -> bool:
    try:
        stats = os.statvfs(SHM_FOLDER)
    except OSError:  # no /dev/shm (macOS, Windows): shared memory is not a small file system there
        return True
    return stats.f_bavail * stats.f_frsize >= size + SHM_HEADROOM


def _map_arrays(value: Any, change) -> Any:
    """``value`` with ``change`` applied to every array (or shared array) in its dataclass fields."""
    if isinstance(value, (np.ndarray, _SharedArray)):
        return change(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        updates = {
            item.name: _map_arrays(getattr(value, item.name), change)
            for item in dataclasses.fields(value)
            if isinstance(getattr(value, item.name), (np.ndarray, _SharedArray))
            or dataclasses.is_dataclass(getattr(value, item.name))
        }
        return dataclasses.replace(value, **updates) if updates else value
    return value


def _load_in_process(pair: Pair, with_weights: bool) -> Decoded:
    return _map_arrays(decode_pair(pair, with_weights), _SharedArray.put)


@functools.cache
def _start_forkserver_deaf_to_ctrl_c() -> None:
    """Start multiprocessing's fork server with SIGINT ignored, as its workers then are from birth.

    A terminal's Ctrl-C reaches the whole process group. The main process stops the run and frees
    the workers' shared blocks; a worker (or the fork server) interrupted, even while starting,
    dies mid-decode: its blocks leak, the pool breaks, and tracebacks and resource-tracker warnings
    follow the one-line message. A process started with SIGINT ignored keeps it ignored, and the
    fork server gives its children the handlers it started with. The main process ignores Ctrl-C
    only while starting the server (6-10 ms, once; a Ctrl-C then is lost)."""
    from multiprocessing import forkserver

    with handled(signal.SIGINT, signal.SIG_IGN):
        forkserver.ensure_running()


def _start_worker(max_pixels: int | None) -> None:
    # Already so where the fork server started deaf to it; not under the spawn start method.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_max_pixels(max_pixels)
    # Quiet as the command line's process is (lossctl.cli._root): a worker that the fork server or
    # spawn started has not inherited its warning filters.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    try:
        import cv2

        cv2.setNumThreads(1)  # one decode per process; the processes are the parallelism
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        pass


class _Decoders:
    """A pool of decoders; a process pool broken by a dying worker is replaced, and the pair that
    was being decoded is retried alone so that only a pair that kills its decoder again fails."""

    def __init__(self, workers: int, processes: bool, max_pixels: int | None):
        self.workers, self.processes, self.max_pixels = workers, processes, max_pixels
        self.pool, self._submitted = self._new_pool(workers), 0  # submitted: to this pool, while it starts

    def _new_pool(self, workers: int) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lossctl-decode")
        if "forkserver" in multiprocessing.get_all_start_methods():
            _start_forkserver_deaf_to_ctrl_c()
            context = multiprocessing.get_context("forkserver")
        else:
            context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(self.max_pixels,))

    @property
    def starting(self) -> bool:
        """Whether a submit may still start a worker process (one per submit, up to ``workers``):
        Ctrl-C or SIGTERM cutting that short left a pool that could not be shut down (an internal
        error instead of 'interrupted') and a half-started worker's traceback, so the caller holds
        them meanwhile (:func:`lossctl.signals.interrupts_deferred`)."""
        return self.processes and self._submitted < self.workers

    def submit(self, pair: Pair, with_weights: bool) -> Future:
        work = _load_in_process if self.processes else decode_pair
        self._submitted += 1
        try:
            return self.pool.submit(work, pair, with_weights)
        except BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool, self._submitted = self._new_pool(self.workers), 1
            return self.pool.submit(work, pair, with_weights)

    def result(self, future: Future, pair: Pair, with_weights: bool) -> Decoded:
        try:
            decoded = future.result()
        except BrokenProcessPool:
            decoded = self._retried(pair, with_weights)
        return _map_arrays(decoded, _SharedArray.take) if self.processes else decoded

    def _retried(self, pair: Pair, with_weights: bool) -> Decoded:
        """A pair whose pool broke (a worker died, maybe decoding another pair) decoded again in the
        pool that replaces it, and alone only if that breaks too: every pair in flight retried alone,
        each in a pool of its own, made one killed worker cost a 400-pair run 45 s instead of 3."""
        try:
            return self.submit(pair, with_weights).result()  # submit replaces a broken pool
        except BrokenProcessPool:
            return self._alone(pair, with_weights)

    def _alone(self, pair: Pair, with_weights: bool) -> Decoded:
        pool = self._new_pool(1)
        try:
            with interrupts_deferred():
                future = pool.submit(_load_in_process, pair, with_weights)
            return future.result()
        except BrokenProcessPool:
            return DecodeFailure(
                pair, "the decoding process died on this pair (a decoder crash or out of memory)"
            )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        # A process pool is awaited (the decodes running finish; the queued are cancelled): the
        # interpreter's exit would wait for it anyway, and Python 3.11's exit hook can then race the
        # pool's closing thread and print an OSError traceback (after Ctrl-C, 1 run in 20 here).
        # A second Ctrl-C meanwhile is ignored: interrupting Python 3.11's Thread.join marks the
        # pool's thread stopped while it runs, and the process then hangs at exit.
        if not self.processes:
            self.pool.shutdown(wait=False, cancel_futures=True)
            return
        with handled(signal.SIGINT, signal.SIG_IGN):
            self.pool.shutdown(wait=True, cancel_futures=True)


class DecodeAhead:
    """``pairs`` decoded in ``workers`` threads (or processes), at most ``prefetch`` ahead, yielded
    in input order.

    Decoding starts when this is made, not at the first ``next()``, so that a caller can do slow
    work of its own meanwhile (importing torch, creating the CUDA context), with a window it may
    resize later (:meth:`resize`). :meth:`close` (also on leaving a ``with closing(...)`` block)
    cancels queued decodes rather than awaiting them.
    """

    def __init__(
        self,
        pairs: Iterable[Pair],
        with_weights: bool,
        workers: int,
        prefetch: int,
        processes: bool = False,
        max_pixels: int | None = None,
    ):
        self.with_weights, self.prefetch, self.processes = with_weights, max(1, prefetch), processes
        self.max_pixels = max_pixels
        self.pairs = list(pairs)
        self._closed = False
        self._pairs = iter(self.pairs)
        self._decoders = _Decoders(max(1, workers), processes, max_pixels)
        self._in_flight: deque[tuple[Future, Pair]] = deque()
        # Decoding processes leave their pixels in shared memory; taker threads copy them out as
        # each decode finishes, so that the consumer (on a GPU, the thread that feeds it) does not.
        self._taker = (
            ThreadPoolExecutor(TAKER_THREADS, thread_name_prefix="lossctl-take") if processes else None
        )
        self._takes: dict[Future, Future | object] = {}  # decode -> its take, or _TAKEN_BY_CONSUMER
        try:
            self._submit_up_to_prefetch()
        except BaseException:  # Ctrl-C while the first workers start: stop what has started
            self.close()
            raise

    def _submit_up_to_prefetch(self) -> None:
        while len(self._in_flight) < self.prefetch and (pair := next(self._pairs, None)) is not None:
            # While a worker may be starting, an interrupt waits until the decode is in flight (and
            # so freed by close()); delivered inside submit, its shared block leaked.
            with interrupts_deferred() if self._decoders.starting else nullcontext():
                future = self._decoders.submit(pair, self.with_weights)
                if self.processes:
                    future.add_done_callback(self._on_decoded)
                self._in_flight.append((future, pair))

    def _on_decoded(self, future: Future) -> None:
        """A decode finished (in the pool's thread): have a taker thread copy its pixels out, unless
        closed (then free them) or the consumer got to it first."""
        if self._closed:
            self._release_if_closed(future)
            return
        if future.cancelled() or future.exception() is not None:
            return  # the consumer meets the error (a broken pool is retried there)
        take: Future = Future()
        if self._takes.setdefault(future, take) is not take:
            self._takes.pop(future, None)  # taken by the consumer, who left the entry for this
            return
        try:
            self._taker.submit(self._take, future, take)
        except RuntimeError:  # shut down meanwhile (closing), or no thread could be started
            self._take(future, take)

    def _take(self, future: Future, take: Future) -> None:
        if self._closed:
            self._release_if_closed(future)
            take.cancel()
            return
        try:
            take.set_result(_map_arrays(future.result(), _SharedArray.take))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            take.set_exception(error)

    def decodes(self, pairs: Sequence[Pair], with_weights: bool, max_pixels: int | None) -> bool:
        """Whether this decodes ``pairs``, in this order, as ``with_weights`` and ``max_pixels`` ask."""
        return (self.with_weights, self.max_pixels, self.pairs) == (with_weights, max_pixels, list(pairs))

    def resize(self, prefetch: int) -> None:
        """Keep at most ``prefetch`` pairs in flight from now on. Narrowing withdraws the decodes
        queued beyond that and not yet started (they are submitted again in their turn), so that
        only what was already decoded or decoding stays held beyond the new window."""
        self.prefetch = max(1, prefetch)
        withdrawn: deque[Pair] = deque()
        while len(self._in_flight) > self.prefetch and self._in_flight[-1][0].cancel():
            withdrawn.appendleft(self._in_flight.pop()[1])
        if withdrawn:
            self._pairs = itertools.chain(withdrawn, self._pairs)
        self._submit_up_to_prefetch()

    def __iter__(self) -> Iterator[Decoded]:
        return self

    def __next__(self) -> Decoded:
        if not self._in_flight:
            raise StopIteration
        future, pair = self._in_flight.popleft()
        self._submit_up_to_prefetch()
        if self.processes and _finished_without_error(future):
            take = self._takes.setdefault(future, _TAKEN_BY_CONSUMER)
            if take is not _TAKEN_BY_CONSUMER:
                self._takes.pop(future, None)
                return take.result()
        return self._decoders.result(future, pair, self.with_weights)

    def close(self) -> None:
        self._closed = True
        self._decoders.close()
        if self._taker is not None:
            self._taker.shutdown(wait=False)  # takes already queued free their blocks
            self._takes.clear()
        if self.processes:  # free the shared blocks of decodes that finished but were never taken
            for future, _ in self._in_flight:
                self._release_if_closed(future)
        self._in_flight.clear()

    def _release_if_closed(self, future: Future) -> None:
        """Free the shared blocks of a decode that finished after :meth:`close` (or before it,
        untaken); a block freed twice is no error."""
        if self._closed and future.done() and not future.cancelled() and future.exception() is None:
            _map_arrays(future.result(), _release)


TAKER_THREADS = 2  # a copy out of shared memory takes 0.2-0.7 ms per 512x512 image
_TAKEN_BY_CONSUMER = object()


def _finished_without_error(future: Future) -> bool:
    """Wait for ``future``; whether it finished with a result (not cancelled, no exception). A
    KeyboardInterrupt while waiting propagates."""
    try:
        return future.exception() is None
    except CancelledError:
        return False


def _release(shared: _SharedArray | np.ndarray) -> None:
    if not isinstance(shared, _SharedArray):
        return
    try:
        with _opened_then_freed(shared.name):
            pass
    except FileNotFoundError:  # freed, or being freed, by another thread
        pass
