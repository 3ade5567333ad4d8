"""The benchmark systems run: a water box of any size survives its first segments without NaN."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openmm")

from wemap import Mapper  # noqa: E402
from wemap.openmm import OpenMMRunner  # noqa: E402
from wemap.systems import water_box  # noqa: E402

pytestmark = [pytest.mark.openmm, pytest.mark.timeout(120)]


@pytest.mark.parametrize("atoms", [600, 900, 1500])
@pytest.mark.slow
def test_water_boxes_run_without_nan(atoms):
    box = water_box(atoms)  # 900 atoms reached NaN within 100 steps before the box was relaxed
    runner = OpenMMRunner(box.system, box.integrator(), platform="CPU")
    walker = box.walkers(1, seed=1)[0]
    with Mapper(segment_func=runner.run_segment) as m:
        for _ in range(3):
            walker = m.map([walker], [100])[0]
    runner.release()
    assert np.isfinite(walker.state["positions"]).all()
    assert walker.state["potential_energy"] < 0  # liquid water is bound
