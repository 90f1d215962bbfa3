"""Hardware profiles: one YAML file per device in this folder, validated against a schema on load.

A profile describes (schema_version 1; every block carries a `source`):

    name, aliases, vendor, kind (gpu | ipu | cpu), description, version
    memory:        tiers, fastest first: name, capacity (per device), bandwidth (peak), efficiency (achievable
                   fraction of peak), source. Data goes to the first tier with room unless placed explicitly.
    host_link:     the link to host memory (PCIe for a GPU, NVMe for a CPU): name, bandwidth per direction,
                   efficiency, optional capacity of what sits behind it, source. Offloaded data pays this bandwidth.
    disk:          optional: storage behind the host's memory (FlexGen's third tier): name, bandwidth (read),
                   write_bandwidth, efficiency, capacity, source. Data placed there is read at this rate and also
                   crosses the host link (disk -> host memory -> device).
    device_link:   the device-to-device link for tensor parallelism: name, bandwidth per direction per device,
                   efficiency, latency per step of a collective (one hop), optional base_latency (the fixed cost of
                   one collective, whatever its steps), source.
    compute:       matrix and vector units: peak per dtype (dense, no sparsity), efficiency, source.
    cache:         on-chip cache (L2, Infinity Cache, L3): size, source.
    access:        granularity of a memory transaction (bytes), source.
    overheads:     kernel_launch (per kernel), source.

Quantities are written with units ('2039 GB/s', '80 GB', '312 TFLOP/s', '2.5 us') or as bare SI numbers.
Imports numpy-free Python only; the simulator turns a profile into arrays.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..common.errors import UserError, closest, input_file
from ..common.units import DTYPE_BYTES, parse_quantity

SCHEMA_VERSION = 1
PROFILE_DIR = Path(__file__).resolve().parent
KINDS = ("gpu", "ipu", "cpu")


class _Rated:
    """A tier or link with a peak `bandwidth_Bps` and the `efficiency` of it that is achieved."""

    @property
    def achieved_Bps(self) -> float:
        return self.bandwidth_Bps * self.efficiency


@dataclass(frozen=True)
class MemoryTier(_Rated):
    name: str
    capacity_bytes: float
    bandwidth_Bps: float
    efficiency: float
    source: str


@dataclass(frozen=True)
class Link(_Rated):
    name: str
    bandwidth_Bps: float
    efficiency: float
    latency_s: float
    capacity_bytes: float  # what sits behind a host link (inf when unstated); 0 for a device link
    source: str
    base_latency_s: float = 0.0   # device link: the fixed cost of one collective, whatever its steps


@dataclass(frozen=True)
class Disk(_Rated):
    """Storage behind the host's memory: what is offloaded there is read (and the cache's new rows written) at these
    rates, on top of crossing the host link."""
    name: str
    bandwidth_Bps: float        # sequential read
    write_bandwidth_Bps: float  # sequential write
    efficiency: float
    capacity_bytes: float
    source: str

    @property
    def achieved_write_Bps(self) -> float:
        return self.write_bandwidth_Bps * self.efficiency


@dataclass(frozen=True)
class ComputeUnit:
    peak_flops: dict[str, float]
    efficiency: float
    source: str


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    aliases: tuple[str, ...]
    vendor: str
    kind: str
    description: str
    version: int
    memory: tuple[MemoryTier, ...]
    host_link: Link
    device_link: Link
    matrix: ComputeUnit
    vector: ComputeUnit
    cache_bytes: float
    cache_source: str
    granularity_bytes: float
    granularity_source: str
    kernel_launch_s: float
    overheads_source: str
    calibration: dict = field(default_factory=dict, compare=False)  # fitted by `sparq-sim calibrate` (optional)
    units: int = 0  # SMs / CUs (0 = not stated): occupancy of kernels that parallelise over batch x heads only
    disk: Disk | None = None   # storage behind the host (optional)
    path: str = ""
    digest: str = field(default="", compare=False)

    @property
    def bandwidth_scale(self) -> float:
        """Measured / profiled achieved memory bandwidth, from a few-shot `sparq-sim calibrate` (1 = as profiled)."""
        return (self.calibration or {}).get("bandwidth_scale", 1.0)

    def tier(self, name: str) -> MemoryTier:
        for t in self.memory:
            if t.name == name:
                return t
        raise UserError(
            f"hardware {self.name!r} has no memory tier {name!r}; it has: "
            + ", ".join(t.name for t in self.memory) + ", host"
        )

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.memory)

    def to_dict(self) -> dict:
        """Plain SI view, for `hardware show --format json`."""
        return {
            "name": self.name, "aliases": list(self.aliases), "vendor": self.vendor, "kind": self.kind,
            "description": self.description, "version": self.version, "path": self.path, "digest": self.digest,
            "memory": [t.__dict__ for t in self.memory],
            "host_link": self.host_link.__dict__, "device_link": self.device_link.__dict__,
            **({"disk": self.disk.__dict__} if self.disk is not None else {}),
            "compute": {"matrix": self.matrix.__dict__, "vector": self.vector.__dict__},
            "cache": {"size_bytes": self.cache_bytes, "source": self.cache_source},
            "access": {"granularity_bytes": self.granularity_bytes, "source": self.granularity_source},
            "overheads": {"kernel_launch_s": self.kernel_launch_s, "source": self.overheads_source},
        }


# ---------------------------------------------------------------------------------------------------------------------
# schema

_TOP = {"schema_version", "name", "aliases", "vendor", "kind", "description", "version", "memory", "host_link", "disk",
        "device_link", "compute", "cache", "access", "overheads", "calibration"}
_CAL = {"source", "topk_per_element", "gather_efficiency", "stream_efficiency", "cache_bandwidth", "kernels", "rows",
        "fitted_on", "ops", "cache_usable", "cache_falloff", "host_scale", "bandwidth_scale"}
_CAL_KERNEL = {"fixed", "device_fixed", "stream_efficiency", "unsplit_efficiency", "gather_efficiency",
               "topk_per_element", "op_scale"}
# The primitive ops of eager CPU kernels that `sparq-sim calibrate --device cpu` measures (calibration.ops), each with
# the dimension of its figure: a bandwidth (bytes read per second) or a time per element. Each has a figure for data
# in memory and one for data resident in the last-level cache.
CPU_OPS = {
    "matvec": "bandwidth",             # q K^T: one dot product per contiguous key row
    "vecmat": "bandwidth",             # p V: each contiguous value row scaled and accumulated
    "gather_rows": "time",             # torch.gather of whole rows (index expanded along the contiguous dim)
    "gather_components": "time",       # torch.gather of components within each row, per element of the lines touched
    "topk_select": "time",             # torch.topk when k x 64 > n (nth_element), per input element
    "topk_heap": "time",               # torch.topk when k x 64 <= n (partial sort), per input element
    "softmax": "time",                 # softmax over score rows, per element
    "elementwise": "time",             # a broadcasting binary op writing a fresh tensor, per output element
}
_TIER = {"name", "capacity", "bandwidth", "efficiency", "source"}
_HOST = {"name", "bandwidth", "efficiency", "latency", "capacity", "source"}
_DLINK = {"name", "bandwidth", "efficiency", "latency", "base_latency", "source"}
_DISK = {"name", "bandwidth", "write_bandwidth", "efficiency", "capacity", "source"}
_UNIT = {"peak", "efficiency", "source"}


# The range every figure of a profile must lie in (SI units): wide enough for any device from a phone to a cluster's
# aggregate, narrow enough that no arithmetic on it overflows, underflows or divides by nearly nothing.
PHYSICAL_RANGE = {
    "bandwidth": (1e6, 1e16, "B/s"),      # 1 MB/s .. 10 PB/s
    "bytes": (1.0, 1e16, "B"),            # 1 B .. 10 PB
    "flops": (1e6, 1e20, "FLOP/s"),       # 1 MFLOP/s .. 100 EFLOP/s
    "time": (1e-12, 10.0, "s"),           # 1 ps .. 10 s (latencies and overheads)
}
MIN_EFFICIENCY = 0.001                    # an achieved fraction of a peak below 0.1 % is a typo, not a device
MAX_GRANULARITY_BYTES = 1 << 20           # a memory transaction of more than 1 MiB is no memory's


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, fld: str, msg: str):
        raise UserError(f"hardware profile {self.where}: {fld}: {msg}")

    def mapping(self, obj, fld: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(obj, dict):
            self.fail(fld or "top level", f"expected a mapping with fields {', '.join(sorted(required))}, "
                                          f"got {type(obj).__name__}")
        unknown = sorted(set(map(str, obj)) - allowed)
        if unknown:
            self.fail(fld or "top level", f"unknown field {unknown[0]!r}{closest(unknown[0], allowed)} "
                                          f"(accepted: {', '.join(sorted(allowed))})")
        missing = sorted(required - set(obj))
        if missing:
            self.fail(f"{fld + '.' if fld else ''}{missing[0]}", "missing (required)")
        return obj

    def text(self, obj, fld: str) -> str:
        if not isinstance(obj, str) or not obj.strip():
            self.fail(fld, f"expected a non-empty string, got {obj!r}")
        return obj.strip()

    def quantity(self, obj, fld: str, dimension: str, positive: bool = True) -> float:
        try:
            v = parse_quantity(obj, dimension)
        except ValueError as e:
            self.fail(fld, str(e))
        if positive and v <= 0:
            self.fail(fld, f"must be greater than zero, got {obj!r}")
        lo, hi, unit = PHYSICAL_RANGE[dimension]
        if v != 0 and not lo <= v <= hi:   # zero where allowed; anything else within what a device can be
            self.fail(fld, f"{obj!r} is outside the physical range of a {dimension} figure "
                           f"({lo:g} to {hi:g} {unit}{' or 0' if not positive else ''})")
        return v

    def fraction(self, obj, fld: str) -> float:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not (MIN_EFFICIENCY <= obj <= 1):
            self.fail(fld, f"expected a fraction from {MIN_EFFICIENCY} to 1, got {obj!r}")
        return float(obj)


def _unit(c: _Checker, obj, fld: str) -> ComputeUnit:
    c.mapping(obj, fld, _UNIT, _UNIT)
    peaks = obj["peak"]
    if not isinstance(peaks, dict) or not peaks:
        c.fail(f"{fld}.peak", f"expected a mapping of dtype to rate, e.g. {{bf16: 312 TFLOP/s}}, got {peaks!r}")
    out = {}
    for dt, v in peaks.items():
        if dt not in DTYPE_BYTES:
            c.fail(f"{fld}.peak.{dt}", f"unknown dtype; accepted: {', '.join(DTYPE_BYTES)}")
        out[dt] = c.quantity(v, f"{fld}.peak.{dt}", "flops")
    return ComputeUnit(out, c.fraction(obj["efficiency"], f"{fld}.efficiency"), c.text(obj["source"], f"{fld}.source"))


def _granularity(c: _Checker, obj) -> float:
    v = c.quantity(obj, "access.granularity", "bytes")
    if v > MAX_GRANULARITY_BYTES:
        c.fail("access.granularity", f"{obj!r} is larger than any memory transaction (at most "
                                     f"{MAX_GRANULARITY_BYTES} B)")
    return v


def parse_profile(data, where: str) -> HardwareProfile:
    """Validate a parsed YAML document and build the profile; every error names `where` and the field."""
    c = _Checker(where)
    c.mapping(data, "", _TOP, _TOP - {"aliases", "description", "calibration", "disk"})
    sv = data["schema_version"]
    if isinstance(sv, bool) or not isinstance(sv, int) or sv != SCHEMA_VERSION:
        c.fail("schema_version", f"expected {SCHEMA_VERSION}, got {sv!r}")
    name = c.text(data["name"], "name")
    if not name.isprintable() or any(ch.isspace() for ch in name):
        c.fail("name", f"expected a name without blanks or control characters, got {name!r}")
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a and a.isprintable()
                                                and not any(ch.isspace() for ch in a) for a in aliases):
        c.fail("aliases", f"expected a list of names without blanks or control characters, got {aliases!r}")
    kind = data["kind"]
    if kind not in KINDS:
        c.fail("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        c.fail("version", f"expected a positive integer, got {version!r}")

    mem = data["memory"]
    if not isinstance(mem, list) or not mem:
        c.fail("memory", "expected a non-empty list of tiers")
    tiers = []
    for i, t in enumerate(mem):
        f = f"memory[{i}]"
        c.mapping(t, f, _TIER, _TIER)
        tname = c.text(t["name"], f"{f}.name")
        if tname == "host" or tname in [x.name for x in tiers]:
            c.fail(f"{f}.name", f"tier name {tname!r} is reserved or used twice")
        tiers.append(MemoryTier(
            tname,
            c.quantity(t["capacity"], f"{f}.capacity", "bytes"),
            c.quantity(t["bandwidth"], f"{f}.bandwidth", "bandwidth"),
            c.fraction(t["efficiency"], f"{f}.efficiency"),
            c.text(t["source"], f"{f}.source"),
        ))

    h = c.mapping(data["host_link"], "host_link", _HOST, {"name", "bandwidth", "efficiency", "source"})
    host = Link(
        c.text(h["name"], "host_link.name"),
        c.quantity(h["bandwidth"], "host_link.bandwidth", "bandwidth"),
        c.fraction(h["efficiency"], "host_link.efficiency"),
        c.quantity(h.get("latency", 0), "host_link.latency", "time", positive=False),
        c.quantity(h["capacity"], "host_link.capacity", "bytes") if "capacity" in h else float("inf"),
        c.text(h["source"], "host_link.source"),
    )
    disk = None
    if "disk" in data:
        k = c.mapping(data["disk"], "disk", _DISK, _DISK)
        disk = Disk(c.text(k["name"], "disk.name"), c.quantity(k["bandwidth"], "disk.bandwidth", "bandwidth"),
                    c.quantity(k["write_bandwidth"], "disk.write_bandwidth", "bandwidth"),
                    c.fraction(k["efficiency"], "disk.efficiency"), c.quantity(k["capacity"], "disk.capacity", "bytes"),
                    c.text(k["source"], "disk.source"))
    d = c.mapping(data["device_link"], "device_link", _DLINK, _DLINK - {"base_latency"})
    dlink = Link(
        c.text(d["name"], "device_link.name"),
        c.quantity(d["bandwidth"], "device_link.bandwidth", "bandwidth"),
        c.fraction(d["efficiency"], "device_link.efficiency"),
        c.quantity(d["latency"], "device_link.latency", "time", positive=False),
        0.0,
        c.text(d["source"], "device_link.source"),
        c.quantity(d.get("base_latency", 0), "device_link.base_latency", "time", positive=False),
    )
    comp = c.mapping(data["compute"], "compute", {"matrix", "vector", "units"}, {"matrix", "vector"})
    units = 0
    if "units" in comp:  # streaming multiprocessors / compute units: how many thread blocks run at once
        u = c.mapping(comp["units"], "compute.units", {"count", "source"}, {"count", "source"})
        if isinstance(u["count"], bool) or not isinstance(u["count"], int) or not 1 <= u["count"] <= 10**6:
            c.fail("compute.units.count", f"expected a positive whole number, got {u['count']!r}")
        c.text(u["source"], "compute.units.source")
        units = u["count"]
    matrix = _unit(c, comp["matrix"], "compute.matrix")
    vector = _unit(c, comp["vector"], "compute.vector")
    cache = c.mapping(data["cache"], "cache", {"size", "source"}, {"size", "source"})
    access = c.mapping(data["access"], "access", {"granularity", "source"}, {"granularity", "source"})
    over = c.mapping(data["overheads"], "overheads", {"kernel_launch", "source"}, {"kernel_launch", "source"})
    calibration = {}
    if data.get("calibration") is not None:
        cal = c.mapping(data["calibration"], "calibration", _CAL, {"source"})
        calibration["source"] = c.text(cal["source"], "calibration.source")
        calibration["rows"] = cal.get("rows")
        calibration["fitted_on"] = cal.get("fitted_on")
        if "topk_per_element" in cal:
            calibration["topk_per_element_s"] = c.quantity(cal["topk_per_element"], "calibration.topk_per_element",
                                                           "time", positive=False)
        for fld in ("host_scale", "bandwidth_scale"):  # few-shot calibration of a new device (calibrate)
            if fld in cal:
                v = cal[fld]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.01 <= v <= 100):
                    c.fail(f"calibration.{fld}", f"expected a factor between 0.01 and 100, got {v!r}")
                calibration[fld] = float(v)
        if "cache_usable" in cal:
            calibration["cache_usable_bytes"] = c.quantity(cal["cache_usable"], "calibration.cache_usable", "bytes")
        if "cache_falloff" in cal:
            v = cal["cache_falloff"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 16):
                c.fail("calibration.cache_falloff", f"expected an exponent between 0 and 16, got {v!r}")
            calibration["cache_falloff"] = float(v)
        if "cache_bandwidth" in cal:
            calibration["cache_Bps"] = c.quantity(cal["cache_bandwidth"], "calibration.cache_bandwidth", "bandwidth")
        if "stream_efficiency" in cal:
            calibration["stream_efficiency"] = c.fraction(cal["stream_efficiency"], "calibration.stream_efficiency")
        if "gather_efficiency" in cal:
            calibration["gather_efficiency"] = c.fraction(cal["gather_efficiency"], "calibration.gather_efficiency")
        if cal.get("ops") is not None:
            ops = c.mapping(cal["ops"], "calibration.ops", set(CPU_OPS), set(CPU_OPS))
            calibration["ops"] = {}
            for op, dim in CPU_OPS.items():
                where = c.mapping(ops[op], f"calibration.ops.{op}", {"memory", "cache"}, {"memory", "cache"})
                calibration["ops"][op] = {w: c.quantity(where[w], f"calibration.ops.{op}.{w}", dim)
                                          for w in ("memory", "cache")}
        kernels = cal.get("kernels") or {}
        if not isinstance(kernels, dict):
            c.fail("calibration.kernels", "expected a mapping of kernel name to fitted values")
        calibration["kernels"] = {}
        for kname, kv in kernels.items():
            f = f"calibration.kernels.{kname}"
            c.mapping(kv, f, _CAL_KERNEL, set())
            out = {}
            if "fixed" in kv:
                out["fixed_s"] = c.quantity(kv["fixed"], f + ".fixed", "time", positive=False)
            if "topk_per_element" in kv:
                out["topk_per_element_s"] = c.quantity(kv["topk_per_element"], f + ".topk_per_element", "time",
                                                       positive=False)
            if "device_fixed" in kv:
                out["device_fixed_s"] = c.quantity(kv["device_fixed"], f + ".device_fixed", "time", positive=False)
            for eff in ("stream_efficiency", "unsplit_efficiency", "gather_efficiency"):
                if eff in kv:
                    v = kv[eff]
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 10):
                        c.fail(f"{f}.{eff}", f"expected a positive fraction of peak bandwidth, got {v!r}")
                    out[eff] = float(v)
            if "op_scale" in kv:
                sc = c.mapping(kv["op_scale"], f + ".op_scale", set(CPU_OPS) | {"op"}, set())
                out["op_scale"] = {}
                for op, v in sc.items():
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1e3):
                        c.fail(f"{f}.op_scale.{op}", f"expected a positive factor on the measured cost, got {v!r}")
                    out["op_scale"][op] = float(v)
            calibration["kernels"][str(kname)] = out
    return HardwareProfile(
        calibration=calibration,
        units=units,
        name=name,
        aliases=tuple(aliases),
        vendor=c.text(data["vendor"], "vendor"),
        kind=kind,
        description=str(data.get("description", "")).strip(),
        version=version,
        memory=tuple(tiers),
        host_link=host,
        disk=disk,
        device_link=dlink,
        matrix=matrix,
        vector=vector,
        cache_bytes=c.quantity(cache["size"], "cache.size", "bytes", positive=False),
        cache_source=c.text(cache["source"], "cache.source"),
        granularity_bytes=_granularity(c, access["granularity"]),
        granularity_source=c.text(access["source"], "access.source"),
        kernel_launch_s=c.quantity(over["kernel_launch"], "overheads.kernel_launch", "time", positive=False),
        overheads_source=c.text(over["source"], "overheads.source"),
    )


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    """Parse YAML without aliases. An alias (*name) repeats an anchored node; nested, a few of them expand a 2 KB file
    into gigabytes (a "billion laughs"), so every YAML this tool reads refuses them, in every field, before a node
    is built (the events are scanned first). Raises yaml.YAMLError."""
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not accepted: write the value out"
                                 + (f" (line {event.start_mark.line + 1})" if event.start_mark else ""))
    return yaml.load(text, Loader=_Loader)


def load_profile_file(path: str | os.PathLike) -> HardwareProfile:
    """Load and validate one profile file; every failure is a one-line UserError naming the file."""
    p = input_file(path, "hardware file", "a YAML file")
    try:
        raw = p.read_bytes()
        data = load_yaml(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"hardware file {str(p)!r} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())   # one line, whatever the parser says
        raise UserError(f"hardware file {str(p)!r} is not valid YAML{at}: {problem}") from None
    except (ValueError, RecursionError) as e:   # a number too long to convert, nesting beyond the recursion limit
        raise UserError(f"hardware file {str(p)!r} holds a value that cannot be read: "
                        f"{' '.join(str(e).split())[:200]}") from None
    prof = parse_profile(data, str(p))
    return _with_origin(prof, str(p), hashlib.sha256(raw).hexdigest()[:12])


def _with_origin(prof: HardwareProfile, path: str, digest: str) -> HardwareProfile:
    import dataclasses
    return dataclasses.replace(prof, path=path, digest=digest)


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


_INDEX: dict[str, Path] | None = None
_CACHE: dict[str, HardwareProfile] = {}


def _index() -> dict[str, Path]:
    """Name and alias -> bundled file. Aliases are read from the files' `aliases` lines without a full parse."""
    global _INDEX
    if _INDEX is None:
        idx: dict[str, Path] = {}
        for p in sorted(PROFILE_DIR.glob("*.yaml")):
            idx[_norm(p.stem)] = p
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.startswith("aliases:"):
                    for a in (yaml.load(line, Loader=_Loader) or {}).get("aliases") or []:
                        idx.setdefault(_norm(str(a)), p)
                    break
        _INDEX = idx
    return _INDEX


def profile_names() -> list[str]:
    """The bundled profiles' canonical names (file stems), sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_hardware(name_or_path: str | os.PathLike) -> HardwareProfile:
    """A bundled profile by name or alias (case-insensitive), or a user's YAML file by path."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or os.sep in s:
        return load_profile_file(s)
    key = _norm(s)
    if key.startswith("nvidia-"):
        key = key[len("nvidia-"):] if key[len("nvidia-"):] in _index() else key
    path = _index().get(key)
    if path is None:
        raise UserError(f"unknown hardware {s!r}{closest(key, _index())} "
                        f"(see `sparq-sim hardware list`, or pass --hardware-file FILE.yaml)")
    if key not in _CACHE:
        prof = load_profile_file(path)
        _CACHE[key] = prof
    return _CACHE[key]


def list_profiles() -> list[HardwareProfile]:
    return [load_hardware(n) for n in profile_names()]
