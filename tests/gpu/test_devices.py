"""Devices: discovery with NVML really absent here, a fake NVML for the GPU paths, tiers, and
the choice of experts to serve (property-tested)."""

from __future__ import annotations

import dataclasses
import logging
import types
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu.devices import (
    DeviceInfo,
    ExpertDemand,
    GiB,
    Tier,
    compute_memory_budget,
    compute_pcie_bandwidth,
    compute_served_experts,
    compute_serving_priority,
    compute_tier,
    discover_devices,
    discover_gpus,
    get_cpu_device,
)

# --- a fake NVML ---------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


class NotSupported(FakeNVMLError):
    pass


def fake_nvml(gpus: Sequence[dict], init_error: bool = False) -> types.ModuleType:
    """A module with the pynvml calls discovery makes, over a list of GPU descriptions."""
    nvml = types.ModuleType("fake_pynvml")
    nvml.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    nvml.shutdowns = 0  # type: ignore[attr-defined]

    def init() -> None:
        if init_error:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def shutdown() -> None:
        nvml.shutdowns += 1  # type: ignore[attr-defined]

    def field(name: str):
        def get(handle: int) -> object:
            value = gpus[handle][name]
            if value is None:
                raise NotSupported("Not Supported")
            return value

        return get

    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: len(gpus)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=gpus[h]["total"], free=gpus[h]["free"], used=gpus[h]["total"] - gpus[h]["free"])
    nvml.nvmlDeviceGetUUID = field("uuid")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = field("name")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCudaComputeCapability = field("cc")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMaxPcieLinkGeneration = field("gen_max")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMaxPcieLinkWidth = field("width_max")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCurrPcieLinkGeneration = field("gen")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCurrPcieLinkWidth = field("width")  # type: ignore[attr-defined]
    return nvml


H100 = {"uuid": "GPU-h100", "name": b"NVIDIA H100 80GB HBM3", "total": 80 * GiB, "free": 79 * GiB,
        "cc": (9, 0), "gen_max": 5, "width_max": 16, "gen": 1, "width": 16}
RTX3060 = {"uuid": "GPU-3060", "name": "NVIDIA GeForce RTX 3060", "total": 12 * GiB,
           "free": 11 * GiB, "cc": (8, 6), "gen_max": 4, "width_max": 16, "gen": 4, "width": 16}
GTX1050 = {"uuid": "GPU-1050", "name": "GeForce GTX 1050", "total": 2 * GiB, "free": 2 * GiB,
           "cc": (6, 1), "gen_max": 3, "width_max": 16, "gen": 3, "width": 16}


def gpu(**overrides: object) -> DeviceInfo:
    base = DeviceInfo(index=0, uuid="GPU-x", name="x", total_bytes=80 * GiB, free_bytes=80 * GiB,
                      compute_capability=(9, 0), pcie_gen_max=5, pcie_width_max=16,
                      pcie_gen_current=5, pcie_width_current=16)
    return dataclasses.replace(base, **overrides)


# --- discovery -----------------------------------------------------------------------------


def test_discovery_without_nvml_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """On this machine NVML is really absent: no error, the CPU is the device."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here: NVML is not absent")
    with caplog.at_level(logging.DEBUG, logger="gpu.devices"):
        assert discover_gpus() == []
        devices = discover_devices()
    assert [d.uuid for d in devices] == ["cpu"]
    assert compute_tier(devices[0]) == Tier.CPU
    assert all(r.levelno <= logging.INFO for r in caplog.records)


def test_discovery_with_nvml_init_failure(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gpu.devices"):
        assert discover_gpus(fake_nvml([H100], init_error=True)) == []
    assert "serving on the CPU" in caplog.text
    assert all(r.levelno <= logging.INFO for r in caplog.records)


def test_discovery_reads_every_field() -> None:
    nvml = fake_nvml([H100, RTX3060])
    found = discover_gpus(nvml)
    assert [d.uuid for d in found] == ["GPU-h100", "GPU-3060"]
    h100 = found[0]
    assert h100.name == "NVIDIA H100 80GB HBM3" and h100.compute_capability == (9, 0)
    assert (h100.total_bytes, h100.free_bytes) == (80 * GiB, 79 * GiB)
    assert (h100.pcie_gen_max, h100.pcie_width_max) == (5, 16)
    assert (h100.pcie_gen_current, h100.pcie_width_current) == (1, 16)  # idle link
    assert h100.torch_device == "cuda:0" and not h100.is_cpu
    assert nvml.shutdowns == 1  # type: ignore[attr-defined]


def test_discovery_orders_best_tier_first() -> None:
    devices = discover_devices(fake_nvml([GTX1050, H100, RTX3060]))
    assert [d.uuid for d in devices] == ["GPU-h100", "GPU-3060", "GPU-1050"]
    assert [compute_tier(d) for d in devices] == [Tier.TIER_3, Tier.TIER_2, Tier.TIER_1]


def test_discovery_with_no_gpu_listed() -> None:
    assert [d.uuid for d in discover_devices(fake_nvml([]))] == ["cpu"]


def test_unsupported_pcie_queries_are_unknown() -> None:
    virtual = {**H100, "gen_max": None, "width_max": None, "gen": None, "width": None}
    (device,) = discover_gpus(fake_nvml([virtual]))
    assert device.pcie_gen_max is None and device.pcie_width_current is None
    assert compute_tier(device) == Tier.TIER_3  # not held back by what is not reported


def test_cpu_device() -> None:
    cpu = get_cpu_device()
    assert cpu.is_cpu and cpu.torch_device == "cpu" and cpu.compute_capability is None
    assert 0 < cpu.free_bytes <= cpu.total_bytes


# --- tiers ---------------------------------------------------------------------------------


def test_pcie_bandwidth() -> None:
    assert compute_pcie_bandwidth(4, 16) == pytest.approx(31.5e9, rel=0.01)
    assert compute_pcie_bandwidth(3, 8) == pytest.approx(7.88e9, rel=0.01)
    assert compute_pcie_bandwidth(None, 16) is None and compute_pcie_bandwidth(9, 16) is None


@pytest.mark.parametrize(("overrides", "tier"), [
    ({}, Tier.TIER_3),
    ({"total_bytes": 24 * GiB}, Tier.TIER_2),
    ({"total_bytes": 8 * GiB}, Tier.TIER_1),
    ({"compute_capability": (7, 5)}, Tier.TIER_2),
    ({"compute_capability": (6, 1)}, Tier.TIER_1),
    ({"pcie_gen_max": 3, "pcie_width_max": 16}, Tier.TIER_2),
    ({"pcie_gen_max": 3, "pcie_width_max": 4}, Tier.TIER_1),
    ({"pcie_gen_current": 1, "pcie_width_current": 1}, Tier.TIER_3),  # idle link: not counted
    ({"index": -1, "compute_capability": None}, Tier.CPU),
])
def test_tier_is_the_weakest_class(overrides: dict, tier: Tier) -> None:
    assert compute_tier(gpu(**overrides)) == tier


def test_memory_budget_by_tier() -> None:
    assert compute_memory_budget(gpu(free_bytes=10 * GiB)) == 9 * GiB
    cpu = dataclasses.replace(get_cpu_device(), free_bytes=8 * GiB)
    assert compute_memory_budget(cpu) == 4 * GiB
    assert compute_memory_budget(gpu(free_bytes=10 * GiB), Tier.CPU) == 5 * GiB


# --- which experts to serve ----------------------------------------------------------------


def demand(name: str, nbytes: int = 10, replicas: int = 0, load: float = 0.0) -> ExpertDemand:
    return ExpertDemand(name, nbytes, replicas, load)


def test_unserved_experts_come_first() -> None:
    demands = [demand("hot", replicas=3, load=100.0), demand("orphan", replicas=0),
               demand("lonely", replicas=1, load=1.0)]
    assert compute_served_experts(demands, Tier.TIER_3, 20) == ("orphan", "lonely")


def test_gpu_replicates_hot_experts_cpu_does_not() -> None:
    demands = [demand("cold", replicas=2, load=1.0), demand("hot", replicas=4, load=50.0),
               demand("warm", replicas=2, load=12.0)]
    assert compute_served_experts(demands, Tier.TIER_2, 10) == ("hot",)  # 50/5 > 12/3 > 1/3
    assert compute_served_experts(demands, Tier.CPU, 10) == ("cold",)  # fewest replicas, coldest


def test_skips_what_does_not_fit() -> None:
    demands = [demand("big", nbytes=15), demand("small", nbytes=5, replicas=1), demand("mid", nbytes=8, replicas=1)]
    assert compute_served_experts(demands, Tier.TIER_1, 14) == ("mid", "small")  # big skipped
    assert compute_served_experts(demands, Tier.TIER_1, 100, max_experts=2) == ("big", "mid")


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        demand("x", nbytes=-1)
    with pytest.raises(ValueError):
        demand("x", load=float("nan"))
    with pytest.raises(ValueError):
        compute_served_experts([], Tier.CPU, -1)


demands_strategy = st.lists(
    st.builds(ExpertDemand, name=st.sampled_from([f"layer{i}.expert{j}" for i in range(3) for j in range(6)]),
              nbytes=st.integers(0, 100), replicas=st.integers(0, 6),
              load=st.floats(0, 1000, allow_nan=False)),
    max_size=24,
)


@settings(max_examples=300, deadline=None)
@given(demands=demands_strategy, tier=st.sampled_from(list(Tier)), budget=st.integers(0, 400),
       min_replicas=st.integers(0, 3))
def test_served_experts_properties(demands: list[ExpertDemand], tier: Tier, budget: int,
                                   min_replicas: int) -> None:
    chosen = compute_served_experts(demands, tier, budget, min_replicas=min_replicas)
    by_name: dict[str, ExpertDemand] = {}
    for d in demands:
        by_name.setdefault(d.name, d)
    # deterministic, a subset, no duplicates, within the budget
    assert chosen == compute_served_experts(list(demands), tier, budget, min_replicas=min_replicas)
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(by_name)
    used = sum(by_name[n].nbytes for n in chosen)
    assert used <= budget
    # maximal: nothing left out would still fit
    for name, d in by_name.items():
        if name not in chosen:
            assert d.nbytes > budget - used
    # in priority order; a left-out expert never outranks a chosen one at least as large
    keys = [compute_serving_priority(by_name[n], tier, min_replicas) for n in chosen]
    assert keys == sorted(keys)
    for name, d in by_name.items():
        if name in chosen:
            continue
        mine = compute_serving_priority(d, tier, min_replicas)
        for other in chosen:
            if compute_serving_priority(by_name[other], tier, min_replicas) > mine:
                assert by_name[other].nbytes < d.nbytes
    # order of the input does not matter (first of a duplicate name aside)
    unique = list(by_name.values())
    assert chosen == compute_served_experts(unique[::-1], tier, budget, min_replicas=min_replicas)


@settings(max_examples=100, deadline=None)
@given(demands=demands_strategy, tier=st.sampled_from(list(Tier)))
def test_ample_budget_serves_everything(demands: list[ExpertDemand], tier: Tier) -> None:
    chosen = compute_served_experts(demands, tier, 10**9)
    assert set(chosen) == {d.name for d in demands}
