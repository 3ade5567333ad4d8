"""wemap.openmm: the persistent-Context runner through every mapper, seeds, devices, helpers, wepy interop."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")

from mappers import MAPPERS as ALL_MAPPERS  # noqa: E402

import wemap  # noqa: E402
from wemap import systems  # noqa: E402
from wemap.openmm import (  # noqa: E402
    TIMING_FIELDS,
    WEPY_FEATURE_DTYPES,
    WEPY_FEATURE_SHAPES,
    OpenMMRunner,
    json_topology,
    walkers_from_pdb,
    walkers_from_simulation,
    walkers_from_state,
    worker_seed,
)

pytestmark = [pytest.mark.openmm, pytest.mark.timeout(90)]

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


# the contract suite's mappers that run on this machine's processes (Dask has its own tests)
MAPPERS = {name: cls for name, cls in ALL_MAPPERS.items() if name != "DaskMapper"}
PROCESS_MAPPERS = [name for name in MAPPERS if name != "Mapper"]


@pytest.fixture(scope="module")
def ala():
    return systems.alanine_dipeptide()


def direct(system, integrator, platform, props, walker, steps):
    """The same segment on a fresh Context in this process: the ground truth."""
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), props)
    ctx.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in walker.state["box_vectors"]))
    ctx.setPositions(walker.state["positions"])
    ctx.setVelocities(walker.state["velocities"])
    integrator.step(steps)
    state = ctx.getState(getPositions=True, getVelocities=True)
    return (
        state.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer),
        state.getVelocities(asNumpy=True).value_in_unit(openmm.unit.nanometer / openmm.unit.picosecond),
    )


def read_only(walker):
    """A walker whose arrays are read-only views, as the shared-memory mapper hands them in."""
    state = {}
    for k, v in walker.state.items():
        if isinstance(v, np.ndarray):
            v = v.view()
            v.flags.writeable = False
        state[k] = v
    return wemap.Walker(state, walker.weight)


# -- optional dependency ---------------------------------------------------------------------------
def test_import_wemap_does_not_import_openmm():
    code = "import sys, wemap, wemap.resample, wemap.sim; assert 'openmm' not in sys.modules, 'openmm imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=60)


def test_missing_openmm_names_the_extra():
    code = (
        "import sys; sys.modules['openmm'] = None\n"
        "try:\n    import wemap.openmm\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=60
    )
    assert "pip install 'wemap[openmm]'" in out.stdout, out.stdout + out.stderr


# -- the segment is the same MD as a plain Context ------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("mapper_name", list(MAPPERS))
def test_segment_matches_direct_context_verlet(ala, mapper_name):
    """Deterministic integrator, two workers: every walker ends exactly where a plain Context puts it."""
    integrator = openmm.VerletIntegrator(0.001)
    runner = OpenMMRunner(ala.system, integrator, platform="Reference")
    walkers = [ala.walkers(1, seed=s)[0] for s in (1, 2, 3)]
    with MAPPERS[mapper_name](num_workers=2, segment_func=runner.run_segment) as m:
        out = m.map([read_only(w) for w in walkers], [20] * 3)
        out = m.map(out, [20] * 3)  # second cycle on the reused Context
    runner.release()
    for w, o in zip(walkers, out):
        pos, vel = direct(ala.system, openmm.VerletIntegrator(0.001), "Reference", {}, w, 40)
        np.testing.assert_allclose(o.state["positions"], pos, rtol=0, atol=1e-12)
        np.testing.assert_allclose(o.state["velocities"], vel, rtol=0, atol=1e-9)
        assert o.weight == w.weight
        assert o.state["time"] == pytest.approx(0.040)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mapper_name", list(MAPPERS))
def test_segment_matches_direct_context_langevin_one_worker(ala, mapper_name):
    """Langevin with a fixed seed and one worker: bit-for-bit the plain Context's trajectory."""
    props = {"Threads": "1", "DeterministicForces": "true"}
    runner = OpenMMRunner(ala.system, ala.integrator(seed=1234), platform="CPU", platform_properties=props)
    w = ala.walkers(1, seed=5)[0]
    with MAPPERS[mapper_name](num_workers=1, segment_func=runner.run_segment) as m:
        (o,) = m.map([w], [50])
    runner.release()
    pos, vel = direct(ala.system, ala.integrator(seed=1234), "CPU", props, w, 50)
    np.testing.assert_array_equal(o.state["positions"], pos)
    np.testing.assert_array_equal(o.state["velocities"], vel)


def test_returned_state_fields(ala):
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="Reference", get_forces=True)
    w = read_only(ala.walkers(1, seed=1)[0])
    before = {k: np.copy(v) for k, v in w.state.items() if isinstance(v, np.ndarray)}
    out = runner.run_segment(w, 5)
    runner.release()
    for key in ("positions", "velocities", "forces"):
        assert out.state[key].dtype == np.float64 and out.state[key].shape == (22, 3)
    assert out.state["box_vectors"].shape == (3, 3)
    for key in ("potential_energy", "kinetic_energy", "time"):
        assert isinstance(out.state[key], float)
    assert out.state["segment_timings"].shape == (len(TIMING_FIELDS),)
    assert out.state["segment_timings"][0] > 0  # this call built the Context
    for k, v in before.items():  # input untouched
        np.testing.assert_array_equal(w.state[k], v)
    plain = OpenMMRunner(ala.system, ala.integrator(), platform="Reference", get_energy=False, record_timings=False)
    state = plain.run_segment(w, 1).state
    plain.release()
    assert set(state) == {"positions", "velocities", "box_vectors", "time"}


def test_missing_velocities_is_a_clear_error(ala):
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="Reference")
    w = wemap.Walker({"positions": ala.positions}, 1.0)
    with pytest.raises(KeyError, match="velocities"):
        runner.run_segment(w, 1)
    runner.release()


def test_unknown_platform_is_refused(ala):
    with pytest.raises(ValueError, match="unknown OpenMM platform"):
        OpenMMRunner(ala.system, ala.integrator(), platform="cuda")


# -- one Context per worker, reused ----------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("mapper_name", list(MAPPERS))
def test_context_built_once_per_worker(ala, mapper_name):
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="CPU")
    walkers = ala.walkers(4, seed=1)
    builds, ran = [], set()
    with MAPPERS[mapper_name](num_workers=2, segment_func=runner.run_segment) as m:
        for _ in range(3):
            walkers = m.map(walkers, [10] * 4)
            builds.append(sum(w.state["segment_timings"][0] > 0 for w in walkers))
            ran |= {idx for idx, times in m.worker_segment_times.items() if times}
    assert sum(builds) == len(ran), builds  # one build per worker that ran anything, never a rebuild
    assert builds[0] >= 1
    if mapper_name == "Mapper":
        (live,) = runner.live_contexts()
        assert live.segments == 12
    runner.release()
    assert runner.live_contexts() == []


# -- clones diverge ----------------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("mapper_name", list(MAPPERS))
def test_clones_diverge_in_one_cycle(ala, mapper_name, seed):
    """Four identical clones, one cycle: four different end states, whichever worker ran each."""
    runner = OpenMMRunner(ala.system, ala.integrator(seed=seed), platform="CPU")
    clone = ala.walkers(1, seed=7)[0]
    with MAPPERS[mapper_name](num_workers=2, segment_func=runner.run_segment) as m:
        out = m.map([clone] * 4, [20] * 4)
    runner.release()
    finals = [o.state["positions"] for o in out]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(finals[i], finals[j]), f"clones {i} and {j} ended identical"


def test_worker_seeds_are_distinct_and_keep_zero():
    assert worker_seed(42, 0) == 42
    seeds = {worker_seed(42, i) for i in range(64)}
    assert len(seeds) == 64 and all(0 < s < 2**31 for s in seeds)
    assert worker_seed(0, 5) == 0  # OpenMM picks a unique seed per Context


def test_context_settings_give_each_worker_its_seed(ala):
    runner = OpenMMRunner(ala.system, ala.integrator(seed=42), platform="CPU")
    seeds = [runner.context_settings(i, 4)[1] for i in range(4)]
    assert seeds[0] == 42 and len(set(seeds)) == 4
    assert OpenMMRunner(ala.system, ala.integrator(seed=42), platform="CPU", seed=7).context_settings(0, 2)[1] == 7


def test_a_context_parses_the_integrator_once(ala, monkeypatch):
    """Without ``seed=``, the integrator's own seed is the base: it is not read from a second parsed copy."""
    runner = OpenMMRunner(ala.system, ala.integrator(seed=42), platform="Reference")
    parsed = []
    deserialize = openmm.XmlSerializer.deserialize

    def counted(xml):
        obj = deserialize(xml)
        parsed.append(type(obj).__name__)
        return obj

    monkeypatch.setattr(openmm.XmlSerializer, "deserialize", counted)
    with wemap.Mapper(segment_func=runner.run_segment) as m:
        m.map(ala.walkers(2, seed=1), [2, 2])
    assert parsed.count("System") == 1 and len(parsed) == 2, parsed
    (live,) = runner.live_contexts()
    assert live.seed == 42 and live.integrator.getRandomNumberSeed() == 42
    runner.release()


# the devices, the platform check and the OpenMM floor: tests/test_devices.py


# -- helpers -------------------------------------------------------------------------------------
def test_initial_walker_helpers(ala):
    ctx = openmm.Context(ala.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(ala.positions)
    ctx.setVelocitiesToTemperature(300, 1)
    walkers = walkers_from_state(ctx.getState(getPositions=True, getVelocities=True, getEnergy=True), 4)
    assert len(walkers) == 4 and sum(w.weight for w in walkers) == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(walkers[0].state["positions"], ala.positions, atol=1e-12)

    sim = openmm.app.Simulation(ala.topology, ala.system, openmm.VerletIntegrator(0.001),
                                openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(ala.positions)
    assert len(walkers_from_simulation(sim, 3)) == 3

    walkers, system, topology = walkers_from_pdb(systems.alanine_dipeptide_pdb(), 2, seed=3)
    assert system.getNumParticles() == 22 and topology.getNumAtoms() == 22
    assert np.abs(walkers[0].state["velocities"]).sum() > 0


def test_json_topology_counts_atoms_and_bonds(ala):
    import json

    top = json.loads(json_topology(ala.topology))
    atoms = [a for c in top["chains"] for r in c["residues"] for a in r["atoms"]]
    assert len(atoms) == 22 and len(top["bonds"]) == 21
    assert [r["name"] for r in top["chains"][0]["residues"]] == ["ACE", "ALA", "NME"]


def test_alanine_dipeptide_and_dihedrals(ala):
    assert ala.n_atoms == 22
    phi = systems.backbone_dihedral(ala.topology, "phi")
    psi = systems.backbone_dihedral(ala.topology, "psi")
    w = ala.walkers(1, seed=1)[0]
    assert -180 < phi(w) < 0  # L-alanine sits at negative phi
    assert -180 < psi(w) <= 180
    with pytest.raises(ValueError, match="phi"):
        systems.backbone_dihedral(ala.topology, "omega")


def test_water_box_has_the_atoms_asked_for():
    box = systems.water_box(600)
    assert box.n_atoms == 600 and box.topology.getNumResidues() == 200
    assert box.system.usesPeriodicBoundaryConditions()
    assert box.box_vectors[0, 0] > 1.5


# -- wepy --------------------------------------------------------------------------------------------
@pytest.mark.wepy
@pytest.mark.timeout(120)
def test_wepy_walkers_in_wepy_manager_recorded_by_hdf5_reporter(ala, tmp_path):
    pytest.importorskip("wepy")
    pytest.importorskip("mdtraj", reason="wepy's HDF5 reporter imports mdtraj")
    import h5py
    from wepy.reporter.hdf5 import WepyHDF5Reporter
    from wepy.resampling.resamplers.resampler import NoResampler
    from wepy.sim_manager import Manager
    from wepy.walker import Walker as WepyWalker
    from wepy.walker import WalkerState

    runner = OpenMMRunner(ala.system, ala.integrator(), platform="CPU")
    walkers = ala.walkers(4, seed=1, walker_type=WepyWalker)
    assert type(walkers[0].state) is WalkerState
    resampler = NoResampler()
    path = tmp_path / "run.wepy.h5"
    reporter = WepyHDF5Reporter(
        file_path=str(path), mode="w", topology=json_topology(ala.topology), resampler=resampler,
        feature_shapes=WEPY_FEATURE_SHAPES, feature_dtypes=WEPY_FEATURE_DTYPES,
    )
    mapper_cls = MAPPERS.get("SharedMemWorkerMapper", wemap.WorkerMapper)
    manager = Manager(walkers, runner=runner, resampler=resampler, work_mapper=mapper_cls(num_workers=2),
                      reporters=[reporter])
    final, _ = manager.run_simulation(3, 25, num_workers=2)
    assert all(type(w) is WepyWalker and hasattr(w.state, "dict") for w in final)
    assert final[0].state["time"].shape == (1,)
    with h5py.File(path, "r") as f:
        traj = f["runs/0/trajectories/0"]
        assert traj["positions"].shape == (3, 22, 3)
        np.testing.assert_allclose(traj["time"][:, 0], [0.05, 0.10, 0.15])
        assert traj["segment_timings"].shape == (3, len(TIMING_FIELDS))


def test_integrator_state_does_not_leak_between_walkers(ala):
    """Nose-Hoover chain state and CustomIntegrator variables start fresh for every walker."""
    a, b = ala.walkers(2, seed=5)
    fresh = OpenMMRunner(ala.system, openmm.NoseHooverIntegrator(300, 50, 0.001), platform="Reference")
    ref = fresh.run_segment(b, 300)
    reused = OpenMMRunner(ala.system, openmm.NoseHooverIntegrator(300, 50, 0.001), platform="Reference")
    reused.run_segment(a, 300)
    got = reused.run_segment(b, 300)
    np.testing.assert_allclose(got.state["positions"], ref.state["positions"], atol=1e-9)

    counting = openmm.CustomIntegrator(0.001)
    counting.addGlobalVariable("n", 0)
    counting.addComputeGlobal("n", "n+1")
    counting.addComputePerDof("v", "v+dt*f/m")
    counting.addComputePerDof("x", "x+dt*v")
    runner = OpenMMRunner(ala.system, counting, platform="Reference")
    runner.run_segment(a, 100)
    runner.run_segment(b, 100)
    (live,) = runner.live_contexts()
    assert live.integrator.getGlobalVariableByName("n") == 100
    fresh.release(), reused.release(), runner.release()


def test_walker_without_time_starts_at_zero(ala):
    runner = OpenMMRunner(ala.system, openmm.VerletIntegrator(0.001), platform="Reference")
    (w,) = ala.walkers(1, seed=2)
    state = {k: v for k, v in w.state.items() if k != "time"}
    first = runner.run_segment(wemap.Walker(state, 1.0), 50)
    second = runner.run_segment(wemap.Walker(state, 1.0), 50)
    assert float(first.state["time"]) == pytest.approx(0.05) == float(second.state["time"])
    runner.release()


def test_context_inherited_through_fork_is_not_used(ala):
    """A Context built in the parent (an in-process run first) must not be reused by a forked worker."""
    runner = OpenMMRunner(ala.system, openmm.VerletIntegrator(0.001), platform="CPU")
    (w,) = ala.walkers(1, seed=3)
    here = runner.run_segment(w, 10)
    with wemap.WorkerMapper(segment_func=runner.run_segment, num_workers=1, start_method="fork",
                            first_task_timeout=30, max_retries=0) as m:
        (there,) = m.map([w], [10])
    np.testing.assert_allclose(there.state["positions"], here.state["positions"], atol=1e-5)
    runner.release()

