"""wemap.openmm.WepyOpenMMRunner: wepy's OpenMMRunner, bit for bit, with one Context per worker.

The parity runs are wepy's own: its Manager, UnbindingBC (warps), REVO (clones and merges) and
WepyHDF5Reporter, on a Lennard-Jones pair in a periodic box crossing the box's edge, Reference
platform, no friction. wepy's runner under wepy's Mapper writes the reference file; wemap's runner
under every wemap mapper must write the same datasets, byte for byte.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("wepy")
h5py = pytest.importorskip("h5py")
pytest.importorskip("mdtraj", reason="wepy's HDF5 reporter imports mdtraj")

import wepy.runners.openmm as wepy_openmm  # noqa: E402
from conftest import descriptor  # noqa: E402
from mappers import MAPPERS  # noqa: E402
from openmm import app  # noqa: E402
from test_openmm_workers import not_the_default_threads  # noqa: E402
from wepy.boundary_conditions.receptor import UnbindingBC  # noqa: E402
from wepy.reporter.hdf5 import WepyHDF5Reporter  # noqa: E402
from wepy.resampling.distances.distance import Distance  # noqa: E402
from wepy.resampling.resamplers.revo import REVOResampler  # noqa: E402
from wepy.runners.openmm import GET_STATE_KWARG_DEFAULTS, OpenMMState, OpenMMWalker  # noqa: E402
from wepy.sim_manager import Manager  # noqa: E402
from wepy.work_mapper.mapper import Mapper as WepyMapper  # noqa: E402

import wemap  # noqa: E402
from wemap._arrays import Placement  # noqa: E402
from wemap.codec import CodecRegistry  # noqa: E402
from wemap.memcopy import write_arrays  # noqa: E402
from wemap.openmm import (  # noqa: E402
    ArrayState,
    OpenMMCPUWorker,
    OpenMMGPUWorker,
    OpenMMRunner,
    WepyOpenMMRunner,
    array_walker,
    array_walkers,
    json_topology,
    openmm_walker,
)
from wemap.shm.calls import decode_call, encode_call  # noqa: E402
from wemap.slot_format import Layouts, dtype_description, unpack, values  # noqa: E402

pytestmark = [pytest.mark.openmm, pytest.mark.wepy, pytest.mark.timeout(120)]

PROCESS_MAPPERS = ["WorkerMapper", "SharedMemWorkerMapper"]
BOX = 2.0  # nm
DRIFT = 0.5  # nm/ps in -x: the pair crosses the box's edge at x = 0
REFERENCE = "Reference"


# -- a small system, wepy's runner, and a run --------------------------------------------------------
def lj_pair() -> tuple[openmm.System, app.Topology]:
    """Two argon atoms in a periodic box (wepy's LJ-pair example in miniature)."""
    system, topology = openmm.System(), app.Topology()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.9)
    chain = topology.addChain()
    for _ in range(2):
        system.addParticle(39.9)
        nb.addParticle(0.0, 0.3405, 0.996)
        topology.addAtom("Ar", app.element.argon, topology.addResidue("AR", chain))
    system.addForce(nb)
    box = [openmm.Vec3(BOX, 0, 0), openmm.Vec3(0, BOX, 0), openmm.Vec3(0, 0, BOX)]
    system.setDefaultPeriodicBoxVectors(*box)
    topology.setPeriodicBoxVectors(box)
    return system, topology


def integrator() -> openmm.Integrator:
    """Deterministic: no friction, so the noise is multiplied by zero (wepy's runner needs a seedable integrator)."""
    return openmm.LangevinMiddleIntegrator(300, 0.0, 0.004)


def sim_states(system: openmm.System, n: int, **get_state) -> list[openmm.State]:
    """``n`` States pulling the pair apart at different speeds while it drifts across the box's x = 0 edge."""
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(REFERENCE))
    out = []
    for i in range(n):
        ctx.setPositions(np.array([[0.05, 1.0, 1.0], [-0.33, 1.02, 1.0]]))
        v = 0.15 + 0.12 * i
        ctx.setVelocities(np.array([[v - DRIFT, 0.01 * i, 0.0], [-v - DRIFT, 0.0, 0.02]]))
        out.append(ctx.getState(**(get_state or dict(GET_STATE_KWARG_DEFAULTS))))
    return out


@pytest.fixture(autouse=True)
def wepy_runner_init(monkeypatch):
    """wepy 1.2's OpenMMRunner.__init__ reads an undefined name (NameError: get_parameter_derivs)."""
    monkeypatch.setattr(wepy_openmm, "get_parameter_derivs", False, raising=False)


class LigandX(Distance):
    """REVO's metric: the ligand atom's x coordinate (enough to clone and merge)."""

    def image(self, state):
        return np.array([float(state["positions"][1, 0])])

    def image_distance(self, image_a, image_b):
        return float(abs(image_a[0] - image_b[0]))


class SeededREVO(REVOResampler):
    """REVO drawing from Python's global ``random`` reseeded every cycle: a Dask cluster in this
    process draws from it too, which would otherwise change REVO's choices from run to run."""

    def resample(self, walkers):
        self._cycle = getattr(self, "_cycle", -1) + 1
        random.seed(1000 + self._cycle)
        return super().resample(walkers)


def run(runner, mapper, path, *, arrays: bool = False, cycles: int = 6, steps: int = 25) -> list:
    """A wepy simulation: warps (UnbindingBC), clones and merges (REVO), recorded by WepyHDF5Reporter."""
    system, topology = lj_pair()
    walkers = [OpenMMWalker(OpenMMState(s), w) for s, w in zip(sim_states(system, 4), [0.4, 0.3, 0.2, 0.1])]
    if arrays:
        walkers = array_walkers(walkers)
    np.random.seed(7)  # the boundary condition draws its target with numpy's global generator
    bc = UnbindingBC(cutoff_distance=0.7, initial_state=walkers[0].state, topology=json_topology(topology),
                     ligand_idxs=np.array([1]), receptor_idxs=np.array([0]), periodic=True)
    resampler = SeededREVO(distance=LigandX(), init_state=walkers[0].state, char_dist=0.01, merge_dist=2.0,
                              pmin=1e-6, pmax=0.5, seed=3)
    reporter = WepyHDF5Reporter(file_path=str(path), mode="w", topology=json_topology(topology), resampler=resampler,
                                boundary_conditions=bc)
    manager = Manager(walkers, runner=runner, resampler=resampler, boundary_conditions=bc, work_mapper=mapper,
                      reporters=[reporter])
    final, _ = manager.run_simulation(cycles, steps, num_workers=2)
    return final


def datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def same(a, b) -> bool:
    """Equal bit for bit: dtype, shape and bytes (element by element for variable-length data)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return all(same(x, y) for x, y in zip(a.ravel(), b.ravel()))
    return a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def wepy_reference(tmp_path_factory):
    """wepy's runner under wepy's Mapper: the file every wemap run must reproduce."""
    system, topology = lj_pair()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wepy_openmm, "get_parameter_derivs", False, raising=False)
        runner = wepy_openmm.OpenMMRunner(system, topology, integrator(), platform=REFERENCE)
    path = tmp_path_factory.mktemp("wepy") / "wepy.h5"
    final = run(runner, WepyMapper(), path)
    data = datasets(path)
    # the run must show something: warps, clones and merges, positions wrapped into the box
    assert len(data["runs/0/warping/walker_idx"]) >= 2
    decisions = set(data["runs/0/resampling/decision_id"].ravel().tolist())
    enum = REVOResampler.DECISION.ENUM
    assert {enum.CLONE.value, enum.SQUASH.value} <= decisions
    pos = data["runs/0/trajectories/0/positions"]
    assert pos.min() >= 0.0 and pos.max() < BOX
    return data, final


# -- parity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mapper_name", list(MAPPERS))
@pytest.mark.slow
def test_same_hdf5_as_wepys_runner_through_every_mapper(mapper_name, wepy_reference, tmp_path):
    reference, wepy_final = wepy_reference
    system, topology = lj_pair()
    runner = WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE)
    path = tmp_path / "wemap.h5"
    # the shared-memory mapper gets walkers over ArrayStates from the start (the way to keep every
    # cycle's arrays out of pickles); the others get wepy's openmm.State walkers: both give the same run
    final = run(runner, MAPPERS[mapper_name](num_workers=2), path, arrays=mapper_name == "SharedMemWorkerMapper")
    ours = datasets(path)
    assert sorted(ours) == sorted(reference)
    for field in ("forces", "box_volume", "box_vectors", "kinetic_energy", "potential_energy"):
        assert f"runs/0/trajectories/0/{field}" in ours
    differ = [name for name in reference if not same(reference[name], ours[name])]
    assert differ == [], f"{len(differ)} of {len(reference)} datasets differ from wepy's runner: {differ}"
    assert all(type(w) is OpenMMWalker and type(w.state) is OpenMMState for w in final)
    assert all(type(w.state.sim_state) is ArrayState for w in final)
    for ours_w, theirs in zip(final, wepy_final, strict=True):
        assert ours_w.weight == theirs.weight
        a, b = ours_w.state.dict(), theirs.state.dict()
        assert sorted(a) == sorted(b) and all(same(a[k], b[k]) for k in a)
    if mapper_name == "Mapper":  # in this process: one Context kept for every segment of the run
        (live,) = runner.live_contexts()
        assert live.segments == 6 * 4
    runner.release()


@pytest.mark.parametrize("mapper_name", ["Mapper", "SharedMemWorkerMapper"])
def test_split_times_are_kept_where_wepys_manager_reads_them(mapper_name):
    """wepy's Manager reads the runner's per-segment split times after each cycle: one entry a walker
    where the segments run in this process (`wemap.Mapper`); a worker's copy of the runner keeps none."""
    system, topology = lj_pair()
    runner = WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE)
    walkers = [OpenMMWalker(OpenMMState(s), 0.5) for s in sim_states(system, 2)]
    runner.pre_cycle()
    with MAPPERS[mapper_name](segment_func=runner.run_segment, num_workers=1) as m:
        m.map(walkers, [5, 5])
    splits = runner._last_cycle_segments_split_times  # wepy's name, which its Manager reads
    assert len(splits) == (2 if mapper_name == "Mapper" else 0)
    assert all(s["run_segment_time"] >= s["steps_time"] >= 0 for s in splits)
    runner.release()


def test_a_state_without_velocities_starts_at_rest_as_in_wepys_fresh_context():
    system, topology = lj_pair()
    (bare,) = sim_states(system, 1, getPositions=True)
    (moving,) = sim_states(system, 1)
    theirs = wepy_openmm.OpenMMRunner(system, topology, integrator(), platform=REFERENCE)
    ours = WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE)
    ours.run_segment(openmm_walker(moving, 1.0), 20)  # the reused Context then holds velocities
    want = theirs.run_segment(OpenMMWalker(OpenMMState(bare), 1.0), 20).state.dict()
    for walker in (OpenMMWalker(OpenMMState(bare), 1.0), openmm_walker(bare, 1.0)):
        got = ours.run_segment(walker, 20).state.dict()
        assert sorted(got) == sorted(want) and all(same(got[k], want[k]) for k in want)
    ours.release()


def test_context_parameters_and_their_derivatives_match_wepys():
    """A State's context parameters are set for its walker, and the next walker starts from the defaults."""
    system, topology = lj_pair()
    pull = openmm.CustomBondForce("k*(r-0.6)^2")
    pull.setUsesPeriodicBoundaryConditions(True)
    pull.addGlobalParameter("k", 5.0)
    pull.addEnergyParameterDerivative("k")
    pull.addBond(0, 1, [])
    system.addForce(pull)
    kw = {"getParameterDerivatives": True}
    theirs = wepy_openmm.OpenMMRunner(system, topology, integrator(), platform=REFERENCE, get_state_kwargs=kw)
    ours = WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE, get_state_kwargs=kw)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(REFERENCE))
    ctx.setPositions(np.array([[0.05, 1.0, 1.0], [1.5, 1.02, 1.0]]))
    ctx.setParameter("k", 40.0)
    stiff = ctx.getState(getPositions=True, getVelocities=True, getParameters=True)
    (plain,) = sim_states(system, 1, getPositions=True, getVelocities=True)
    for sim_state, k in ((stiff, 40.0), (plain, 5.0), (stiff, 40.0)):
        want = theirs.run_segment(OpenMMWalker(OpenMMState(sim_state), 1.0), 15).state.dict()
        for walker in (OpenMMWalker(OpenMMState(sim_state), 1.0), openmm_walker(sim_state, 1.0)):
            got = ours.run_segment(walker, 15).state
            assert sorted(got.dict()) == sorted(want) and all(same(got.dict()[k], want[k]) for k in want)
            assert got["parameters/k"] == k
            assert "parameter_derivatives/k" in got.dict()
    ours.release()


# -- what a walker holds, and how it travels -----------------------------------------------------------
def test_array_state_answers_every_getter_as_the_openmm_state_does():
    system, _ = lj_pair()
    (state,) = sim_states(system, 1)
    arr = ArrayState.from_state(state)
    assert arr.getDataTypes() == state.getDataTypes()
    assert arr.getStepCount() == state.getStepCount()
    for getter in ("getPositions", "getVelocities", "getForces", "getPeriodicBoxVectors"):
        for as_numpy in (True, False):
            a, b = getattr(arr, getter)(asNumpy=as_numpy), getattr(state, getter)(asNumpy=as_numpy)
            assert a.unit == b.unit
            assert same(np.array(a.value_in_unit(a.unit)), np.array(b.value_in_unit(b.unit)))
    for getter in ("getKineticEnergy", "getPotentialEnergy", "getTime", "getPeriodicBoxVolume"):
        a, b = getattr(arr, getter)(), getattr(state, getter)()
        assert a.unit == b.unit and a._value == b._value
    assert arr.getParameters() == dict(state.getParameters())
    mine, theirs = OpenMMState(arr).dict(), OpenMMState(state).dict()
    assert sorted(mine) == sorted(theirs) and all(same(mine[k], theirs[k]) for k in theirs)
    for clone in (pickle.loads(pickle.dumps(arr)), copy.deepcopy(arr)):
        assert same(clone.positions, arr.positions) and clone.getDataTypes() == arr.getDataTypes()
        assert not clone.positions.flags.writeable, "an ArrayState, like an openmm.State, does not change"
    bare = ArrayState.from_state(sim_states(system, 1, getPositions=True)[0])
    with pytest.raises(openmm.OpenMMException, match="does not contain velocities"):
        bare.getVelocities()
    with pytest.raises(openmm.OpenMMException, match="does not contain energies"):
        bare.getKineticEnergy()


def test_walker_arrays_travel_as_raw_bytes_and_only_a_few_numbers_are_pickled():
    """The shared-memory mapper's codec registry carries an ArrayState walker's arrays as fields;
    its metadata stays small however many atoms. A walker over an openmm.State is pickled (as XML)."""
    n_atoms = 5000
    system = openmm.System()
    for _ in range(n_atoms):
        system.addParticle(39.9)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(REFERENCE))
    ctx.setPositions(np.random.default_rng(0).random((n_atoms, 3)))
    state = ctx.getState(**dict(GET_STATE_KWARG_DEFAULTS))
    walker = openmm_walker(state, 0.25, label="a", extra=np.arange(7.0))
    reg = CodecRegistry()
    layouts = Layouts(reg.by_name, 1 << 20)
    assert reg.for_object(walker).name == "openmm_walker"
    enc = encode_call(layouts, reg, (walker,), {}, where="walker 0", place=Placement(dtype_description))
    fields = {a.nbytes for a in enc.copies}
    assert 3 * n_atoms * 3 * 8 <= enc.array_bytes and n_atoms * 3 * 8 in fields
    desc = descriptor([0], enc.layout, enc.values, len(enc.extras), 1)
    assert len(desc) < 2048 and not enc.extras, f"{len(desc)} bytes of layout and values, {len(enc.extras)} extras"
    xml_walker = OpenMMWalker(OpenMMState(state), 0.25)
    assert reg.for_object(xml_walker).name == "pickle5"
    xml = encode_call(layouts, reg, (xml_walker,), {}, where="walker 0", place=Placement(dtype_description))
    assert len(pickle.dumps(xml.extras)) > 100 * len(desc), "the XML travels pickled, over the pipe"
    # and back: the same walker, its extra data included
    block = np.zeros(1 << 20, dtype=np.uint8)
    write_arrays(block, enc.offsets, enc.copies, enc.largest)
    _, blocks, layout, raw, _ = unpack(np.frombuffer(desc, np.uint8), layouts, 2)
    (back,), _ = decode_call(layout, values(raw, layout, enc.extras), [(block, 0) for _ in blocks])
    assert type(back) is OpenMMWalker and back.weight == 0.25
    assert back.state["label"] == "a" and same(back.state["extra"], np.arange(7.0))
    got, want = back.state.dict(), OpenMMState(state).dict()
    assert all(same(got[k], want[k]) for k in want)


def test_array_walkers_keep_the_numbers_and_the_extra_data():
    system, _ = lj_pair()
    (state,) = sim_states(system, 1)
    w = OpenMMWalker(OpenMMState(state, tag=np.array([3])), 0.5)
    a = array_walker(w)
    assert type(a.state.sim_state) is ArrayState and a.weight == 0.5 and a.state["tag"][0] == 3
    assert array_walker(a) is a
    with pytest.raises(TypeError, match="OpenMMState"):
        array_walker(wemap.Walker({"positions": np.zeros((2, 3))}, 1.0))


# -- one Context per worker, the platform each task asks for --------------------------------------------
class ContextReport:
    """The runner's segment, then this worker's Context: (walker, platform, Threads, pid, Context id, segments)."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, walker, segment_length, **kwargs):
        new = self.runner.run_segment(walker, segment_length, **kwargs)
        (live,) = self.runner.live_contexts()
        ctx, platform = live.context, live.context.getPlatform()
        threads = platform.getPropertyValue(ctx, "Threads") if platform.getName() == "CPU" else None
        return new, platform.getName(), threads, os.getpid(), id(ctx), live.segments


def _runners(platform: str):
    system, topology = lj_pair()
    return {"WepyOpenMMRunner": WepyOpenMMRunner(system, topology, integrator(), platform=platform),
            "OpenMMRunner": OpenMMRunner(system, integrator(), platform=platform)}


def _walkers(kind: str, n: int) -> list:
    system, _ = lj_pair()
    states = sim_states(system, n)
    if kind == "WepyOpenMMRunner":
        return [openmm_walker(s, 1.0 / n) for s in states]
    return [wemap.openmm.make_walker(wemap.Walker, wemap.openmm.state_fields(s), 1.0 / n) for s in states]


@pytest.mark.parametrize("runner_kind", ["WepyOpenMMRunner", "OpenMMRunner"])
@pytest.mark.parametrize("mapper_name", PROCESS_MAPPERS)
@pytest.mark.parametrize("worker_type", [OpenMMCPUWorker, wepy_openmm.OpenMMCPUWorker], ids=["wemap", "wepy"])
@pytest.mark.slow
def test_cpu_workers_threads_reach_each_workers_context_kept_across_cycles(runner_kind, mapper_name, worker_type):
    runner = _runners("CPU")[runner_kind]
    threads = not_the_default_threads(2)
    with MAPPERS[mapper_name](num_workers=2, worker_type=worker_type, worker_attributes={"num_threads": threads},
                              segment_func=ContextReport(runner)) as m:
        walkers = _walkers(runner_kind, 4)
        reports = []
        for _ in range(3):
            out = m.map(walkers, [5] * 4)
            walkers = [r[0] for r in out]
            reports += out
    assert {(r[1], r[2]) for r in reports} == {("CPU", str(threads))}
    contexts: dict[int, set[int]] = {}
    for r in reports:
        contexts.setdefault(r[3], set()).add(r[4])
    assert all(len(ids) == 1 for ids in contexts.values()), "a worker built a second Context"
    assert max(r[5] for r in reports) >= 3, "a worker's Context ran segments of several cycles"


def test_a_task_platform_and_properties_win_and_rebuild_only_when_they_change():
    for runner in _runners("CPU").values():
        w = _walkers(type(runner).__name__, 1)[0]
        n = not_the_default_threads(1)
        runner.run_segment(w, 3, platform_kwargs={"Threads": str(n)})
        (first,) = runner.live_contexts()
        assert first.context.getPlatform().getPropertyValue(first.context, "Threads") == str(n)
        runner.run_segment(w, 3, platform_kwargs={"Threads": str(n)})
        (again,) = runner.live_contexts()
        assert again is first and first.segments == 2
        runner.run_segment(w, 3, platform_kwargs={"Threads": str(n + 1)})
        (second,) = runner.live_contexts()
        assert second is not first
        assert second.context.getPlatform().getPropertyValue(second.context, "Threads") == str(n + 1)
        runner.run_segment(w, 3, platform="Reference")
        (third,) = runner.live_contexts()
        assert third.context.getPlatform().getName() == "Reference"
        runner.release()


@pytest.mark.parametrize("runner_kind", ["WepyOpenMMRunner", "OpenMMRunner"])
def test_a_property_the_platform_lacks_is_an_error_naming_it(runner_kind):
    runner = _runners(REFERENCE)[runner_kind]
    (w,) = _walkers(runner_kind, 1)
    with pytest.raises(RuntimeError, match="Threads"):  # Reference has no Threads property
        runner.run_segment(w, 2, platform_kwargs={"Threads": "2"})
    with pytest.raises(RuntimeError, match="NoSuchPlatform"):
        runner.run_segment(w, 2, platform="NoSuchPlatform")
    runner.release()


@pytest.mark.parametrize("mapper_name", PROCESS_MAPPERS)
def test_gpu_worker_device_index_on_a_platform_without_it_is_a_task_error(mapper_name):
    """wepy's and wemap's GPU workers ask for a DeviceIndex: on CPU that cannot be honoured, so it fails."""
    runner = _runners("CPU")["WepyOpenMMRunner"]
    for worker_type in (OpenMMGPUWorker, wepy_openmm.OpenMMGPUWorker):
        with MAPPERS[mapper_name](num_workers=2, worker_type=worker_type, segment_func=runner.run_segment,
                                  platform="CPU", device_ids=[0, 1], max_retries=0) as m:
            with pytest.raises(wemap.TaskException, match="DeviceIndex"):
                m.map(_walkers("WepyOpenMMRunner", 2), [2, 2])


def test_bad_arguments_are_refused_with_the_fix():
    system, topology = lj_pair()
    with pytest.raises(TypeError, match="platform must be an OpenMM platform name"):
        WepyOpenMMRunner(system, topology, integrator())
    with pytest.raises(ValueError, match="NoSuchPlatform"):
        WepyOpenMMRunner(system, topology, integrator(), platform="NoSuchPlatform")
    with pytest.raises(ValueError, match="getPositons"):
        WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE, get_state_kwargs={"getPositons": True})
    with pytest.raises(ValueError, match="getIntegratorParameters"):
        WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE,
                         get_state_kwargs={"getIntegratorParameters": True})
    with pytest.warns(UserWarning, match="enforcePeriodicBox"):
        WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE, enforce_box=False)
    runner = WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE, enforce_box=True)
    assert runner.enforce_box is True and runner.platform_name == REFERENCE
    with pytest.raises(ValueError, match="would not reach them"):
        runner.pre_cycle(platform="CUDA")
    (w,) = _walkers("WepyOpenMMRunner", 1)
    with pytest.raises(ValueError, match="name the platform"):
        runner.run_segment(w, 2, platform=..., platform_kwargs={"Threads": "1"})
    with pytest.raises(TypeError, match="OpenMMState"):
        runner.run_segment(_walkers("OpenMMRunner", 1)[0], 2)
    runner.release()


def test_unwrapped_positions_when_asked_and_then_the_run_differs_from_wepys(wepy_reference, tmp_path):
    """The parity check can fail: without wepy's enforcePeriodicBox default the recorded positions differ."""
    reference, _ = wepy_reference
    system, topology = lj_pair()
    runner = WepyOpenMMRunner(system, topology, integrator(), platform=REFERENCE,
                              get_state_kwargs={"enforcePeriodicBox": False})
    run(runner, wemap.Mapper(), tmp_path / "unwrapped.h5")
    ours = datasets(tmp_path / "unwrapped.h5")
    assert not same(reference["runs/0/trajectories/0/positions"], ours["runs/0/trajectories/0/positions"])
    runner.release()


def test_the_codec_is_imported_only_once_wepys_openmm_walkers_can_exist():
    """A registry (every shared-memory mapper and worker has one) imports neither OpenMM nor wepy's runners."""
    code = (
        "import sys, numpy as np, wemap\n"
        "from wemap.codec import CodecRegistry\n"
        "reg = CodecRegistry()\n"
        "assert reg.for_object(wemap.Walker({'x': np.zeros(3)}, 1.0)).name == 'walker'\n"
        "assert reg.for_object(object()).name == 'pickle5'\n"
        "late = {'openmm', 'wepy.runners.openmm', 'wemap.openmm'} & set(sys.modules)\n"
        "assert not late, f'imported: {late}'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
