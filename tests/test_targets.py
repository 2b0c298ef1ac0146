"""Target descriptors: every one loads, makes a valid TVM target, and bad names/precisions fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import require_tools

from ssmc.errors import ConfigError
from ssmc.targets import (
    PRECISIONS,
    Target,
    check_precision,
    list_targets,
    load_target,
    missing_cpu_features,
    target_names,
)

REQUIRED = ["host", "aarch64", "rpi5", "jetson-orin-cpu", "jetson-orin"]


def test_required_targets_exist() -> None:
    assert target_names()[: len(REQUIRED)] == REQUIRED
    assert [t.name for t in list_targets()] == target_names()


def test_import_does_not_need_tvm() -> None:
    code = "import sys, ssmc.targets as t; t.list_targets(); t.check_precision('rpi5', 'fp16'); print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", REQUIRED)
def test_descriptor_makes_tvm_target(name: str) -> None:
    import tvm  # a test dependency: failing to import it is a failure, not a skip

    t = load_target(name)
    tt = t.tvm_target()
    assert isinstance(tt, tvm.target.Target)
    assert tt.kind.name == t.target_dict["kind"]
    cpu = tt.host if t.device == "cuda" else tt
    assert cpu is not None and cpu.kind.name == "llvm"
    triple = str(cpu.attrs["mtriple"])
    assert triple.startswith(t.arch)
    if t.arch == "aarch64":
        # The fp16 claim must agree with what TVM/LLVM know about the CPU.
        assert bool(cpu.attrs["feature.has_fp16_simd"]) == ("fp16" in t.precisions)
        assert bool(cpu.attrs["feature.has_asimd"])
        assert t.cross_compiler == "aarch64-linux-gnu-gcc"
    else:
        assert t.cross_compiler is None and t.emulator is None
    # A round trip through the JSON form gives the same descriptor.
    assert Target.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_jetson_orin_matches_tvm_tags_with_a78_host() -> None:
    from tvm.target import Target as TvmTarget

    ours = load_target("jetson-orin").tvm_target()
    assert str(ours.attrs["arch"]) == "sm_87"
    assert str(ours.host.attrs["mcpu"]) == "cortex-a78"
    tag = TvmTarget("nvidia/jetson-agx-orin-32gb")
    for key in ("arch", "max_num_threads", "max_threads_per_block", "max_shared_memory_per_block",
                "registers_per_block", "thread_warp_size"):
        assert ours.attrs[key] == tag.attrs[key], key
    # Why the tag is not used as is: the Orin Nano tag's host CPU is Xavier's.
    assert str(TvmTarget("nvidia/jetson-orin-nano").host.attrs["mcpu"]) != "cortex-a78"


def test_precisions_and_budgets() -> None:
    for t in list_targets():
        assert set(t.precisions) <= set(PRECISIONS) and t.precisions["fp32"] == "native"
        assert 0 < t.budget.step_latency_us <= 1e6 / t.budget.control_rate_hz
        assert t.budget.memory_bytes > 0 and t.budget.source
    assert check_precision("host", "fp16") == "emulated"
    assert check_precision("rpi5", "fp16") == "native"
    assert check_precision("jetson-orin", "fp16") == "native"
    assert check_precision("aarch64", "int8") == "native"


def test_unknown_target_lists_known() -> None:
    with pytest.raises(ConfigError) as e:
        load_target("rpi9")
    msg = str(e.value)
    assert "rpi9" in msg and "\n" not in msg
    assert all(n in msg for n in REQUIRED)


def test_unsupported_precision_is_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        check_precision("aarch64", "fp16")
    msg = str(e.value)
    assert "aarch64" in msg and "fp16" in msg and "rpi5" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="unknown precision 'bf16'"):
        check_precision("host", "bf16")


def test_custom_descriptor_file(tmp_path) -> None:
    d = load_target("host").to_dict()
    d["name"], d["tvm_target"]["mcpu"] = "my-host", "native"
    p = tmp_path / "my-host.json"
    p.write_text(json.dumps(d))
    t = load_target(p)
    assert t.name == "my-host" and t.target_dict["mcpu"] == "native"
    d["precisions"]["fp8"] = "native"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        load_target(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_target(p)
    with pytest.raises(ConfigError, match="not found"):
        load_target(tmp_path / "absent.json")


def test_bad_tvm_dict_is_config_error() -> None:
    d = load_target("host").to_dict()
    d["tvm_target"] = {"kind": "no-such-kind"}
    with pytest.raises(ConfigError, match="TVM rejects"):
        Target.from_dict(d).tvm_target()


def test_missing_cpu_features() -> None:
    assert missing_cpu_features("rpi5", "Features\t: fp asimd evtstrm crc32") == ["asimdhp", "asimddp"]
    assert missing_cpu_features("aarch64", "Features\t: fp asimd") == []
    assert missing_cpu_features("host", "flags\t: fpu sse2 avx avx2 fma f16c bmi2 movbe") == []


def test_cli_targets() -> None:
    from ssmc.cli.targets import targets

    r = CliRunner().invoke(targets, ["--json"])
    assert r.exit_code == 0, r.output
    names = [t["name"] for t in json.loads(r.output)["targets"]]
    assert names[: len(REQUIRED)] == REQUIRED
    r = CliRunner().invoke(targets, [])
    assert r.exit_code == 0 and all(n in r.output for n in REQUIRED)
    r = CliRunner().invoke(targets, ["rpi5", "--json"])
    assert json.loads(r.output)["tvm_target"]["mcpu"] == "cortex-a76"


def _relax_module():
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((1, 8), "float32"), w: R.Tensor((8, 4), "float32")):
            with R.dataflow():
                y = R.tanh(R.matmul(x, w))
                R.output(y)
            return y

    return Mod


def _build(t: Target, path) -> None:
    import tvm
    from tvm import relax
    from tvm.support import cc

    tt = t.tvm_target()
    ex = tvm.compile(relax.get_default_pipeline(tt)(_relax_module()), tt, relax_pipeline=None)
    kw = {"fcompile": cc.cross_compiler(t.cross_compiler)} if t.cross_compiler else {}
    ex.export_library(str(path), **kw)


def test_host_descriptor_builds_and_runs(tmp_path) -> None:
    import numpy as np
    import tvm
    from tvm import relax

    t = load_target("host")
    if missing_cpu_features(t):
        pytest.fail(f"this CPU lacks {missing_cpu_features(t)} required by the host target")
    lib = tmp_path / "host.so"
    _build(t, lib)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(1, 8)).astype("float32"), rng.normal(size=(8, 4)).astype("float32")
    y = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    np.testing.assert_allclose(y, np.tanh(x @ w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["aarch64", "rpi5", "jetson-orin-cpu"])
def test_aarch64_descriptor_cross_builds(name: str, tmp_path) -> None:
    t = load_target(name)
    require_tools(t.cross_compiler)
    lib = tmp_path / f"{name}.so"
    _build(t, lib)
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
