"""A manager that starts a mapper, for `test_init_interrupts`: ``python init_child.py <mapper> <workers>``.

It says ``go`` just before ``init`` and ``ready`` just after, then waits for a line on stdin and
cleans up. Should it hang, faulthandler prints every thread's stack and ends it (``WEMAP_DUMP_AFTER``
seconds), so the test shows where.
"""

from __future__ import annotations

import faulthandler
import os
import sys

faulthandler.dump_traceback_later(float(os.environ.get("WEMAP_DUMP_AFTER", "20")), exit=True)

import wemap  # noqa: E402


def segment(x):
    return x


if __name__ == "__main__":
    mapper = getattr(wemap, sys.argv[1])(segment_func=segment, num_workers=int(sys.argv[2]))
    print("go", flush=True)
    mapper.init()
    print("ready", flush=True)
    sys.stdin.readline()
    mapper.cleanup()
