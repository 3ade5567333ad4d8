"""Workers see the manager's environment as of ``init``, wherever their process came from.

Workers are forked by a forkserver that keeps the environment it started with, at the first
mapper of the process: a variable set (or deleted) later, before a later mapper's ``init``
(``CUDA_VISIBLE_DEVICES`` for a second stage, ``OMP_NUM_THREADS`` in a notebook), must reach
that mapper's workers, by ``Worker.init``, and reach a worker started later to replace a dead
one as it was at ``init``. A fresh interpreter each, so the forkserver starts inside the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(90)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import envfuncs, wemap

    NAMES = ["WEMAP_TEST_SET", "WEMAP_TEST_GONE", "WEMAP_TEST_CHANGED"]

    def run(marker=None):
        with wemap.{mapper}(segment_func=envfuncs.report, num_workers=2, worker_init=envfuncs.env_at_init) as m:
            out = m.map([NAMES] * 4)
            if marker is not None:
                # changed after init, then a worker killed: its replacement gets the environment of init
                os.environ["WEMAP_TEST_CHANGED"] = "after init"
                out += m.map([NAMES] * 4, marker=[marker] * 4)
            return out

    if __name__ == "__main__":
        first = run()  # the forkserver starts here, with the environment of now
        os.environ["WEMAP_TEST_SET"] = "set later"
        del os.environ["WEMAP_TEST_GONE"]
        os.environ["WEMAP_TEST_CHANGED"] = "changed"
        second = run(marker=sys.argv[1])
        print(json.dumps([first, second]))
    """
)


@pytest.mark.parametrize("mapper", ["WorkerMapper", "SharedMemWorkerMapper"])
def test_workers_see_the_environment_of_init(mapper, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEMAP_TEST_")}
    env |= {"WEMAP_TEST_GONE": "set at start", "WEMAP_TEST_CHANGED": "at start"}
    script = SCRIPT.format(tests=os.path.dirname(__file__), mapper=mapper)
    marker = tmp_path / "killed-once"
    proc = subprocess.run([sys.executable, "-c", script, str(marker)], env=env, capture_output=True, text=True,
                          timeout=80)
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout)
    at_start = [None, "set at start", "at start"]
    assert first == [[[v, v] for v in at_start]] * 4
    assert marker.exists()  # a worker was killed in the second mapper and replaced
    later = [["set later"] * 2, [None, None], ["changed"] * 2]
    assert second == [later] * 8, "a worker of the second mapper saw a stale environment"
