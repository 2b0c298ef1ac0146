"""Build the C runtime bundle (libssmc.so, its VM plugin with TVM's runtime libraries, the control-loop example).

    from ssmc.runtime.native import runtime_bundle
    bundle = runtime_bundle()                 # this machine (x86-64 or aarch64), built once, cached
    bundle = runtime_bundle("aarch64")        # cross build; fetches the aarch64 TVM wheels once
    subprocess.run([*bundle.emulator, str(bundle.control), "dmm.ssmc"])

A bundle is one folder with everything a robot needs besides the artifact, every ELF linked with
RPATH ``$ORIGIN`` so the folder runs from wherever it is copied::

    libssmc.so  ssmc_control  ssmc.h                      static artifacts: these alone (no TVM)
    libssmc_vm.so  libtvm_runtime.so  libtvm_ffi.so       VM artifacts: libssmc.so dlopens the plugin

Bundles live under ``$SSMC_CACHE/runtime/<arch>-<key>`` (default ``~/.cache/ssmc``), where the key
hashes the C sources, the compiler and the TVM libraries, so an edit or an upgrade rebuilds. The
build runs ``make`` on ``runtime/c/Makefile`` (shipped with the package). TVM's runtime libraries
come from the installed ``apache-tvm``/``apache-tvm-ffi`` wheels for the host; for aarch64 from the
same versions' ``manylinux_2_28_aarch64`` wheels, downloaded once with ``pip download`` (needs the
package index) into ``$SSMC_CACHE/wheels``. Nothing here imports TVM, torch or the model code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssmc.errors import SsmcError

__all__ = ["ARCHES", "RuntimeBuildError", "RuntimeBundle", "host_arch", "runtime_bundle", "source_dir"]

#: Architectures the runtime builds for, with their cross toolchain prefix and emulator.
ARCHES: dict[str, dict[str, object]] = {
    "x86_64": {"cross": "", "emulator": (), "wheel_platform": "manylinux_2_28_x86_64"},
    "aarch64": {"cross": "aarch64-linux-gnu-", "emulator": ("qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"),
                "wheel_platform": "manylinux_2_28_aarch64"},
}
_TOOLCHAIN_HINT = ("Debian/Ubuntu: apt-get install g++ make (host); aarch64 builds use g++-aarch64-linux-gnu or "
                   "zig from the ziglang package, and running them here needs qemu-user-static; "
                   ".ci/install-toolchains.sh installs all of it")


class RuntimeBuildError(SsmcError):
    """The runtime could not be built (missing compiler, wheels, or a compile error)."""


@dataclass(frozen=True)
class RuntimeBundle:
    arch: str
    dir: Path

    @property
    def library(self) -> Path:
        return self.dir / "libssmc.so"

    @property
    def vm_plugin(self) -> Path:
        """libssmc_vm.so: what libssmc.so loads to run VM artifacts (it links TVM's runtime)."""
        return self.dir / "libssmc_vm.so"

    @property
    def control(self) -> Path:
        return self.dir / "ssmc_control"

    @property
    def emulator(self) -> tuple[str, ...]:
        """argv prefix to run the bundle's programs here: empty on the same architecture."""
        return () if self.arch == host_arch() else tuple(ARCHES[self.arch]["emulator"])  # type: ignore[arg-type]

    def command(self, *args: str) -> list[str]:
        """The control-loop example's command line (under the emulator when cross-built)."""
        return [*self.emulator, str(self.control), *args]


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def source_dir() -> Path:
    """runtime/c: the header, the runtime source, the Makefile and the example."""
    return Path(__file__).resolve().parent / "c"


def _cache_root() -> Path:
    return Path(os.environ.get("SSMC_CACHE") or Path.home() / ".cache" / "ssmc")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeBuildError(f"the runtime needs the {name!r} package's libraries: it is part of ssmc's default install (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError as e:
        raise RuntimeBuildError(f"{dist} is not installed: it is part of ssmc's default install (pip install -e .)") from e


@dataclass(frozen=True)
class _TvmLibs:
    tvm_libdir: Path
    ffi_libdir: Path
    ffi_include: Path


def _host_libs() -> _TvmLibs:
    tvm, ffi = _package_dir("tvm"), _package_dir("tvm_ffi")
    return _TvmLibs(tvm / "lib", ffi / "lib", ffi / "include")


def _aarch64_libs(say: Callable[[str], None]) -> _TvmLibs:
    """TVM's aarch64 runtime libraries and headers, from the aarch64 wheels of the installed versions."""
    tvm_v, ffi_v = _version("apache-tvm"), _version("apache-tvm-ffi")
    root = _cache_root() / "wheels" / f"aarch64-tvm{tvm_v}-ffi{ffi_v}"
    libs = _TvmLibs(root / "tvm" / "lib", root / "tvm_ffi" / "lib", root / "tvm_ffi" / "include")
    if (libs.tvm_libdir / "libtvm_runtime.so").is_file() and (libs.ffi_libdir / "libtvm_ffi.so").is_file():
        return libs
    download = root.with_name(root.name + ".download")
    download.mkdir(parents=True, exist_ok=True)
    say(f"fetching the aarch64 wheels of apache-tvm {tvm_v} and apache-tvm-ffi {ffi_v} (~100 MB, once)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--platform", str(ARCHES["aarch64"]["wheel_platform"]),
           "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
           "-d", str(download), f"apache-tvm=={tvm_v}", f"apache-tvm-ffi=={ffi_v}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeBuildError(f"pip download of the aarch64 TVM wheels failed: {tail}")
    staging = root.with_name(root.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    wanted = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/include/")
    for wheel in sorted(download.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if any(name == w or (w.endswith("/") and name.startswith(w)) for w in wanted):
                    z.extract(name, staging)
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    shutil.rmtree(download, ignore_errors=True)
    if not (libs.tvm_libdir / "libtvm_runtime.so").is_file() or not (libs.ffi_libdir / "libtvm_ffi.so").is_file():
        raise RuntimeBuildError(f"the aarch64 wheels lack libtvm_runtime.so or libtvm_ffi.so (looked in {root})")
    return libs


def _key(arch: str, libs: _TvmLibs | None, cxx: str) -> str:
    h = hashlib.sha256(arch.encode())
    src = source_dir()
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "build" not in p.parts):
        h.update(path.relative_to(src).as_posix().encode())
        h.update(path.read_bytes())
    for lib in () if libs is None else (libs.tvm_libdir / "libtvm_runtime.so", libs.ffi_libdir / "libtvm_ffi.so"):
        st = lib.stat()
        h.update(f"{lib}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()[:16]


def _cross_prefix(arch: str) -> tuple[str, str]:
    """The cross toolchain's tool prefix and kind (ssmc/toolchain.py): Debian's ``aarch64-linux-gnu-`` when its
    gcc and g++ are installed (``gnu``), else zig's wrappers from the ziglang wheel (``zig``)."""
    from ssmc.errors import ConfigError
    from ssmc.toolchain import c_toolchain, zig_available

    try:
        tc = c_toolchain(arch)
        if tc.kind == "gnu" and shutil.which(tc.cxx) is None and zig_available():
            tc = c_toolchain(arch, prefer="zig")
    except ConfigError as e:
        raise RuntimeBuildError(f"building the {arch} runtime: {e}") from e
    return tc.prefix, tc.kind


def runtime_bundle(arch: str | None = None, *, rebuild: bool = False,
                   progress: Callable[[str], None] | None = None) -> RuntimeBundle:
    """The runtime bundle for ``arch`` (default: this machine), built with make if not cached."""
    say = progress or (lambda _m: None)
    arch = arch or host_arch()
    if arch not in ARCHES:
        raise RuntimeBuildError(f"unknown runtime architecture {arch!r}; known: {', '.join(ARCHES)}")
    cross, kind = _cross_prefix(arch) if arch != host_arch() else ("", "host")
    cxx = f"{cross}g++"
    for tool in (cxx, f"{cross}gcc", "make"):
        if shutil.which(tool) is None:
            raise RuntimeBuildError(f"building the {arch} runtime needs {tool} ({_TOOLCHAIN_HINT})")
    # zig links C++ against its own libc++, TVM's aarch64 runtime libraries against GNU libstdc++: a VM plugin
    # built by zig crashes on the first call across that boundary (measured under qemu), so a zig bundle is
    # the core alone: libssmc.so and ssmc_control, which run static artifacts (VM ones are refused in one line).
    core_only = kind == "zig"
    libs = None if core_only else _host_libs() if arch == host_arch() else _aarch64_libs(say)
    out = _cache_root() / "runtime" / f"{arch}-{_key(arch, libs, cxx)}"
    bundle = RuntimeBundle(arch, out)
    needed = (bundle.library, bundle.control) if core_only else (bundle.library, bundle.vm_plugin, bundle.control)
    if not rebuild and all(p.is_file() for p in needed):
        return bundle
    say(f"building the ssmc runtime for {arch} in {out}"
        + (" with zig: static artifacts only (VM artifacts need g++-aarch64-linux-gnu)" if core_only else ""))
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = ["make", "-s", "-C", str(source_dir()), f"OUT={staging}", f"CROSS={cross}",
           f"SSMC_VERSION={_version('ssmc')}"]
    if core_only:
        cmd.append("core")
    else:
        cmd += [f"TVM_LIBDIR={libs.tvm_libdir}", f"FFI_LIBDIR={libs.ffi_libdir}", f"FFI_INCLUDE={libs.ffi_include}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeBuildError(f"building the {arch} runtime failed:\n{proc.stderr.strip()}")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return bundle

