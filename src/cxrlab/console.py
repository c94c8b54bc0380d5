"""The one channel for cxrlab's messages: the standard ``logging`` logger ``cxrlab`` (each module logs to its own
child, ``logging.getLogger(__name__)``).

As Optuna and Transformers do, the library gives its logger one handler of its own on first use: INFO and above,
the bare message, written to whatever ``sys.stdout`` is at the moment (so a notebook, pytest's capture or a
redirected CLI sees it). Quieten it with ``logging.getLogger("cxrlab").setLevel(logging.WARNING)``, or for a block
of code with ``quiet()``, which restores the level it found.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = "cxrlab"


class _Stdout(logging.StreamHandler):
    """A handler on the current ``sys.stdout``, looked up at every message rather than kept from start-up."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _) -> None:  # logging.StreamHandler.__init__ assigns one; the current stdout is always used
        pass


class _Lines(logging.Formatter):
    """The message, each of its lines after a prefix (a worker's run name, ``[mobilenet_v3_large-seed0] ``)."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__("%(message)s")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.prefix:
            return text
        return "\n".join(self.prefix + line for line in text.strip("\n").splitlines())


def _handler() -> logging.Handler:
    root = logging.getLogger(ROOT)
    for handler in root.handlers:
        if isinstance(handler, _Stdout):
            return handler
    handler = _Stdout()
    handler.setFormatter(_Lines())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # printed once, here, not again by an application's root handler
    return handler


def logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (a child of ``cxrlab``), with the library's handler in place."""
    _handler()
    return logging.getLogger(name)


def set_prefix(prefix: str) -> None:
    """Start every line of this process's messages with ``prefix`` (a worker process names its run)."""
    _handler().setFormatter(_Lines(prefix))


@contextmanager
def quiet(when: bool = True) -> Iterator[None]:
    """Within the block, only warnings and errors (``when`` false: no change); the level found is restored."""
    root = logging.getLogger(ROOT)
    level = root.level
    if when:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)
