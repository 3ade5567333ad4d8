"""A Ctrl-C at a chosen point of a mapper's ``init``, made by the objects ``init`` sends its workers.

`CtrlCOnPickle` pickles as itself, except that its ``n``-th pickling in the manager sends this
process a real SIGINT first: the pool pickles ``worker_attributes`` once to check it, then once
per worker it starts, so ``n = k + 2`` lands while worker ``k + 1`` is being started, worker
``k`` already running. The count lives in the instance, so each test sets its own.
"""

from __future__ import annotations

import os
import signal


def _rebuild(n: int) -> CtrlCOnPickle:
    obj = CtrlCOnPickle(n)
    obj.pickled = n  # in a worker: never fires again
    return obj


class CtrlCOnPickle:
    def __init__(self, n: int) -> None:
        self.n = n
        self.pickled = 0
        self.pid = os.getpid()

    def __reduce__(self):
        if os.getpid() == self.pid:
            self.pickled += 1
            if self.pickled == self.n:
                signal.raise_signal(signal.SIGINT)  # the handler raises KeyboardInterrupt right here
        return _rebuild, (self.n,)


def add(a, b):
    return a + b
