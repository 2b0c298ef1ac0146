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
    LLVM_OPTIONS,
    PRECISIONS,
    Target,
    check_precision,
    list_targets,
    load_target,
    missing_cpu_features,
    target_names,
)

REQUIRED = ["host", "host-avx512", "aarch64", "rpi5", "jetson-orin-cpu", "jetson-orin"]


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
    # Every CPU code generator runs with ssmc's LLVM options (targets.LLVM_OPTIONS: no unrolling by LLVM)
    assert [str(o) for o in cpu.attrs["cl-opt"]][:len(LLVM_OPTIONS)] == list(LLVM_OPTIONS)
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
    assert missing_cpu_features("host-avx512", "flags\t: fpu sse2 avx avx2 fma f16c bmi2 movbe avx512f") == [
        "avx512bw", "avx512dq", "avx512vl"]


def test_unknown_cpu_feature_is_refused_when_the_descriptor_loads(tmp_path) -> None:
    """Before any compile: the runtime could not check a flag the manifest schema does not know."""
    d = load_target("host").to_dict()
    d["name"], d["cpu_features"] = "typo", [*d["cpu_features"], "avx512cd", "avx-512f"]
    p = tmp_path / "typo.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="unknown 'avx512cd', 'avx-512f'") as e:
        load_target(p)
    assert "\n" not in str(e.value)


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
    kw = {"fcompile": cc.cross_compiler(t.toolchain().cc)} if t.cross_compiler else {}
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


@pytest.mark.parametrize("toolchain", ["gnu", "zig"])
@pytest.mark.parametrize("name", ["aarch64", "rpi5", "jetson-orin-cpu"])
def test_aarch64_descriptor_cross_builds(name: str, toolchain: str, tmp_path, monkeypatch) -> None:
    t = load_target(name)
    if toolchain == "gnu":
        require_tools(t.cross_compiler)
    monkeypatch.setenv("SSMC_CROSS", toolchain)
    assert t.toolchain().kind == toolchain
    lib = tmp_path / f"{name}.so"
    _build(t, lib)
    assert _elf_machine(lib) == EM_AARCH64


# -- cross builds right after `pip install -e .`: no aarch64-linux-gnu-gcc ----------------------------------

EM_AARCH64 = 183


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def _elf_has_symtab(path) -> bool:
    from ssmc.toolchain import _is_stripped

    return not _is_stripped(path)


@pytest.fixture
def no_debian_cross_gcc(tmp_path, monkeypatch):
    """PATH as it is, minus every aarch64-linux-gnu-* tool: a machine where apt never ran."""
    import os

    bin_dir = tmp_path / "path-without-aarch64-gcc"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            link = bin_dir / entry.name
            if entry.name.startswith("aarch64-linux-gnu-") or link.exists() or link.is_symlink():
                continue
            link.symlink_to(entry.path)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("SSMC_CROSS", raising=False)
    import shutil

    assert shutil.which("aarch64-linux-gnu-gcc") is None
    return bin_dir


@pytest.fixture
def tiny_dmm(tmp_path):
    """runs/dmm: a small DMM checkpoint, found by `ssmc compile --model dmm` from tmp_path."""
    import torch

    from ssmc.train.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("dmm", 3, 1, K=4, hidden=16, n_layer=1, window=3, d_state=8, dropout=0.0)
    extra = {"obs_mean": [0.0, 0.0, 0.0], "obs_std": [1.0, 1.0, 1.0], "rtg_scale": 1e-3,
             "target_return": -150.0, "env_id": "Pendulum-v1"}
    return save_checkpoint(model, tmp_path / "runs" / "dmm", extra)


def _compile_cli(tmp_path, monkeypatch, *args: str):
    from ssmc.cli import cli

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["compile", "--model", "dmm", *args])
    assert r.exit_code == 0, r.output
    return tmp_path / r.stdout.strip().splitlines()[-1]


def test_compile_rpi5_without_debian_cross_gcc(no_debian_cross_gcc, tiny_dmm, tmp_path, monkeypatch) -> None:
    assert load_target("rpi5").toolchain().kind == "zig"
    out = _compile_cli(tmp_path, monkeypatch, "--target", "rpi5")
    lib = out / "lib.so"
    assert _elf_machine(lib) == EM_AARCH64 and not _elf_has_symtab(lib)
    from ssmc.artifact import load_manifest

    m = load_manifest(out)
    assert m.target["name"] == "rpi5" and m.extra["library_stripped"] is True


def test_compile_jetson_orin_without_debian_cross_gcc(no_debian_cross_gcc, tiny_dmm, tmp_path, monkeypatch) -> None:
    require_tools("nvcc")
    out = _compile_cli(tmp_path, monkeypatch, "--target", "jetson-orin")
    from ssmc.artifact import load_manifest
    from ssmc.compile.cuda import cuda_archs

    assert _elf_machine(out / "lib.so") == EM_AARCH64
    assert cuda_archs((out / "lib.so").read_bytes()) == ["sm_87"]
    assert load_manifest(out).extra["cuda_device_code"] == ["sm_87"]


def test_missing_cross_toolchain_is_one_line_naming_both_ways(no_debian_cross_gcc, monkeypatch) -> None:
    import ssmc.toolchain as tc

    monkeypatch.setattr(tc, "zig_available", lambda: False)  # as without the ziglang wheel
    with pytest.raises(ConfigError) as e:
        load_target("rpi5").toolchain()
    msg = str(e.value)
    assert "\n" not in msg and "aarch64-linux-gnu-gcc" in msg and "ziglang" in msg and "qemu" in msg


def test_zig_wrapper_drops_gnu_only_linker_options(tmp_path) -> None:
    """The wrapper links what GNU gcc would (--exclude-libs dropped, -s added), and strip then passes."""
    from ssmc.toolchain import c_toolchain

    src = tmp_path / "f.c"
    src.write_text("#include <math.h>\ndouble f(double x) { return exp(x); }\n")
    lib = tmp_path / "libf.so"
    tc = c_toolchain("aarch64", prefer="zig")
    subprocess.run([tc.cc, "-O2", "-fPIC", "-shared", "-o", str(lib), str(src), "-lm", "-Wl,--exclude-libs,ALL"],
                   check=True, capture_output=True)
    assert _elf_machine(lib) == EM_AARCH64 and not _elf_has_symtab(lib)
    assert subprocess.run([tc.strip, str(lib)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_aarch64_runtime_bundle_built_by_zig_runs_static_artifacts(tiny_dmm, tmp_path, monkeypatch) -> None:
    """With zig (no Debian g++), the aarch64 bundle is the core: it runs a static artifact under qemu and
    refuses a VM one in one line (zig's libc++ cannot host TVM's libstdc++ runtime)."""
    from ssmc.compile import compile_checkpoint
    from ssmc.runtime import runtime_bundle

    require_tools("qemu-aarch64-static")
    monkeypatch.setenv("SSMC_CROSS", "zig")
    bundle = runtime_bundle("aarch64")
    assert bundle.library.is_file() and bundle.control.is_file() and not bundle.vm_plugin.exists()
    static = compile_checkpoint(tiny_dmm, "aarch64", "fp32", out=tmp_path / "static.ssmc")
    proc = subprocess.run(bundle.command(str(static), "--steps", "5"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0 and summary["target"] == "aarch64"
    vm = compile_checkpoint(tiny_dmm, "aarch64", "fp32", executor="vm", out=tmp_path / "vm.ssmc")
    proc = subprocess.run(bundle.command(str(vm), "--steps", "5"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "libssmc_vm.so" in proc.stderr
