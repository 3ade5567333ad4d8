"""Ctrl-C at random points of ``init``: the manager exits within a bound, leaving no process and no
``/dev/shm`` segment behind.

Each try runs a fresh manager (`init_child.py`: its first ``init`` starts the forkserver, the
resource tracker and the workers), waits until it says it is about to call ``init``, then sends it
SIGINT after a random delay drawn over about how long an ``init`` takes, re-estimated as tries land
before or after it ends. What is random is *when* the signal lands; every wait is on the child
(its output, its exit), never a sleep standing in for it. ``WEMAP_INIT_INTERRUPTS`` sets the tries
per mapper (the fault soak, ``bench/fault_soak.py --init-signals``, runs hundreds).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.stress, pytest.mark.slow]

CHILD = Path(__file__).with_name("init_child.py")
TRIES = int(os.environ.get("WEMAP_INIT_INTERRUPTS", "25"))
EXIT_BOUND = 20.0  # seconds the interrupted manager may take to exit (its stop is bounded well below)
TAG = "WEMAP_INIT_INTERRUPT_TAG"


def tagged(tag: str) -> list[psutil.Process]:
    """Processes started by the try tagged ``tag`` (the tag is in their environment), wherever they
    were reparented to; zombies are not running."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG) == tag and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def interrupt_once(mapper: str, workers: int, delay: float) -> dict:
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag, "WEMAP_DUMP_AFTER": str(EXIT_BOUND + 10)}
    proc = subprocess.Popen([sys.executable, str(CHILD), mapper, str(workers)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline() == "go\n", proc.communicate(timeout=30)[1]
        time.sleep(delay)  # the random moment the Ctrl-C lands, not a synchronisation
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            out, err = proc.communicate("\n", timeout=EXIT_BOUND + 15)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        took = time.monotonic() - t0
        code = proc.poll()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    left = tagged(tag)
    for p in left:
        p.kill()
    segments = [n for n in os.listdir("/dev/shm") if n.startswith(f"wemap_{proc.pid}_")]
    for n in segments:
        os.unlink(f"/dev/shm/{n}")
    return {"delay": delay, "in_init": "ready" not in out, "took": took, "code": code, "left": left,
            "segments": segments, "stderr": err}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mapper", ["WorkerMapper", "SharedMemWorkerMapper"])
def test_ctrl_c_anywhere_in_init_exits_and_leaves_nothing(mapper):
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    span = 1.0  # seconds over which the signal is drawn: about one init, adjusted as tries land
    tries = []
    for i in range(TRIES):
        workers = rng.choice([1, 2, 3])
        r = interrupt_once(mapper, workers, rng.uniform(0.0, span))
        tries.append(r)
        where = f"try {i} (seed {seed}, {workers} workers, SIGINT {r['delay']:.3f} s after 'go')"
        assert r["code"] is not None and r["took"] < EXIT_BOUND, \
            f"{where}: the manager did not exit within {EXIT_BOUND} s:\n{r['stderr'][-6000:]}"
        assert r["code"] == -signal.SIGINT, f"{where}: exit status {r['code']}, not SIGINT's:\n{r['stderr'][-3000:]}"
        assert not r["left"], f"{where}: processes left behind: {[(p.pid, p.name()) for p in r['left']]}"
        assert not r["segments"], f"{where}: segments left in /dev/shm: {r['segments']}"
        span *= 1.1 if r["in_init"] else 0.85  # keep about half of the signals inside init
    in_init = sum(r["in_init"] for r in tries)
    assert in_init >= TRIES // 4, f"only {in_init} of {TRIES} signals landed during init (seed {seed})"
