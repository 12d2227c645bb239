"""Hold Ctrl-C / SIGTERM back while a few related writes happen together.

A frame's results go to several places (the in-memory COCO lists, ``predictions.jsonl``, ``tracks.txt``);
a ``KeyboardInterrupt`` (or the CLI's ``Terminated``) raised between two of those writes leaves them
disagreeing about which frames finished. Inside :func:`signals_deferred` a SIGINT / SIGTERM is recorded
instead of acted on, and delivered to the handler that was in place as soon as the block ends, so a stop
lands between frames, never inside one.

Only the main thread receives Python signal handlers, so elsewhere (and where ``signal`` cannot install
handlers) the block simply runs. Standard library only (the runtime imports without torch).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


def _restore(saved: list) -> None:
    """Put every saved handler back, even if a restored one raises on a signal arriving meanwhile."""
    if not saved:
        return
    signum, handler = saved[0]
    try:
        signal.signal(signum, handler)
    finally:
        _restore(saved[1:])


def _deliver(signum: int, frame, handler) -> None:
    if callable(handler):  # Python's default_int_handler (KeyboardInterrupt), the CLI's Terminated ...
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # the default action (end the process), now that it is back in place
        os.kill(os.getpid(), signum)
    # SIG_IGN or a handler installed outside Python (None): the signal was ignored before, it is ignored now


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with SIGINT / SIGTERM recorded, then deliver the first one that came (if any)."""
    if threading.current_thread() is not threading.main_thread() or not _SIGNALS:
        yield
        return
    caught: list = []

    def record(signum, frame):
        caught.append((signum, frame))

    saved: list = []
    try:
        for signum in _SIGNALS:
            saved.append((signum, signal.signal(signum, record)))
        yield
    finally:
        _restore(saved)
    if caught:  # only after the block completed: an error raised inside it already ends the work
        signum, frame = caught[0]
        _deliver(signum, frame, dict(saved)[signum])
