"""The Python binding: ``Policy`` calls the C API of runtime/c/ssmc.h through ctypes.

    from ssmc.runtime import Policy
    with Policy("artifacts/dmm-host-fp32.ssmc") as policy:
        policy.reset()                        # the artifact's default target return
        action = policy.act(obs, last_reward)

Why ctypes: the binding must run the very library a C control loop links (libssmc.so), with nothing
to compile per Python version and no build step at install time; ctypes is in the standard library
and the API is a dozen plain C functions over floats, so a generated wrapper (cffi, pybind11) would
buy nothing but a build dependency. Its cost is a few microseconds per call, measured in
docs/runtime.md next to the C loop's own numbers.

Errors from the C API become ``PolicyError`` (an ``SsmcError``: one line, the C message) carrying
the status; like the C API, a failed ``act`` changes nothing. ``.tar`` artifacts are unpacked
(and verified) into a temporary directory first, since the C runtime opens directories.
No import of torch, TVM's Python package or the model code happens here. Static and VM artifacts open
the same way (``info["executor"]`` says which); a VM artifact needs the bundle's libssmc_vm.so and TVM's
runtime libraries next to libssmc.so, a static one nothing but libssmc.so.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

from ssmc.errors import SsmcError

__all__ = ["STATUS", "Policy", "PolicyError", "load_library"]

#: ssmc_status values (ssmc.h) by name.
STATUS = {0: "ok", 1: "argument", 2: "input", 3: "artifact", 4: "runtime"}

_LIB: dict[str, ctypes.CDLL] = {}
_f32p = ctypes.POINTER(ctypes.c_float)
#: SSMC_API_VERSION this binding speaks (ssmc.h).
API_VERSION = 2
#: ssmc_open_options.flags: ignore SSMC_TRUSTED_KEYS.
OPEN_NO_ENV = 1


class _OpenOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("trusted_keys", ctypes.c_char_p)]


class PolicyError(SsmcError):
    """A C API call failed; ``status`` is ssmc.h's name for why (argument, input, artifact, runtime)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = STATUS.get(status, str(status))


def load_library(path: str | os.PathLike[str] | None = None) -> ctypes.CDLL:
    """libssmc.so with its signatures declared; default: this machine's cached bundle (built once)."""
    if path is None:
        from ssmc.runtime.native import runtime_bundle

        path = runtime_bundle().library
    key = str(Path(path).resolve())
    if key in _LIB:
        return _LIB[key]
    lib = ctypes.CDLL(key)
    vp, sz, st = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    sigs = {
        "ssmc_open": (st, [ctypes.c_char_p, ctypes.POINTER(vp)]),
        "ssmc_open_with": (st, [ctypes.c_char_p, ctypes.POINTER(_OpenOptions), ctypes.POINTER(vp)]),
        "ssmc_close": (None, [vp]),
        "ssmc_reset": (st, [vp, ctypes.c_double]),
        "ssmc_act": (st, [vp, _f32p, sz, ctypes.c_double, _f32p, sz]),
        "ssmc_last_error": (ctypes.c_char_p, [vp]),
        "ssmc_obs_dim": (sz, [vp]),
        "ssmc_act_dim": (sz, [vp]),
        "ssmc_default_target_return": (ctypes.c_double, [vp]),
        "ssmc_steps": (ctypes.c_uint64, [vp]),
        "ssmc_state_bytes": (sz, [vp]),
        "ssmc_info": (ctypes.c_char_p, [vp, ctypes.c_char_p]),
        "ssmc_version": (ctypes.c_char_p, []),
        "ssmc_api_version": (ctypes.c_int, []),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    if lib.ssmc_api_version() != API_VERSION:
        raise PolicyError(f"{key}: C API version {lib.ssmc_api_version()}, this binding speaks {API_VERSION} "
                          "(rebuild it: ssmc runtime --rebuild)", 1)
    _LIB[key] = lib
    return lib


class Policy:
    """One compiled policy behind the C runtime: ``reset(target_return)``, ``act(obs, last_reward)``."""

    def __init__(self, artifact: str | os.PathLike[str], library: str | os.PathLike[str] | None = None, *,
                 trusted_keys: str | os.PathLike[str] | None = None) -> None:
        """Open ``artifact`` (a directory, or a .tar unpacked first). ``trusted_keys``: a key file or folder whose
        keys the artifact must be signed with (ssmc_open_with; docs/security.md); None: ``$SSMC_TRUSTED_KEYS``
        when set, as for ssmc_open."""
        self._lib = load_library(library)
        self._handle = ctypes.c_void_p()
        self._tmp: str | None = None
        path = Path(artifact)
        if path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz")):
            from ssmc.artifact import unpack_tar

            self._tmp = tempfile.mkdtemp(prefix="ssmc-artifact-")
            try:
                path = unpack_tar(path, Path(self._tmp) / "artifact")
            except BaseException:
                self._cleanup()
                raise
        self.path = path
        if trusted_keys is None:
            status = self._lib.ssmc_open(os.fsencode(path), ctypes.byref(self._handle))
        else:
            opts = _OpenOptions(ctypes.sizeof(_OpenOptions), OPEN_NO_ENV, os.fsencode(trusted_keys))
            status = self._lib.ssmc_open_with(os.fsencode(path), ctypes.byref(opts), ctypes.byref(self._handle))
        if status != 0:
            self._cleanup()
            raise PolicyError(self._lib.ssmc_last_error(None).decode(errors="replace"), status)
        self.obs_dim = int(self._lib.ssmc_obs_dim(self._handle))
        self.act_dim = int(self._lib.ssmc_act_dim(self._handle))
        self.default_target_return = float(self._lib.ssmc_default_target_return(self._handle))
        self.state_bytes = int(self._lib.ssmc_state_bytes(self._handle))
        self.info = {k: self._lib.ssmc_info(self._handle, k.encode()).decode()
                     for k in ("model_kind", "semantics", "precision", "target", "library", "executor")}
        #: the id of the trusted key whose signature ssmc_open verified ("" when no keys were configured)
        self.signed_by = self._lib.ssmc_info(self._handle, b"signed_by").decode()
        self._action = np.zeros(self.act_dim, np.float32)
        self._action_p = self._action.ctypes.data_as(_f32p)

    def _check(self, status: int) -> None:
        if status != 0:
            raise PolicyError(self._lib.ssmc_last_error(self._handle).decode(errors="replace"), status)

    def _live(self) -> ctypes.c_void_p:
        if not self._handle:
            raise PolicyError("the policy is closed", 1)
        return self._handle

    def reset(self, target_return: float | None = None) -> None:
        """Zero the state; return-to-go = ``target_return`` (default: the artifact's)."""
        target = self.default_target_return if target_return is None else float(target_return)
        self._check(self._lib.ssmc_reset(self._live(), target))

    def act(self, observation: np.ndarray, last_reward: float = 0.0) -> np.ndarray:
        """One step; returns a new float32 array of ``act_dim`` values."""
        obs = np.ascontiguousarray(observation, dtype=np.float32).reshape(-1)
        self._check(self._lib.ssmc_act(self._live(), obs.ctypes.data_as(_f32p), obs.size, float(last_reward),
                                       self._action_p, self.act_dim))
        return self._action.copy()

    @property
    def steps(self) -> int:
        """Steps since the last reset."""
        return int(self._lib.ssmc_steps(self._live()))

    def close(self) -> None:
        if self._handle:
            self._lib.ssmc_close(self._handle)
            self._handle = ctypes.c_void_p()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        i = self.info if self._handle else {}
        return f"Policy({str(self.path)!r}, {i.get('model_kind')}, {i.get('precision')}, {i.get('target')})"
