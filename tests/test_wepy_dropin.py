"""A wepy 1.2 script switches to wemap by changing its imports: worker types, mapper keywords,
positional order, exception classes, wepy's Configuration/Orchestrator, and scripts that never
call cleanup()."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest

pytest.importorskip("wepy")

import dropin_funcs  # noqa: E402
import segfuncs  # noqa: E402
from mappers import MAPPERS  # noqa: E402
from wepy.work_mapper.mapper import TaskException as WepyTaskException  # noqa: E402
from wepy.work_mapper.mapper import WorkerException as WepyWorkerException  # noqa: E402

import wemap  # noqa: E402

pytestmark = [pytest.mark.wepy, pytest.mark.timeout(120)]

HERE = os.path.dirname(os.path.abspath(__file__))


def _records(results):
    return [(int(w.state["worker_idx"][0]), w.state["platform"], w.state["device"], w.state["threads"])
            for w in results]


@pytest.fixture
def wepy_openmm():
    """wepy's OpenMM runner module, for its workers: it needs OpenMM, which the rest of this file does not."""
    pytest.importorskip("openmm")
    import wepy.runners.openmm

    return wepy.runners.openmm


def test_wepy_gpu_worker_gets_its_device_from_mapper_attributes(process_mapper_cls, wepy_openmm):
    """wepy's OpenMMGPUWorker, unchanged: worker i passes DeviceIndex device_ids[i] and the platform."""
    device_ids = [3, 7]
    with process_mapper_cls(num_workers=2, worker_type=wepy_openmm.OpenMMGPUWorker,
                            segment_func=dropin_funcs.record_task_kwargs, device_ids=device_ids, platform="CUDA") as m:
        assert m.attributes == {"device_ids": device_ids, "platform": "CUDA"}
        results = m.map(dropin_funcs.walkers(8), [1] * 8)
    records = _records(results)
    assert len(records) == 8
    for worker_idx, platform, device, _ in records:
        assert platform == "CUDA"
        assert device == str(device_ids[worker_idx])
    assert {r[0] for r in records} <= {0, 1}


def test_wepy_cpu_worker_passes_its_thread_count(process_mapper_cls, wepy_openmm):
    with process_mapper_cls(num_workers=2, worker_type=wepy_openmm.OpenMMCPUWorker,
                            worker_attributes={"num_threads": 3},
                            segment_func=dropin_funcs.record_task_kwargs) as m:
        results = m.map(dropin_funcs.walkers(4), [1] * 4)
    assert [r[3] for r in _records(results)] == ["3"] * 4


def test_wepy_positional_order_reaches_the_worker_type(wepy_openmm):
    """WorkerMapper(num_workers, worker_type, worker_attributes, segment_func), as wepy orders them."""
    OpenMMGPUWorker = wepy_openmm.OpenMMGPUWorker
    for cls in (wemap.WorkerMapper, wemap.SharedMemWorkerMapper):
        m = cls(2, OpenMMGPUWorker, None, dropin_funcs.record_task_kwargs, device_ids=[5, 6], platform="OpenCL")
        assert m.num_workers == 2 and m.worker_type is OpenMMGPUWorker
        assert m.segment_func is dropin_funcs.record_task_kwargs
        with m:
            results = m.map(dropin_funcs.walkers(2), [1, 1])
        assert all(p == "OpenCL" and d in ("5", "6") for _, p, d, _ in _records(results))
    m = wemap.Mapper(segfuncs.fail_on)  # wepy's Mapper(segment_func=None, **kwargs)
    assert m.segment_func is segfuncs.fail_on


def test_a_function_given_as_worker_type_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="segment_func"):
        wemap.WorkerMapper(2, segfuncs.fail_on)


@pytest.mark.parametrize("name", list(MAPPERS))
def test_unknown_keywords_become_mapper_attributes_workers_see(name):
    with MAPPERS[name](num_workers=2, segment_func=dropin_funcs.mapper_attributes, platform="CPU",
                       device_ids=[0, 1], note="x") as m:
        seen = m.map(range(4))
    assert m.attributes == {"platform": "CPU", "device_ids": [0, 1], "note": "x"}
    assert all(attrs == m.attributes for _, attrs in seen)


@pytest.mark.parametrize("cls", [wemap.Mapper, wemap.WorkerMapper, wemap.SharedMemWorkerMapper])
def test_a_misspelt_keyword_warns_at_the_callers_line(cls):
    with pytest.warns(UserWarning, match="did you mean 'task_timeout'") as caught:
        m = cls(num_workers=1, task_timout=3)
    assert m.attributes == {"task_timout": 3}
    assert [w.filename for w in caught] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wemap.WorkerMapper(num_workers=1, device_ids=[0])  # a real attribute, far from every parameter


@pytest.mark.parametrize("cls", [wemap.WorkerMapper, wemap.SharedMemWorkerMapper])
def test_proc_start_method_is_the_start_method(cls):
    assert cls(num_workers=1, proc_start_method="spawn").start_method == "spawn"
    assert cls(num_workers=1).start_method in ("forkserver", "spawn")
    with pytest.raises(ValueError, match="disagree"):
        cls(num_workers=1, start_method="spawn", proc_start_method="forkserver")
    with pytest.raises(ValueError, match="not available"):
        cls(num_workers=1, proc_start_method="teleport")


def test_wepy_except_clauses_catch_wemaps_task_exception():
    for name, cls in MAPPERS.items():
        with cls(num_workers=2, segment_func=segfuncs.fail_on) as m:
            with pytest.raises(WepyTaskException) as info:
                m.map([1, 2, 3, 4], [3] * 4, walker_idx=[10, 11, 12, 13], cycle_idx=[5] * 4)
        exc = info.value
        assert isinstance(exc, wemap.TaskException), name
        assert (exc.walker_idx, exc.cycle_idx, exc.exc_type) == (12, 5, "ValueError"), name
        assert "walker value 3 is bad" in "".join(exc.formatted_tb), name


def test_wepy_except_clauses_catch_wemaps_worker_exception(process_mapper_cls):
    kw = {} if process_mapper_cls.__name__ == "DaskMapper" else {"max_retries": 0}
    with process_mapper_cls(num_workers=2, segment_func=segfuncs.exit_on, **kw) as m:
        with pytest.raises(WepyWorkerException) as info:
            m.map([1, 2, 3], [2, 2, 2], walker_idx=[20, 21, 22], cycle_idx=[4] * 3)
    exc = info.value
    assert isinstance(exc, wemap.WorkerException)
    assert exc.walker_idx == 21 and exc.cycle_idx == 4


@pytest.mark.parametrize("name", list(MAPPERS))
def test_configuration_and_orchestrator_build_and_run_every_mapper(name, tmp_path):
    from wepy.orchestration.configuration import Configuration
    from wepy.orchestration.orchestrator import Orchestrator
    from wepy.orchestration.snapshot import SimSnapshot, WepySimApparatus
    from wepy.resampling.resamplers.resampler import NoResampler

    config = Configuration(work_mapper_class=MAPPERS[name], work_mapper_partial_kwargs={"num_workers": 2},
                           work_dir=str(tmp_path))
    assert isinstance(config.work_mapper, MAPPERS[name])
    apparatus = WepySimApparatus(dropin_funcs.ShiftRunner(), resampler=NoResampler())
    snapshot = SimSnapshot(dropin_funcs.walkers(4), apparatus)
    orch = Orchestrator(orch_path=str(tmp_path / "run.orch.sqlite"), mode="w")
    try:
        orch.add_configuration(config)  # serialised as the orchestrator stores it
        start_hash = orch.add_snapshot(snapshot)
        manager = Orchestrator.gen_sim_manager(orch.get_snapshot(start_hash), config)
        walkers, _ = manager.run_simulation(3, [2, 2, 2], num_workers=2)
    finally:
        orch.close()
    assert [float(w.state["positions"][0, 0]) for w in walkers] == [3.0] * 4
    assert [float(w.state["time"]) for w in walkers] == [6.0] * 4


def test_worker_type_none_is_the_default_worker():
    for cls in MAPPERS.values():
        assert cls(num_workers=1, worker_type=None).worker_type is wemap.Worker


def test_worker_type_is_read_only_as_in_wepy():
    """The workers are made from the type given at construction: a later assignment would not reach them."""
    for cls in MAPPERS.values():
        m = cls(num_workers=1, worker_type=segfuncs.DeviceWorker)
        with pytest.raises(AttributeError):
            m.worker_type = wemap.Worker
        assert m.worker_type is segfuncs.DeviceWorker


def _run_script(body: str, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env,
                          cwd=str(tmp_path))


def test_a_mapper_never_cleaned_up_leaves_nothing_and_says_nothing_at_exit(tmp_path):
    out = _run_script("""
        import os
        import numpy as np
        import wemap
        import segfuncs

        if __name__ == "__main__":
            m = wemap.SharedMemWorkerMapper(num_workers=2, segment_func=segfuncs.displace)
            m.init()
            walkers = [segfuncs.make_walker(20_000, seed=i) for i in range(4)]  # big enough for the arena
            walkers = m.map(walkers, [1] * 4)
            walkers = m.map(walkers, [1] * 4)
            print(m.segment_name, flush=True)
        """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr  # no BufferError, no resource_tracker leak warning
    name = out.stdout.split()[0]
    assert not os.path.exists(os.path.join("/dev/shm", name))


def test_a_dropped_mapper_frees_its_workers_and_segment(tmp_path):
    out = _run_script("""
        import gc, os
        import psutil
        import wemap
        import segfuncs

        if __name__ == "__main__":
            m = wemap.SharedMemWorkerMapper(num_workers=2, segment_func=segfuncs.displace)
            m.init()
            kept = m.map([segfuncs.make_walker(20_000, seed=i) for i in range(4)], [1] * 4)
            name = m.segment_name
            from wemap.pool import multiprocessing_helper_pids
            helpers = multiprocessing_helper_pids()  # the forkserver and resource tracker stay by design
            workers = [p for p in psutil.Process().children(recursive=True) if p.pid not in helpers]
            assert len(workers) == 2, workers
            del m
            gc.collect()
            gone, alive = psutil.wait_procs(workers, timeout=10)
            print(os.path.exists("/dev/shm/" + name), len(alive), float(kept[0].state["positions"][0, 0]),
                  flush=True)
        """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    exists, alive, value = out.stdout.split()
    assert exists == "False"  # gone when the mapper was, not at exit
    assert alive == "0"  # its workers too
    assert float(value) != 0.0  # the results kept their arrays


def test_a_mapper_started_while_a_worker_imports_the_script_says_to_add_the_main_guard(tmp_path):
    out = _run_script("""
        import wemap
        import segfuncs

        m = wemap.WorkerMapper(num_workers=1, segment_func=segfuncs.add, start_timeout=30)
        m.init()
        print(m.map([1], [2]))
        m.cleanup()
        """, tmp_path)
    assert out.returncode != 0
    assert "if __name__ == '__main__':" in out.stderr


def test_dask_local_cluster_without_the_main_guard_names_it(tmp_path):
    pytest.importorskip("distributed")
    out = _run_script("""
        import wemap
        import segfuncs

        m = wemap.DaskMapper(num_workers=1, segment_func=segfuncs.add, start_timeout=30)
        m.init()
        print(m.map([1], [2]))
        m.cleanup()
        """, tmp_path)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "WorkerException" in last and "if __name__ == '__main__':" in last, out.stderr[-3000:]
