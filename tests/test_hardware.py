"""Hardware profiles: every bundled file validates, carries its sources, and names resolve."""


import pytest
import yaml

from sparq_sim.hardware_profiles import PROFILE_DIR, list_profiles, load_hardware, profile_names
from sparq_sim.simulator.errors import UserError

REQUIRED = ["a100-40gb", "a100-80gb", "a100-80gb-pcie", "h100-sxm", "h100-pcie", "h200", "a10g", "l4", "l40s",
            "rtx-4090", "b200", "mi300x", "ipu-bow", "ipu-m2000", "epyc-7763", "epyc-9654", "xeon-8480"]


def test_every_required_device_is_bundled():
    assert set(REQUIRED) <= set(profile_names())


@pytest.mark.parametrize("alias,name", [("a100", "a100-80gb"), ("h100", "h100-sxm"), ("ipu", "ipu-bow"),
                                        ("A100", "a100-80gb"), ("NVIDIA A10G", "a10g"), ("4090", "rtx-4090")])
def test_aliases(alias, name):
    assert load_hardware(alias).name == name


def test_names_and_aliases_are_unique():
    seen = {}
    for p in list_profiles():
        for n in (p.name, *p.aliases):
            key = n.lower()
            assert key not in seen, f"{n} is used by {seen[key]} and {p.name}"
            seen[key] = p.name


def _number_blocks(data, path=""):
    """Yield (path, block) for every mapping that holds a quantity."""
    if isinstance(data, dict):
        if any(isinstance(v, (int, float, str)) and k not in ("name", "source", "description", "vendor", "kind")
               for k, v in data.items()) and path not in ("",):
            yield path, data
        for k, v in data.items():
            yield from _number_blocks(v, f"{path}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _number_blocks(v, f"{path}[{i}]")


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_every_figure_has_a_source(name):
    data = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())
    for path, block in _number_blocks(data):
        if path.endswith(".peak"):  # peaks share their unit's source
            continue
        assert str(block.get("source", "")).strip(), f"{name}{path} has figures but no source"


def test_profile_figures_match_reference_table():
    """Datasheet peak bandwidth and bf16 peaks (docs/hardware.md)."""
    expect = {"a100-40gb": (1555e9, 312e12), "a100-80gb": (2039e9, 312e12), "h100-sxm": (3350e9, 989e12),
              "h100-pcie": (2000e9, 756e12), "h200": (4800e9, 989e12), "l4": (300e9, 121e12),
              "l40s": (864e9, 362e12), "b200": (8000e9, 2250e12), "mi300x": (5300e9, 1307e12)}
    for name, (bw, bf16) in expect.items():
        p = load_hardware(name)
        assert p.memory[0].bandwidth_Bps == bw, name
        assert p.matrix.peak_flops["bf16"] == pytest.approx(bf16, rel=1e-3), name
    ipu = load_hardware("ipu")
    assert [t.name for t in ipu.memory] == ["sram", "streaming"]
    assert ipu.memory[0].capacity_bytes == 900e6


def test_a_users_profile_file_loads(tmp_path):
    text = (PROFILE_DIR / "a100-80gb.yaml").read_text().replace("name: a100-80gb", "name: my-a100")
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    assert load_hardware(str(f)).name == "my-a100"


@pytest.mark.parametrize("old,new,field", [
    ("bandwidth: 2039 GB/s", "bandwidth: fast", "memory[0].bandwidth"),
    ("efficiency: 0.86", "efficiency: 1.5", "memory[0].efficiency"),
    ("capacity: 80 GB", "capacity: -80 GB", "memory[0].capacity"),
    ("schema_version: 1", "schema_version: 9", "schema_version"),
    ("kind: gpu", "kind: tpu", "kind"),
    ("size: 40 MB", "sizes: 40 MB", "cache"),
    ("kernel_launch: 2.5 us", "kernel_launch: 2.5 parsecs", "overheads.kernel_launch"),
])
def test_malformed_profile_names_file_and_field(tmp_path, old, new, field):
    text = (PROFILE_DIR / "a100-80gb.yaml").read_text()
    assert old in text
    f = tmp_path / "bad.yaml"
    f.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError) as e:
        load_hardware(str(f))
    msg = str(e.value)
    assert str(f) in msg and field in msg and "\n" not in msg


def test_unknown_hardware_suggests_closest():
    with pytest.raises(UserError, match=r"a10g.*sparq-sim hardware list"):
        load_hardware("a10")
