"""wemap.openmm.OpenMMGPUWorker / OpenMMCPUWorker (no wepy needed): the task keywords wepy's workers
pass, and wemap's OpenMMRunner building each worker's Context as they say."""

from __future__ import annotations

import os

import pytest

openmm = pytest.importorskip("openmm")

from mappers import MAPPERS  # noqa: E402

import wemap  # noqa: E402
from wemap import systems  # noqa: E402
from wemap.openmm import OpenMMCPUWorker, OpenMMGPUWorker, OpenMMRunner  # noqa: E402

pytestmark = [pytest.mark.openmm, pytest.mark.timeout(90)]

LOCAL_MAPPERS = ["Mapper", "WorkerMapper", "SharedMemWorkerMapper"]


def task_keywords(x, platform=None, platform_kwargs=None, **kwargs):
    """What the worker passed: (worker index, platform, platform_kwargs)."""
    return wemap.current_worker().worker_idx, platform, dict(platform_kwargs or {})


class ContextThreads:
    """The runner's segment, then (worker pid, this worker's Context: platform, Threads, id, segments)."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, walker, segment_length, **kwargs):
        self.runner.run_segment(walker, segment_length, **kwargs)
        (live,) = self.runner.live_contexts()
        ctx = live.context
        return os.getpid(), ctx.getPlatform().getName(), ctx.getPlatform().getPropertyValue(ctx, "Threads"), \
            id(ctx), live.segments


def not_the_default_threads(num_workers: int) -> int:
    """A thread count the runner would not pick by itself (cores per worker), so a test sees the task's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 if max(1, cores // num_workers) == 1 else 1


@pytest.fixture(scope="module")
def ala():
    return systems.alanine_dipeptide()


@pytest.mark.parametrize("mapper_name", LOCAL_MAPPERS)
def test_gpu_worker_passes_the_platform_and_its_device(mapper_name):
    with MAPPERS[mapper_name](segment_func=task_keywords, num_workers=2, worker_type=OpenMMGPUWorker,
                              platform="CUDA", device_ids=[3, 7]) as m:
        got = m.map(range(6))
    assert {p for _, p, _ in got} == {"CUDA"}
    assert all(kw == {"DeviceIndex": str([3, 7][idx])} for idx, _, kw in got)


def test_gpu_worker_shares_a_shorter_device_list_in_turn_and_leaves_the_platform_to_the_runner():
    with wemap.WorkerMapper(segment_func=task_keywords, num_workers=3, worker_type=OpenMMGPUWorker,
                            device_ids=[5]) as m:
        got = m.map(range(6))
    assert {p for _, p, _ in got} == {None}
    assert {kw["DeviceIndex"] for _, _, kw in got} == {"5"}


@pytest.mark.parametrize("device_ids", [None, [], "0,1"])
def test_gpu_worker_without_usable_device_ids_names_the_fix(device_ids):
    extra = {} if device_ids is None else {"device_ids": device_ids}
    with wemap.WorkerMapper(segment_func=task_keywords, num_workers=1, worker_type=OpenMMGPUWorker,
                            platform="CUDA", max_retries=0, **extra) as m:
        with pytest.raises(wemap.TaskException, match="device_ids"):
            m.map([0])


class CountedDevices(list):
    """A ``device_ids`` list that counts how often a worker reads an index from it."""

    reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


def test_gpu_worker_reads_its_device_once_not_every_task():
    device_ids = CountedDevices([4])
    with wemap.Mapper(segment_func=task_keywords, worker_type=OpenMMGPUWorker, device_ids=device_ids) as m:
        got = m.map(range(3)) + m.map(range(3))
    assert {kw["DeviceIndex"] for _, _, kw in got} == {"4"}
    assert device_ids.reads == 1


@pytest.mark.parametrize("mapper_name", LOCAL_MAPPERS)
def test_cpu_worker_passes_threads_from_its_attributes(mapper_name):
    with MAPPERS[mapper_name](segment_func=task_keywords, num_workers=2, worker_type=OpenMMCPUWorker,
                              worker_attributes={"num_threads": 3}) as m:
        got = m.map(range(4))
    assert all(p is None and kw == {"Threads": "3"} for _, p, kw in got)


def test_cpu_worker_default_shares_the_cores_and_refuses_a_bad_count():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with wemap.WorkerMapper(segment_func=task_keywords, num_workers=2, worker_type=OpenMMCPUWorker) as m:
        got = m.map(range(2))
    assert {kw["Threads"] for _, _, kw in got} == {str(max(1, cores // 2))}
    with wemap.WorkerMapper(segment_func=task_keywords, num_workers=1, worker_type=OpenMMCPUWorker,
                            worker_attributes={"num_threads": 0}, max_retries=0) as m:
        with pytest.raises(wemap.TaskException, match="num_threads must be a positive int"):
            m.map([0])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: the cores come from the affinity mask")
def test_cpu_worker_asks_for_its_cores_once_not_every_task(monkeypatch):
    asked, cores = [], len(os.sched_getaffinity(0))

    def sched_getaffinity(pid, real=os.sched_getaffinity):
        asked.append(pid)
        return real(pid)

    with wemap.Mapper(segment_func=task_keywords, worker_type=OpenMMCPUWorker) as m:
        monkeypatch.setattr(os, "sched_getaffinity", sched_getaffinity)
        got = m.map(range(3)) + m.map(range(3))
    assert {kw["Threads"] for _, _, kw in got} == {str(cores)}
    assert asked == [0]


@pytest.mark.parametrize("mapper_name", ["WorkerMapper", "SharedMemWorkerMapper"])
def test_cpu_worker_threads_reach_the_runners_context_built_once_per_worker(ala, mapper_name):
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="CPU")
    walkers = ala.walkers(4, seed=1)
    threads = not_the_default_threads(2)
    with MAPPERS[mapper_name](segment_func=ContextThreads(runner), num_workers=2, worker_type=OpenMMCPUWorker,
                              worker_attributes={"num_threads": threads}) as m:
        reports = m.map(walkers, [5] * 4) + m.map(walkers, [5] * 4)
    assert {(r[1], r[2]) for r in reports} == {("CPU", str(threads))}
    by_pid: dict[int, set[int]] = {}
    for pid, _, _, ctx, _ in reports:
        by_pid.setdefault(pid, set()).add(ctx)
    assert all(len(ctxs) == 1 for ctxs in by_pid.values())
    assert sum(max(r[4] for r in reports if r[0] == pid) for pid in by_pid) == 8


def test_gpu_worker_on_a_platform_without_device_index_fails_naming_it(ala):
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="Reference")
    with wemap.WorkerMapper(segment_func=runner.run_segment, num_workers=1, worker_type=OpenMMGPUWorker,
                            device_ids=[0], max_retries=0) as m:
        with pytest.raises(wemap.TaskException, match="DeviceIndex"):
            m.map(ala.walkers(1, seed=1), [2])
