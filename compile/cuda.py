"""Building CUDA (Jetson Orin, sm_87) code on a machine without an NVIDIA GPU or driver.

TVM compiles CUDA kernels through ``tvm_callback_cuda_compile`` (nvcc here) and wraps them with
``ffi.Module.create.cuda``, which lives in ``libtvm_runtime_cuda.so``. That library links against the
driver, ``libcuda.so.1``; on a machine without a driver it fails to load, silently, and TVM then
emits a *source-only* fallback module: the build "succeeds" with no device code in it (docs/design.md).

``cuda_build_env`` fixes that for the duration of a build: it compiles a stub ``libcuda.so.1`` (every
entry point returns CUDA_ERROR_NO_DEVICE; nothing is ever launched at build time) into a temporary
directory, loads it, loads ``libtvm_runtime_cuda.so`` against it, and sets
``TVM_CUDA_COMPILE_MODE=nvcc`` so kernels become a fatbin with sm_87 machine code. ``cuda_archs``
then reads the artifact's library and lists the CUDA ELF images it really contains; the build fails
loudly when sm_87 code is missing. The code cannot run here (no GPU).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssmc.errors import ConfigError
from ssmc.targets import Target

#: A stand-in for the NVIDIA driver library: the symbols libtvm_runtime_cuda.so imports from it.
STUB_SOURCE = r"""
/* Stub libcuda.so.1 written by ssmc.compile.cuda: lets libtvm_runtime_cuda.so load on a machine
 * without an NVIDIA driver so that TVM can package nvcc-compiled kernels. Never used to run code:
 * every call fails with CUDA_ERROR_NO_DEVICE (100). */
typedef int CUresult;
#define CUDA_ERROR_NO_DEVICE 100
static const char kMsg[] = "ssmc stub libcuda: no CUDA driver on the build machine";
CUresult cuGetErrorName(CUresult e, const char **s) { (void)e; if (s) *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(CUresult e, const char **s) { (void)e; if (s) *s = kMsg; return 0; }
#define STUB(name) CUresult name(void) { return CUDA_ERROR_NO_DEVICE; }
STUB(cuInit)
STUB(cuDriverGetVersion)
STUB(cuDeviceGet)
STUB(cuDeviceGetCount)
STUB(cuDeviceGetName)
STUB(cuDeviceGetAttribute)
STUB(cuCtxGetCurrent)
STUB(cuFuncGetAttribute)
STUB(cuFuncSetAttribute)
STUB(cuLaunchKernel)
STUB(cuLaunchKernelEx)
STUB(cuModuleGetFunction)
STUB(cuModuleGetGlobal)
STUB(cuModuleLoadData)
STUB(cuModuleUnload)
STUB(cuTensorMapEncodeTiled)
STUB(cuPointerGetAttribute)
"""

_CREATE_CUDA = "ffi.Module.create.cuda"
_EM_CUDA = 190  # ELF e_machine of CUDA device code (cubin)


def _cuda_runtime_registered() -> bool:
    import tvm

    return tvm.get_global_func(_CREATE_CUDA, allow_missing=True) is not None


def _build_stub(directory: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ConfigError("building for a CUDA target needs a host C compiler (cc/gcc) for the driver stub")
    src, lib = directory / "libcuda_stub.c", directory / "libcuda.so.1"
    src.write_text(STUB_SOURCE, encoding="utf-8")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(lib), str(src)],
                   check=True, capture_output=True)
    return lib


def _load_cuda_runtime(stub_dir: Path) -> None:
    """Load the stub driver, then TVM's CUDA runtime library against it (registers the CUDA module)."""
    import tvm

    ctypes.CDLL(str(_build_stub(stub_dir)), mode=ctypes.RTLD_GLOBAL)  # satisfies NEEDED libcuda.so.1
    runtime = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if not runtime.is_file():
        raise ConfigError(f"this TVM build has no CUDA runtime ({runtime} missing); cannot build CUDA targets")
    try:
        ctypes.CDLL(str(runtime), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ConfigError(f"cannot load TVM's CUDA runtime {runtime.name}: {e} (CUDA 13 runtime libraries needed)") \
            from e


@contextmanager
def cuda_build_env(target: Target) -> Iterator[None]:
    """Everything a CUDA build needs on a GPU-less machine, for the duration of the ``with`` block.

    No-op for CPU targets. Raises ConfigError when nvcc is missing or TVM's CUDA runtime cannot load.
    """
    if target.device != "cuda":
        yield
        return
    if shutil.which("nvcc") is None:
        raise ConfigError(f"target {target.name!r} needs nvcc (the CUDA toolkit) on PATH to build GPU code")
    saved = {k: os.environ.get(k) for k in ("TVM_CUDA_COMPILE_MODE", "LD_LIBRARY_PATH")}
    stub_dir = Path(tempfile.mkdtemp(prefix="ssmc-cuda-stub-"))
    try:
        if not _cuda_runtime_registered():
            _load_cuda_runtime(stub_dir)
            if not _cuda_runtime_registered():
                raise ConfigError("TVM's CUDA runtime loaded but did not register its module; "
                                  "a build would contain CUDA source only, no sm code")
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"  # a fatbin with SASS; nvrtc needs cuda-bindings
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(stub_dir), saved["LD_LIBRARY_PATH"]) if p)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(stub_dir, ignore_errors=True)


def cuda_archs(data: bytes) -> list[str]:
    """The SM architectures of the CUDA ELF images (cubins) embedded in ``data``, e.g. ``["sm_87"]``.

    Finds every 64-bit little-endian ELF header whose e_machine is EM_CUDA (190) and reads the SM
    version from e_flags: bits 0-7 in the classic cubin ABI (EI_ABIVERSION 7), bits 8-15 in the one
    nvcc 13 writes (EI_ABIVERSION 8; e_flags 0x06005704 for sm_87). A tool-free ``cuobjdump --list-elf``.
    """
    found: list[str] = []
    pos = data.find(b"\x7fELF")
    while pos >= 0:
        header = data[pos : pos + 64]
        if len(header) == 64 and header[4] == 2 and header[5] == 1:  # ELFCLASS64, little-endian
            (machine,) = struct.unpack_from("<H", header, 18)
            if machine == _EM_CUDA:
                (flags,) = struct.unpack_from("<I", header, 48)
                sm = (flags >> 8) & 0xFF if header[8] >= 8 else flags & 0xFF
                found.append(f"sm_{sm}")
        pos = data.find(b"\x7fELF", pos + 4)
    return sorted(set(found))


def check_device_code(library: Path, target: Target) -> list[str]:
    """Fail loudly unless ``library`` embeds machine code for the target's CUDA arch; return the archs."""
    want = str(target.target_dict.get("arch", ""))
    archs = cuda_archs(library.read_bytes())
    if want not in archs:
        raise RuntimeError(
            f"{library.name} holds no {want} device code (found: {', '.join(archs) or 'none'}); "
            "TVM emitted a source-only CUDA module: the CUDA runtime or nvcc was not used"
        )
    return archs
