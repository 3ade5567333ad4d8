"""Build the alanine dipeptide (ACE-ALA-NME, 22 atoms) that `wemap demo` ships, from internal coordinates.

The structure is made here rather than copied from elsewhere: every atom is placed from
standard peptide bond lengths, angles and dihedrals (natural extension reference frame),
starting in the C7eq conformation (phi -80, psi 80), as the L enantiomer (checked, see `chirality`).
It is then minimised with OpenMM's amber14 force field in OBC2 implicit solvent and written
to ``src/wemap/data/alanine-dipeptide.pdb``. Rerun it after changing anything here::

    python tools/make_alanine_dipeptide.py [--out PATH]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "wemap" / "data" / "alanine-dipeptide.pdb"

# Standard geometry (nm, degrees): Engh & Huber style peptide values, tetrahedral hydrogens.
BOND = {"C-N": 0.1335, "N-CA": 0.1458, "CA-C": 0.1525, "C=O": 0.1231, "CA-CB": 0.1530,
        "CH3-C": 0.1520, "N-CH3": 0.1449, "C-H": 0.1090, "N-H": 0.1010}
ANGLE = {"CA-C-N": 116.2, "C-N-CA": 121.7, "N-CA-C": 111.2, "O=C-N": 122.7, "N-CA-CB": 110.5,
         "C-N-H": 119.8, "tet": 109.5}
PHI, PSI, OMEGA = -80.0, 80.0, 180.0


def place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position of atom d bonded to c, with angle b-c-d and dihedral a-b-c-d (degrees)."""
    angle, torsion = math.radians(angle), math.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = bond * np.array(
        [-math.cos(angle), math.sin(angle) * math.cos(torsion), math.sin(angle) * math.sin(torsion)]
    )
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def chirality(n: np.ndarray, ca: np.ndarray, c: np.ndarray, cb: np.ndarray) -> float:
    """Signed volume (N-CA)·((C-CA)×(CB-CA)): positive for the S centre of L-alanine."""
    return float(np.dot(n - ca, np.cross(c - ca, cb - ca)))


def build() -> tuple[app.Topology, np.ndarray]:
    """Topology and positions (nm) of ACE-ALA-NME, every atom from internal coordinates."""
    x = {}
    # backbone: ACE CH3, ACE C, N, CA, C, NME N, NME C
    x["ACE:CH3"] = np.zeros(3)
    x["ACE:C"] = np.array([BOND["CH3-C"], 0.0, 0.0])
    x["ALA:N"] = x["ACE:C"] + BOND["C-N"] * np.array(
        [-math.cos(math.radians(ANGLE["CA-C-N"])), math.sin(math.radians(ANGLE["CA-C-N"])), 0.0]
    )
    x["ALA:CA"] = place(x["ACE:CH3"], x["ACE:C"], x["ALA:N"], BOND["N-CA"], ANGLE["C-N-CA"], OMEGA)
    x["ALA:C"] = place(x["ACE:C"], x["ALA:N"], x["ALA:CA"], BOND["CA-C"], ANGLE["N-CA-C"], PHI)
    x["NME:N"] = place(x["ALA:N"], x["ALA:CA"], x["ALA:C"], BOND["C-N"], ANGLE["CA-C-N"], PSI)
    x["NME:C"] = place(x["ALA:CA"], x["ALA:C"], x["NME:N"], BOND["N-CH3"], ANGLE["C-N-CA"], OMEGA)
    # carbonyl oxygens cis to the next alpha carbon; amide hydrogens trans to the previous oxygen
    x["ACE:O"] = place(x["ALA:CA"], x["ALA:N"], x["ACE:C"], BOND["C=O"], ANGLE["O=C-N"], 0.0)
    x["ALA:O"] = place(x["NME:C"], x["NME:N"], x["ALA:C"], BOND["C=O"], ANGLE["O=C-N"], 0.0)
    x["ALA:H"] = place(x["ACE:O"], x["ACE:C"], x["ALA:N"], BOND["N-H"], ANGLE["C-N-H"], 180.0)
    x["NME:H"] = place(x["ALA:O"], x["ALA:C"], x["NME:N"], BOND["N-H"], ANGLE["C-N-H"], 180.0)
    # CB and HA: the two remaining tetrahedral positions on CA; CB goes where CA is S (L-alanine)
    cands = [
        place(x["ACE:C"], x["ALA:N"], x["ALA:CA"], BOND["CA-CB"], ANGLE["N-CA-CB"], PHI + s) for s in (120.0, -120.0)
    ]
    vol = [chirality(x["ALA:N"], x["ALA:CA"], x["ALA:C"], cb) for cb in cands]
    cb_i = int(np.argmax(vol))
    x["ALA:CB"] = cands[cb_i]
    x["ALA:HA"] = place(
        x["ACE:C"], x["ALA:N"], x["ALA:CA"], BOND["C-H"], ANGLE["tet"], PHI + (-120.0 if cb_i == 0 else 120.0)
    )
    # methyl hydrogens, staggered
    for i, t in enumerate((0.0, 120.0, 240.0), 1):
        x[f"ACE:H{i}"] = place(x["ACE:O"], x["ACE:C"], x["ACE:CH3"], BOND["C-H"], ANGLE["tet"], t)
        x[f"ALA:HB{i}"] = place(x["ALA:N"], x["ALA:CA"], x["ALA:CB"], BOND["C-H"], ANGLE["tet"], 60.0 + t)
        x[f"NME:H{i}"] = place(x["ALA:C"], x["NME:N"], x["NME:C"], BOND["C-H"], ANGLE["tet"], 60.0 + t)

    order = {
        "ACE": ["H1", "CH3", "H2", "H3", "C", "O"],
        "ALA": ["N", "H", "CA", "HA", "CB", "HB1", "HB2", "HB3", "C", "O"],
        "NME": ["N", "H", "C", "H1", "H2", "H3"],
    }
    top = app.Topology()
    chain = top.addChain("A")
    atoms = {}
    positions = []
    for seq, (res_name, names) in enumerate(order.items(), 1):
        res = top.addResidue(res_name, chain, id=str(seq))
        for name in names:
            element = app.Element.getBySymbol(name[0])
            atoms[f"{res_name}:{name}"] = top.addAtom(name, element, res)
            positions.append(x[f"{res_name}:{name}"])
    bonds = [
        ("ACE:CH3", "ACE:C"), ("ACE:C", "ACE:O"), ("ACE:C", "ALA:N"), ("ALA:N", "ALA:H"), ("ALA:N", "ALA:CA"),
        ("ALA:CA", "ALA:HA"), ("ALA:CA", "ALA:CB"), ("ALA:CA", "ALA:C"), ("ALA:C", "ALA:O"), ("ALA:C", "NME:N"),
        ("NME:N", "NME:H"), ("NME:N", "NME:C"),
    ] + [("ACE:CH3", f"ACE:H{i}") for i in (1, 2, 3)] + [("ALA:CB", f"ALA:HB{i}") for i in (1, 2, 3)] + [
        ("NME:C", f"NME:H{i}") for i in (1, 2, 3)
    ]
    for a, b in bonds:
        top.addBond(atoms[a], atoms[b])
    return top, np.array(positions)


def dihedral_deg(p: np.ndarray) -> float:
    b0, b1, b2 = p[0] - p[1], p[2] - p[1], p[3] - p[2]
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return math.degrees(math.atan2(np.dot(np.cross(b1, v), w), np.dot(v, w)))


def minimise(top: app.Topology, positions: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Minimise in amber14 + OBC2; return positions (nm) and energies before/after (kJ/mol)."""
    ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    before = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1e-3, 0)
    state = ctx.getState(getPositions=True, getEnergy=True)
    after = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    top, pos = build()
    assert top.getNumAtoms() == 22
    idx = {(a.residue.name, a.name): a.index for a in top.atoms()}
    phi_idx = [idx["ACE", "C"], idx["ALA", "N"], idx["ALA", "CA"], idx["ALA", "C"]]
    psi_idx = [idx["ALA", "N"], idx["ALA", "CA"], idx["ALA", "C"], idx["NME", "N"]]
    print(f"built: phi {dihedral_deg(pos[phi_idx]):.1f}, psi {dihedral_deg(pos[psi_idx]):.1f}")
    pos, before, after = minimise(top, pos)
    ca = pos[idx["ALA", "CA"]]
    vol = chirality(pos[idx["ALA", "N"]], ca, pos[idx["ALA", "C"]], pos[idx["ALA", "CB"]])
    assert vol > 0, "CA is not the S (L-alanine) centre"
    print(f"minimised: energy {before:.1f} -> {after:.1f} kJ/mol, phi {dihedral_deg(pos[phi_idx]):.1f}, "
          f"psi {dihedral_deg(pos[psi_idx]):.1f}, L-alanine")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.write("REMARK   1 ALANINE DIPEPTIDE (ACE-ALA-NME) BUILT FROM INTERNAL COORDINATES (C7EQ START)\n")
        f.write("REMARK   1 AND MINIMISED IN AMBER14 + OBC2 BY tools/make_alanine_dipeptide.py\n")
        app.PDBFile.writeFile(top, pos * unit.nanometer, f, keepIds=True)

    # the shipped file must load and parametrise as it is
    pdb = app.PDBFile(str(args.out))
    system = app.ForceField("amber14-all.xml", "implicit/obc2.xml").createSystem(pdb.topology)
    assert system.getNumParticles() == 22
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
