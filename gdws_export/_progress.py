"""Progress ticks from long loops, for whoever draws a bar (the CLI's stage lines).

Loops that take seconds to minutes (attacks over image batches, calibration passes, layer
timings) call `tick(n)` as they go; it does nothing unless a listener was set with `listen`
in the same thread. So the math and the pipeline know nothing of tqdm or terminals.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token

_listener: ContextVar[Callable[[int], object] | None] = ContextVar("progress", default=None)


def tick(n: int = 1) -> None:
    """Report `n` more units of work done (images, layers) to the listener, if any."""
    listener = _listener.get()
    if listener is not None:
        listener(n)


def listen(callback: Callable[[int], object]) -> Token:
    """Send ticks to `callback` until `stop(token)`."""
    return _listener.set(callback)


def stop(token: Token) -> None:
    """Stop the listener `listen` returned `token` for (the one before comes back)."""
    _listener.reset(token)
