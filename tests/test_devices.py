"""wemap.openmm.devices, .gpus and .platforms: GPU masks read as the runtimes read them, devices
checked in the manager, the platform checked before any worker starts, OpenMM's property aliases
honoured, the OpenMM floor.

No GPU is needed: the driver's files (/proc/driver/nvidia/gpus, /dev/nvidia*, the AMD KFD
topology), the environment, nvidia-smi and, for OpenCL, OpenMM's device list are mocked.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")

import wemap  # noqa: E402
from wemap import systems  # noqa: E402
from wemap.openmm import OpenMMRunner, gpus, platform_properties_for, platforms, visible_devices  # noqa: E402
from wemap.openmm import devices as dev  # noqa: E402
from wemap.openmm.devices import check_devices, explain_context_failure  # noqa: E402
from wemap.openmm.gpus import DeviceError, nvidia_gpu_count, parse_visible_mask  # noqa: E402
from wemap.openmm.platforms import PlatformUnavailableError, require_platform  # noqa: E402

pytestmark = [pytest.mark.openmm, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[1]
MASKS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "OPENMM_CPU_THREADS",
         platforms.SKIP_CHECK_ENV)
UUIDS = ["GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", "GPU-8932aaaa-0000-0000-0000-000000000000",
         "GPU-11111111-2222-3333-4444-555555555555", "GPU-ffffffff-0000-0000-0000-000000000000"]


@pytest.fixture
def node(monkeypatch, tmp_path):
    """A node with no GPU driver and no mask; ``gpus(n)`` gives it n NVIDIA GPUs, ``amd(n)`` n AMD ones."""
    for var in MASKS:
        monkeypatch.delenv(var, raising=False)
    for name, sub in (("NVIDIA_GPUS_DIR", "proc"), ("NVIDIA_DEV_DIR", "dev"), ("AMD_KFD_NODES_DIR", "kfd")):
        (tmp_path / sub).mkdir()
        monkeypatch.setattr(gpus, name, str(tmp_path / sub))

    class Node:
        def gpus(self, n, uuids=UUIDS):
            for i in range(n):  # what the NVIDIA driver lists: one directory per GPU, by PCI bus
                d = tmp_path / "proc" / f"0000:{0x17 + i:02x}:00.0"
                d.mkdir()
                uuid = uuids[i] if i < len(uuids) else f"GPU-{i:08x}-0000-0000-0000-000000000000"
            (d / "information").write_text(f"Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\nGPU UUID: \t {uuid}\n")

        def amd(self, n):
            for i, gpu_id in enumerate([0] + [4242 + i for i in range(n)]):  # node 0 is the CPU
                (tmp_path / "kfd" / str(i)).mkdir()
                (tmp_path / "kfd" / str(i) / "gpu_id").write_text(f"{gpu_id}\n")

    return Node()


@pytest.fixture
def have_platforms(monkeypatch):
    """Make OpenMM report extra platforms as available (only for wemap's checks, not for Contexts)."""
    def have(*names):
        real = platforms.available_platforms()
        monkeypatch.setattr(platforms, "available_platforms", lambda: real + list(names))
    return have


class FakeOpenCL:
    """OpenMM's OpenCL platform as ``Platform.getDevices`` (OpenMM 8.5+) lists it."""

    def __init__(self, listing):
        self.listing = listing

    def getDevices(self):  # noqa: N802 - OpenMM's name
        return tuple({"OpenCLPlatformIndex": str(p), "OpenCLPlatformName": f"platform {p}", "DeviceIndex": str(d),
                      "DeviceName": name} for p, names in self.listing.items() for d, name in enumerate(names))


@pytest.fixture
def opencl(monkeypatch):
    def install(listing, get_devices=True):
        fake = FakeOpenCL(listing)
        if not get_devices:  # OpenMM 8.2-8.4: no Platform.getDevices
            fake = type("OldOpenCL", (), {})()
        real = openmm.Platform.getPlatformByName
        monkeypatch.setattr(openmm.Platform, "getPlatformByName",
                            staticmethod(lambda name: fake if name == "OpenCL" else real(name)))
    return install


# -- masks, read as CUDA reads them ------------------------------------------------------------------
@pytest.mark.parametrize("mask, count, want", [
    ("4,5,6,7", None, ["4", "5", "6", "7"]),         # what SLURM sets
    (" 0, 1 ", None, ["0", "1"]),
    ("0,-1,2", None, ["0"]),                           # the first invalid entry ends the list
    ("0,2,-1,1", None, ["0", "2"]),                    # CUDA's own example
    ("-1", None, []),
    ("NoDevFiles", None, []),                          # what some schedulers set for no GPU
    ("", None, []),
    ("0,0", None, []),                                 # a repeated entry hides every device
    ("1,0,1", None, []),
    ("1gpu,2", None, ["1", "2"]),                      # strtoul: leading digits
    ("0,7,1", 4, ["0"]),                               # an ordinal the node lacks ends the list
    ("MIG-a1b2,MIG-c3d4", None, ["MIG-a1b2"]),         # CUDA enumerates one MIG instance per process
    ("GPU-8932f937,GPU-1111", None, ["GPU-8932f937", "GPU-1111"]),
    ("GPU-8932f937,0", None, ["GPU-8932f937"]),
])
def test_masks_parse_as_cuda_reads_them(mask, count, want):
    assert parse_visible_mask(mask, count) == want


def test_uuid_masks_resolve_against_the_drivers_gpus():
    assert parse_visible_mask("GPU-1111,GPU-8932f937", uuids=UUIDS) == [UUIDS[2], UUIDS[0]]
    assert parse_visible_mask("GPU-1111,GPU-8932,GPU-ffff", uuids=UUIDS) == [UUIDS[2]], "an ambiguous prefix ends it"
    assert parse_visible_mask("GPU-deadbeef,GPU-1111", uuids=UUIDS) == [], "an unknown UUID ends it"
    assert parse_visible_mask("GPU-1111,GPU-11111111", uuids=UUIDS) == [], "the same GPU twice hides every GPU"


def test_visible_devices_without_a_mask_counts_the_drivers_gpus(node):
    """The README's GPU example on a workstation (no CUDA_VISIBLE_DEVICES): it used to get None."""
    node.gpus(4)
    assert visible_devices() == [0, 1, 2, 3]


def test_visible_devices_applies_the_mask_to_the_node(node, monkeypatch):
    node.gpus(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # not this node's numbering: 4 is no GPU here
    with pytest.raises(DeviceError, match=r"CUDA_VISIBLE_DEVICES='4,5,6,7' leaves no GPU visible"):
        visible_devices()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_devices() == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{UUIDS[3][:12]},{UUIDS[1]}")
    assert visible_devices() == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-GPU-8932f937/1/0,MIG-GPU-8932f937/2/0")
    assert visible_devices() == [0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,1")
    with pytest.raises(DeviceError, match="repeated entry"):
        visible_devices()


@pytest.mark.parametrize("mask", ["", "-1", "NoDevFiles"])
def test_a_mask_that_hides_every_gpu_is_a_clear_error(node, monkeypatch, mask):
    """An empty mask gave num_workers=0 (one worker failing inside itself); now it names the mask."""
    node.gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
    with pytest.raises(DeviceError, match=re.escape(f"CUDA_VISIBLE_DEVICES={mask!r} leaves no GPU visible")):
        visible_devices()
    for check in (lambda: platform_properties_for("CUDA", 0, 2), lambda: check_devices([0], "CUDA")):
        with pytest.raises(DeviceError, match=re.escape(f"CUDA_VISIBLE_DEVICES={mask!r} leaves no GPU visible")):
            check()


def test_no_driver_and_no_mask_is_a_clear_error(node):
    assert nvidia_gpu_count() is None
    with pytest.raises(DeviceError, match="no CUDA GPU found here"):
        visible_devices()


def test_device_files_count_where_proc_has_no_driver_listing(node, tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / "dev" / name).touch()
    assert nvidia_gpu_count() == 2 and visible_devices() == [0, 1]


def test_hip_reads_rocr_then_hip_visible_devices_and_ignores_the_other_runtimes_mask(node, monkeypatch):
    node.amd(4)
    node.gpus(8)
    assert visible_devices(platform="HIP") == [0, 1, 2, 3]
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "1,2,3")
    assert visible_devices(platform="HIP") == [0, 1, 2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # HIP honours it when HIP_VISIBLE_DEVICES is unset
    assert visible_devices(platform="HIP") == [0, 1]
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "2")  # and HIP_VISIBLE_DEVICES wins over it
    assert visible_devices(platform="HIP") == [0]
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "3")  # counts inside ROCR's three
    with pytest.raises(DeviceError, match="ROCR_VISIBLE_DEVICES='1,2,3' then HIP_VISIBLE_DEVICES='3'"):
        visible_devices(platform="HIP")
    assert visible_devices(platform="CUDA") == [0, 1], "CUDA reads CUDA_VISIBLE_DEVICES only"


# -- each worker's DeviceIndex -----------------------------------------------------------------------
def test_device_per_worker_round_robin(node):
    node.gpus(8)
    got = [platform_properties_for("CUDA", i, 4, devices=[0, 1])["DeviceIndex"] for i in range(4)]
    assert got == ["0", "1", "0", "1"]
    two_per_gpu = [platform_properties_for("CUDA", i, 4, devices=[0, 0, 1, 1])["DeviceIndex"] for i in range(4)]
    assert two_per_gpu == ["0", "0", "1", "1"]
    assert platform_properties_for("HIP", 1, 2, devices=[0, 1])["DeviceIndex"] == "1"
    assert platform_properties_for("CUDA", 1, 2, devices=[(0, 1), (2, 3)])["DeviceIndex"] == "2,3"


def test_device_defaults_follow_the_visible_set(node, monkeypatch):
    node.gpus(8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # what SLURM sets
    assert visible_devices() == [0, 1, 2, 3]
    assert [platform_properties_for("CUDA", i, 8)["DeviceIndex"] for i in range(8)] == list("01230123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert {platform_properties_for("CUDA", i, 3)["DeviceIndex"] for i in range(3)} == {"0"}


def test_without_a_mask_cuda_workers_share_the_nodes_gpus_in_turn(node):
    """8 workers on a 4-GPU node with no CUDA_VISIBLE_DEVICES: DeviceIndex 0-3 twice, never 4-7."""
    node.gpus(4)
    assert nvidia_gpu_count() == 4
    assert [platform_properties_for("CUDA", i, 8)["DeviceIndex"] for i in range(8)] == list("01230123")
    assert "DeviceIndex" not in platform_properties_for("CUDA", 0, 1), "one worker: OpenMM picks the fastest GPU"


def test_without_a_driver_listing_opencl_and_hip_leave_the_choice_to_openmm(node, opencl):
    opencl({}, get_devices=False)
    assert "DeviceIndex" not in platform_properties_for("CUDA", 1, 2)
    assert "DeviceIndex" not in platform_properties_for("HIP", 5, 8), "it was 5: no such GPU on most nodes"
    assert "DeviceIndex" not in platform_properties_for("OpenCL", 5, 8), "it was 5: no such GPU on most nodes"


def test_hip_workers_share_the_amd_gpus_in_turn(node):
    node.amd(2)
    assert [platform_properties_for("HIP", i, 4)["DeviceIndex"] for i in range(4)] == list("0101")


def test_opencl_workers_share_openmms_opencl_devices_and_name_their_platform(node, opencl):
    """Without devices, OpenCL workers used DeviceIndex = worker index and never OpenCLPlatformIndex."""
    opencl({1: ["NVIDIA H200", "NVIDIA H200"]})
    props = [platform_properties_for("OpenCL", i, 5) for i in range(5)]
    assert [p["DeviceIndex"] for p in props] == list("01010")
    assert {p["OpenCLPlatformIndex"] for p in props} == {"1"}
    assert platform_properties_for("OpenCL", 1, 2, devices=[1, 0]) == {"DeviceIndex": "0", "OpenCLPlatformIndex": "1"}
    with pytest.raises(DeviceError, match="OpenCL platform used has 2 device"):
        platform_properties_for("OpenCL", 0, 2, devices=[0, 2])


def test_opencl_with_several_platforms_asks_which(node, opencl):
    opencl({0: ["NVIDIA H200"], 1: ["pthread-AMD EPYC 9654"]})  # NVIDIA's OpenCL and pocl, say
    with pytest.raises(DeviceError, match=r"OpenCL has 2 platforms with devices here \(0: NVIDIA H200; 1: pthread"):
        platform_properties_for("OpenCL", 0, 2)
    props = platform_properties_for("OpenCL", 1, 2, base={"OpenCLPlatformIndex": "0"})
    assert props == {"OpenCLPlatformIndex": "0", "DeviceIndex": "0"}, "the user's platform, its one device"


def test_opencl_on_an_openmm_that_cannot_list_devices(node, opencl):
    opencl({}, get_devices=False)
    assert platform_properties_for("OpenCL", 2, 3, devices=[5, 6, 7]) == {"DeviceIndex": "7"}


# -- the user's properties win, under any of OpenMM's names ------------------------------------------
@pytest.mark.parametrize("platform, alias, wemaps", [
    ("CUDA", "CudaDeviceIndex", "DeviceIndex"),
    ("OpenCL", "OpenCLDeviceIndex", "DeviceIndex"),
    ("HIP", "HipDeviceIndex", "DeviceIndex"),
    ("CPU", "CpuThreads", "Threads"),
])
def test_a_users_alias_is_not_overridden(node, opencl, platform, alias, wemaps):
    node.gpus(4)
    opencl({0: ["a", "b"]})
    props = platform_properties_for(platform, 1, 2, devices=[0, 1], base={alias: "3"})
    assert props == {alias: "3"}, f"wemap added {wemaps}, which OpenMM reads after {alias} and so wins"


def test_a_users_cputhreads_reaches_the_context(node):
    """Through OpenMM itself: CpuThreads=1 asked for, the Context runs one thread (it ran cores // workers)."""
    system = openmm.System()
    system.addParticle(1.0)
    props = platform_properties_for("CPU", 0, 1, base={"CpuThreads": "1"}, cores=8)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"), props)
    assert ctx.getPlatform().getPropertyValue(ctx, "Threads") == "1"


def test_devices_from_worker_attributes(node, have_platforms):
    node.gpus(4)
    have_platforms("CUDA")
    ala = systems.alanine_dipeptide()
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="CPU")
    props, _ = runner.context_settings(1, 2, {"devices": [0, 1]})
    assert "DeviceIndex" not in props and "Threads" in props
    gpu = OpenMMRunner(ala.system, ala.integrator(), platform="CUDA")
    assert gpu.context_settings(3, 4, {"devices": [2, 3]})[0]["DeviceIndex"] == "3"
    pinned = OpenMMRunner(ala.system, ala.integrator(), platform="CUDA", devices=[0])
    assert pinned.context_settings(3, 4, {"devices": [2, 3]})[0]["DeviceIndex"] == "0"  # the runner's list wins
    with pytest.raises(DeviceError, match=r"devices\[1\] = 7, but CUDA sees 4 GPU"):  # the mapper's, in the worker
        gpu.context_settings(1, 2, {"devices": [0, 7]})


def test_explicit_properties_win_and_cpu_threads_split(node):
    node.gpus(4)
    assert platform_properties_for("CUDA", 1, 2, devices=[0, 1], base={"DeviceIndex": "3"})["DeviceIndex"] == "3"
    assert platform_properties_for("CPU", 0, 4, cores=16)["Threads"] == "4"
    assert platform_properties_for("CPU", 0, 4, cores=2)["Threads"] == "1"
    assert platform_properties_for("CPU", 0, 1, cores=8, base={"Threads": 2})["Threads"] == "2"
    assert platform_properties_for("Reference", 0, 2, devices=[0, 1]) == {}
    assert platform_properties_for("CUDA", 0, 2, devices=[0, 1], base={"Precision": "mixed"}) == {
        "Precision": "mixed", "DeviceIndex": "0"
    }


# -- the devices list, checked where it is given -------------------------------------------------------
@pytest.mark.parametrize("devices, match", [
    ("0,1", "must be a list of GPU indices"),
    (3, "must be a list of GPU indices"),
    ([], "devices is empty"),
    (["GPU-8932f937"], "is a UUID.*CUDA_VISIBLE_DEVICES=GPU-8932f937"),
    (["MIG-1234"], "is a UUID"),
    ([-1], "OpenMM reads -1 as 'pick the fastest'"),
    (["0,1"], "would spread one worker's Context over several GPUs"),
    (["0 1"], "would spread one worker's Context over several GPUs"),
    ([True], "a device is a GPU index"),
    ([1.0], "a device is a GPU index"),
    (["first"], "is not a GPU index"),
    ([(0, 0)], "several distinct GPUs"),
])
def test_bad_devices_are_refused_by_name(node, devices, match):
    with pytest.raises(DeviceError, match=match):
        check_devices(devices, "CUDA")


def test_devices_are_normalised(node):
    assert check_devices([np.int64(1), "2", (0, 3), [1], 0], "CUDA") == [1, 2, (0, 3), 1, 0]
    assert check_devices(range(3), "CUDA") == [0, 1, 2]
    assert check_devices(None, "CUDA") is None


def test_devices_beyond_the_visible_gpus_are_refused_in_the_manager(node, monkeypatch):
    node.gpus(8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(DeviceError, match=r"devices\[1\] = 2, but CUDA sees 2 GPU\(s\).*CUDA_VISIBLE_DEVICES='4,5'"):
        check_devices([0, 2], "CUDA")
    with pytest.raises(DeviceError, match=r"devices\[0\] = 5"):
        check_devices([(0, 5)], "CUDA")
    assert check_devices([0, 1, 1], "CUDA") == [0, 1, 1]
    assert check_devices([0, 9], "CPU") == [0, 9], "the CPU platform has no GPUs to count"


def test_the_runner_checks_devices_when_it_is_made(node):
    ala = systems.alanine_dipeptide()
    with pytest.raises(DeviceError, match="is a UUID"):
        OpenMMRunner(ala.system, ala.integrator(), platform="CPU", devices=["GPU-8932f937"])


def test_uneven_sharing_warns(node, caplog):
    node.gpus(2)
    with caplog.at_level(logging.WARNING, logger=dev.__name__):
        check_devices([0, 0, 1, 1], "CUDA", num_workers=6)
    assert "6 workers share devices=[0, 0, 1, 1] unevenly: GPU 0 gets 4, GPU 1 gets 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=dev.__name__):
        check_devices([0, 0, 1, 1], "CUDA", num_workers=8)
        platform_properties_for("CUDA", 3, 6, devices=[0, 0, 1, 1])  # only worker 0 says it
    assert caplog.text == ""
    assert dev.device_load([0, 0, 1, 1], 6) == {"0": 4, "1": 2}


# -- the platform, checked in the manager --------------------------------------------------------------
def cuda_here():
    return "CUDA" in platforms.available_platforms()


@pytest.mark.skipif(cuda_here(), reason="this machine has OpenMM's CUDA platform")
def test_a_missing_platform_fails_in_the_manager_naming_the_plugin_failure_and_the_extra(monkeypatch):
    ala = systems.alanine_dipeptide()
    failures = ("Error loading library /x/plugins/libOpenMMOpenCL.so: libOpenCL.so.1: cannot open shared object file",
                "Error loading library /x/plugins/libOpenMMCUDA.so: libcufft.so.12: cannot open shared object file")
    monkeypatch.setattr(openmm.Platform, "getPluginLoadFailures", staticmethod(lambda: failures))
    with pytest.raises(PlatformUnavailableError) as err:
        OpenMMRunner(ala.system, ala.integrator(), platform="CUDA")  # it only warned: workers failed later
    text = str(err.value)
    assert text.startswith("OpenMM platform 'CUDA' is not available here (this install has Reference, CPU")
    assert "libcufft.so.12: cannot open shared object file" in text and "libOpenCL" not in text
    assert "pip install 'wemap[openmm-cuda13]'" in text and "'wemap[openmm-cuda12]'" in text
    assert "\n" not in text
    monkeypatch.setattr(openmm.Platform, "getPluginLoadFailures", staticmethod(lambda: ()))
    with pytest.raises(PlatformUnavailableError, match="no CUDA plugin in .*plugins"):
        require_platform("CUDA")
    with pytest.raises(PlatformUnavailableError, match="wemap\\[openmm-hip7\\]"):
        require_platform("HIP")


def test_an_unknown_platform_name_is_refused_with_a_suggestion():
    with pytest.raises(PlatformUnavailableError, match=r"unknown OpenMM platform 'cuda' \(did you mean 'CUDA'\?\)"):
        require_platform("cuda")
    ala = systems.alanine_dipeptide()
    with pytest.raises(ValueError, match="unknown OpenMM platform"):
        OpenMMRunner(ala.system, ala.integrator(), platform="cpu")


@pytest.mark.skipif(cuda_here(), reason="this machine has OpenMM's CUDA platform")
def test_the_check_can_be_skipped_for_workers_on_other_machines(monkeypatch, caplog):
    monkeypatch.setenv(platforms.SKIP_CHECK_ENV, "1")
    with caplog.at_level(logging.WARNING, logger=platforms.__name__):
        require_platform("CUDA")
    assert "not checked further" in caplog.text
    with pytest.raises(PlatformUnavailableError):
        require_platform("Cuda")  # a misspelt name never passes


def test_the_manager_refuses_a_mask_that_hides_every_gpu(node, monkeypatch, have_platforms):
    have_platforms("CUDA")
    node.gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match="leaves no GPU visible"):
        require_platform("CUDA")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    require_platform("CUDA")


@pytest.mark.skipif(cuda_here(), reason="this machine has OpenMM's CUDA platform")
def test_wemap_bench_openmm_only_fails_at_once_without_the_platform(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wemap", "bench", "--openmm-only", "--platform", "CUDA",
                           "--openmm-atoms", "100k", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("wemap bench: OpenMM platform 'CUDA' is not available here")
    assert "wemap[openmm-cuda13]" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [], "nothing measured, nothing written"


@pytest.mark.skipif(cuda_here(), reason="this machine has OpenMM's CUDA platform")
def test_the_openmm_section_checks_the_platform_before_building_a_box(monkeypatch):
    from wemap.benchmarks import openmm_section

    def no_box(*args, **kwargs):
        raise AssertionError("a water box was built for a platform this install lacks")

    monkeypatch.setattr(systems, "water_box", no_box)
    out = openmm_section.run_openmm_section(platform="CUDA", atoms=100_000)
    assert out["status"] == "unavailable" and "wemap[openmm-cuda13]" in out["reason"] and out["rows"] == []
    with pytest.raises(ValueError, match="not available here"):
        openmm_section.check_platform("CUDA", required=True)
    with pytest.raises(ValueError, match="unknown OpenMM platform"):
        openmm_section.check_platform("Cuda")
    assert openmm_section.check_platform("CPU", required=True) is None


# -- a Context that cannot be made: why --------------------------------------------------------------
@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch):
    """A fake nvidia-smi on PATH that reports the given compute modes."""
    def install(*modes):
        tool = tmp_path / "bin" / "nvidia-smi"
        tool.parent.mkdir(exist_ok=True)
        rows = "\\n".join(f"{i}, {m}" for i, m in enumerate(modes))
        tool.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
        tool.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    return install


def test_a_second_context_refused_by_an_exclusive_gpu_says_why(nvidia_smi):
    nvidia_smi("Exclusive_Process")
    exc = openmm.OpenMMException("The requested CUDA device could not be loaded")
    text = explain_context_failure(exc, "CUDA", {"DeviceIndex": "0"}, 1, 2, [0, 0])
    assert text.startswith("worker 1 could not create an OpenMM Context on platform 'CUDA' with properties "
                           "{'DeviceIndex': '0'}: The requested CUDA device could not be loaded")
    assert "workers 0, 1 all use DeviceIndex 0" in text
    assert "EXCLUSIVE_PROCESS compute mode admits one process" in text and "MPS (nvidia-cuda-mps-control -d)" in text
    assert "nvidia-smi reports compute mode Exclusive_Process for GPU 0" in text
    alone = explain_context_failure(exc, "CUDA", {"DeviceIndex": "1"}, 1, 2, [0, 1])
    assert "all use DeviceIndex" not in alone


def test_the_runners_context_error_explains_an_exclusive_gpu(monkeypatch, nvidia_smi, have_platforms, node):
    """Through the runner: what a worker raises when the GPU refuses its Context."""
    ala = systems.alanine_dipeptide()
    walker = ala.walkers(1, seed=1)[0]
    nvidia_smi("Exclusive_Process")
    node.gpus(1)
    have_platforms("CUDA")
    cpu = openmm.Platform.getPlatformByName("CPU")
    monkeypatch.setattr(openmm.Platform, "getPlatformByName", staticmethod(lambda name: cpu))

    def refuse(*args, **kwargs):
        raise openmm.OpenMMException("The requested CUDA device could not be loaded")

    monkeypatch.setattr(openmm, "Context", refuse)
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="CUDA", devices=[0, 0])
    with pytest.raises(RuntimeError, match="EXCLUSIVE_PROCESS compute mode") as err:
        runner.run_segment(walker, 1)
    assert "worker 0 could not create an OpenMM Context on platform 'CUDA'" in str(err.value)
    assert "nvidia-smi reports compute mode Exclusive_Process" in str(err.value)
    runner.release()


def test_other_context_failures_keep_their_hints(node, monkeypatch):
    node.gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    illegal = explain_context_failure(openmm.OpenMMException("Illegal value for DeviceIndex: 3"), "CUDA",
                                      {"DeviceIndex": "3"}, 3, 4)
    assert "(2 GPU(s) here, CUDA_VISIBLE_DEVICES='0,1')" in illegal
    missing = explain_context_failure(openmm.OpenMMException('There is no registered Platform called "HIP"'),
                                      "HIP", {}, 0, 1)
    assert "wemap[openmm-hip7]" in missing


# -- two runners on one mapper: one Context per worker ---------------------------------------------------
def test_a_new_runner_replaces_the_other_runners_context(node):
    ala = systems.alanine_dipeptide()
    first = OpenMMRunner(ala.system, ala.integrator(seed=42), platform="Reference")
    second = OpenMMRunner(ala.system, ala.integrator(seed=42), platform="Reference")
    (w,) = ala.walkers(1, seed=3)
    a1 = first.run_segment(w, 20)
    assert len(first.live_contexts()) == 1
    second.run_segment(w, 20)
    assert first.live_contexts() == [] and len(second.live_contexts()) == 1, "two Contexts kept in one worker"
    a2 = first.run_segment(w, 20)
    assert a2.state["segment_timings"][0] > 0, "the first runner built its Context again"
    assert second.live_contexts() == []
    # the rebuilt Context draws new noise: the same seed again would replay the first segment exactly
    assert not np.array_equal(a1.state["positions"], a2.state["positions"])
    first.release(), second.release()


# -- the OpenMM floor ----------------------------------------------------------------------------------
def declared_floor():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    floors = {}
    for name, reqs in extras.items():
        for req in reqs:
            m = re.fullmatch(r"openmm(?:\[(\w+)\])?>=([\d.]+)", req.replace(" ", ""))
            if m:
                floors[name] = (m.group(1), tuple(int(x) for x in m.group(2).split(".")))
    return floors


def test_the_declared_floor_is_the_one_wemap_enforces():
    floors = declared_floor()
    assert floors["openmm"] == (None, platforms.OPENMM_FLOOR)
    assert {name: extra for name, (extra, _) in floors.items() if name != "openmm"} == {
        "openmm-cuda12": "cuda12", "openmm-cuda13": "cuda13", "openmm-hip6": "hip6", "openmm-hip7": "hip7"}
    for name, (extra, floor) in floors.items():
        assert floor >= platforms.OPENMM_FLOOR, name
        if extra in ("cuda13", "hip7"):
            assert floor >= (8, 4), f"openmm[{extra}] first shipped with OpenMM 8.4"


def test_the_floor_is_what_the_runner_needs(monkeypatch):
    """The runner reads getState(integratorParameters=True): OpenMM 8.1's getState has no such keyword."""
    real = openmm.Context.getState

    def getstate_81(self, *args, **kwargs):
        if "integratorParameters" in kwargs:
            raise TypeError("getState() got an unexpected keyword argument 'integratorParameters'")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(openmm.Context, "getState", getstate_81)
    ala = systems.alanine_dipeptide()
    runner = OpenMMRunner(ala.system, ala.integrator(), platform="Reference")
    with pytest.raises(TypeError, match="integratorParameters"):
        runner.run_segment(ala.walkers(1, seed=1)[0], 1)
    runner.release()
    assert platforms.OPENMM_FLOOR >= (8, 2)


@pytest.mark.parametrize("version, ok", [("8.1.2", False), ("8.0.0", False), ("7.7.0", False), ("8.2.0", True),
                                         ("8.6.1.dev-b399af4", True), ("9.0", True)])
def test_older_openmm_is_refused_at_import(version, ok):
    code = (f"import openmm.version; openmm.version.short_version = {version!r}\n"
            "try:\n    import wemap.openmm\nexcept ImportError as e:\n    print('refused:', e)\nelse:\n    print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    if ok:
        assert out.stdout.strip() == "ok"
    else:
        assert out.stdout.startswith(f"refused: wemap.openmm needs OpenMM 8.2 or newer, this is OpenMM {version}")
        assert "integratorParameters" in out.stdout and "pip install -U 'wemap[openmm]'" in out.stdout


def test_public_names():
    assert wemap.openmm.visible_devices is visible_devices
    for module in (dev, gpus, platforms):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
