"""What this node can compute on, its tier, and which experts it offers to serve.

Discovery goes through NVML (`nvidia-ml-py`, imported as `pynvml`): UUID, name, total and free
memory, compute capability, PCIe generation and link width, the maximum the device and its slot
allow and the current one. No NVIDIA driver, or no GPU, is a normal machine: discovery logs it at
info level and the CPU is the device (tier CPU). Discovery makes blocking driver calls: call it
once at start-up, off the event loop.

Tiers. A GPU's tier is the lowest of three classes, since the weakest resource bounds it:

    class            TIER_1 (edge)      TIER_2 (standard)        TIER_3 (datacenter)
    memory           any                >= 12 GiB                >= 40 GiB
    compute cap.     any                >= 7.0 (tensor cores)    >= 8.0 (bf16, Ampere+)
    PCIe (max link)  any                >= 7.5 GB/s (gen3 x8)    >= 30 GB/s (gen4 x16)

The PCIe class uses the maximum link, not the current one: GPUs train their link down while
idle. A GPU whose PCIe figures NVML does not report (virtualised, SXM boards behind NVLink) is
not held back by them. TIER_CPU is below all of them.

Which experts to serve (`compute_served_experts`) is a pure function of the node's tier, its
memory budget and what the network reports per expert (size, replicas on other nodes, load).
On a GPU: first every expert below `min_replicas` replicas, fewest replicas first and hottest
first among equals (no expert must be left without a server); then the others by load per
replica, hottest first (replicating what is busy). A CPU node orders everything by fewest
replicas, coldest first: it covers what no one serves and stays away from busy experts, to which
it would add a slow replica. Greedy in that order, skipping what does not fit.
"""

from __future__ import annotations

import enum
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

logger = logging.getLogger(__name__)

GiB = 1 << 30
CPU_UUID = "cpu"

PCIE_LANE_BYTES_PER_S = {1: 250e6, 2: 500e6, 3: 984.6e6, 4: 1969e6, 5: 3938e6, 6: 7563e6}
"""Usable bytes per second of one PCIe lane, one way, by generation (after line encoding)."""

TIER_2_MEMORY = 12 * GiB
TIER_3_MEMORY = 40 * GiB
TIER_2_COMPUTE = (7, 0)
TIER_3_COMPUTE = (8, 0)
TIER_2_PCIE = 7.5e9
TIER_3_PCIE = 30e9

USABLE_FRACTION = {0: 0.5, 1: 0.8, 2: 0.85, 3: 0.9}
"""Share of a device's free memory the expert cache may take, by tier (the rest: activations,
the shared modules, the allocator's slack; on the CPU, the rest of the node)."""


class Tier(enum.IntEnum):
    """How much serving a device can take, from weakest to strongest."""

    CPU = 0
    TIER_1 = 1
    TIER_2 = 2
    TIER_3 = 3


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One compute device as discovered."""

    index: int
    """CUDA / NVML index; -1 for the CPU."""
    uuid: str
    """NVML UUID ("GPU-..."), or "cpu"."""
    name: str
    """Product name, or the CPU's."""
    total_bytes: int
    """Memory on the device (for the CPU: RAM)."""
    free_bytes: int
    """Memory free at discovery (for the CPU: available RAM)."""
    compute_capability: tuple[int, int] | None
    """CUDA compute capability (major, minor); None for the CPU."""
    pcie_gen_max: int | None
    """Highest PCIe generation the device and its slot allow; None when not reported."""
    pcie_width_max: int | None
    """Widest link in lanes; None when not reported."""
    pcie_gen_current: int | None
    """Generation the link runs at now (lower while idle)."""
    pcie_width_current: int | None
    """Lanes in use now."""

    @property
    def is_cpu(self) -> bool:
        return self.index < 0

    @property
    def torch_device(self) -> str:
        return "cpu" if self.is_cpu else f"cuda:{self.index}"


# --- tiers --------------------------------------------------------------------------------


def compute_pcie_bandwidth(gen: int | None, width: int | None) -> float | None:
    """One-way bytes per second of a PCIe link; None when unknown."""
    if gen is None or width is None or gen not in PCIE_LANE_BYTES_PER_S or width <= 0:
        return None
    return PCIE_LANE_BYTES_PER_S[gen] * width


def compute_tier(device: DeviceInfo) -> Tier:
    """The device's tier: the lowest of its memory, compute and PCIe classes (table above)."""
    if device.is_cpu or device.compute_capability is None:
        return Tier.CPU
    memory = _class_of(device.total_bytes, TIER_2_MEMORY, TIER_3_MEMORY)
    compute = _class_of(device.compute_capability, TIER_2_COMPUTE, TIER_3_COMPUTE)
    bandwidth = compute_pcie_bandwidth(device.pcie_gen_max, device.pcie_width_max)
    pcie = Tier.TIER_3 if bandwidth is None else _class_of(bandwidth, TIER_2_PCIE, TIER_3_PCIE)
    return min(memory, compute, pcie)


def _class_of(value: object, tier_2: object, tier_3: object) -> Tier:
    if value >= tier_3:  # type: ignore[operator]
        return Tier.TIER_3
    if value >= tier_2:  # type: ignore[operator]
        return Tier.TIER_2
    return Tier.TIER_1


def compute_memory_budget(device: DeviceInfo, tier: Tier | None = None) -> int:
    """Bytes the expert cache may use on `device`: a share of its free memory by tier."""
    tier = compute_tier(device) if tier is None else tier
    return int(device.free_bytes * USABLE_FRACTION[int(tier)])


# --- discovery ----------------------------------------------------------------------------


def discover_gpus(nvml: ModuleType | None = None) -> list[DeviceInfo]:
    """The NVIDIA GPUs NVML sees; [] when NVML or the driver is absent (logged at info)."""
    if nvml is None:
        try:  # imported here: nvidia-ml-py is optional, and only discovery needs it
            import pynvml as nvml
        except ImportError:
            logger.info("nvidia-ml-py is not installed: no GPU discovery, serving on the CPU")
            return []
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        logger.info("no NVIDIA driver (%s): serving on the CPU", err)
        return []
    try:
        return [_describe(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as err:
        logger.warning("NVML failed while listing GPUs (%s): serving on the CPU", err)
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _describe(nvml: ModuleType, index: int) -> DeviceInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)

    def optional(name: str) -> int | None:  # PCIe queries are unsupported on some boards
        try:
            return int(getattr(nvml, name)(handle))
        except nvml.NVMLError:
            return None

    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return DeviceInfo(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        total_bytes=int(memory.total),
        free_bytes=int(memory.free),
        compute_capability=(int(major), int(minor)),
        pcie_gen_max=optional("nvmlDeviceGetMaxPcieLinkGeneration"),
        pcie_width_max=optional("nvmlDeviceGetMaxPcieLinkWidth"),
        pcie_gen_current=optional("nvmlDeviceGetCurrPcieLinkGeneration"),
        pcie_width_current=optional("nvmlDeviceGetCurrPcieLinkWidth"),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def get_cpu_device() -> DeviceInfo:
    """The CPU as a device: RAM total and available from /proc/meminfo (or sysconf)."""
    total, free = _meminfo()
    return DeviceInfo(
        index=-1, uuid=CPU_UUID, name=_cpu_name(), total_bytes=total, free_bytes=free,
        compute_capability=None, pcie_gen_max=None, pcie_width_max=None,
        pcie_gen_current=None, pcie_width_current=None,
    )


def _meminfo() -> tuple[int, int]:
    fields = {}
    try:
        with open("/proc/meminfo") as src:
            for line in src:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if "MemTotal" in fields:
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size, os.sysconf("SC_AVPHYS_PAGES") * size


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as src:
            for line in src:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def discover_devices(nvml: ModuleType | None = None) -> list[DeviceInfo]:
    """The GPUs, best tier first (then by index); the CPU alone when there are none."""
    gpus = discover_gpus(nvml)
    if not gpus:
        return [get_cpu_device()]
    return sorted(gpus, key=lambda d: (-compute_tier(d), d.index))


# --- which experts to serve ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpertDemand:
    """What the network says of one expert, as input to `compute_served_experts`."""

    name: str
    """Block name, e.g. "layer3.expert7"."""
    nbytes: int
    """Memory it takes when loaded (its tensor blob's size)."""
    replicas: int
    """Nodes other than this one that serve it now."""
    load: float
    """Recent demand (requests or routed tokens per second, any unit shared by all)."""

    def __post_init__(self) -> None:
        if self.nbytes < 0 or self.replicas < 0 or not 0 <= self.load < float("inf"):
            raise ValueError(f"expert demand out of range: {self}")


def compute_serving_priority(
    demand: ExpertDemand, tier: Tier, min_replicas: int
) -> tuple[int, int, float, str]:
    """Sort key of an expert for a node of `tier`: smaller comes first."""
    if tier == Tier.CPU:
        return (0, demand.replicas, demand.load, demand.name)
    if demand.replicas < min_replicas:
        return (0, demand.replicas, -demand.load, demand.name)
    return (1, 0, -demand.load / (demand.replicas + 1), demand.name)


def compute_served_experts(
    demands: Sequence[ExpertDemand],
    tier: Tier,
    budget_bytes: int,
    *,
    min_replicas: int = 2,
    max_experts: int | None = None,
) -> tuple[str, ...]:
    """The experts this node should serve, in priority order, fitting `budget_bytes`.

    Pure and deterministic. Duplicate names count once (the first). An expert that does not
    fit is skipped and smaller ones after it still get their chance."""
    if budget_bytes < 0 or min_replicas < 0 or (max_experts is not None and max_experts < 0):
        raise ValueError("budget, min_replicas and max_experts must not be negative")
    unique: dict[str, ExpertDemand] = {}
    for demand in demands:
        unique.setdefault(demand.name, demand)
    order = sorted(unique.values(), key=lambda d: compute_serving_priority(d, tier, min_replicas))
    chosen: list[str] = []
    left = budget_bytes
    for demand in order:
        if max_experts is not None and len(chosen) >= max_experts:
            break
        if 0 <= demand.nbytes <= left:
            chosen.append(demand.name)
            left -= demand.nbytes
    return tuple(chosen)
