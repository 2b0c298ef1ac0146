"""ssmc.targets: the deployment targets ssmc compiles for, one small JSON descriptor each.

A descriptor names the TVM target (a dict, never a CLI string: TVM 0.27 rejects those), the
host target for device builds, the cross compiler and emulator for aarch64 builds and tests,
the precisions the target runs well, and the budgets a compiled step is judged against.

This module imports without TVM; only :meth:`Target.tvm_target` imports it, lazily::

    from ssmc.targets import load_target, check_precision

    t = load_target("rpi5")
    check_precision(t, "fp16")          # "native"; raises ConfigError where unsupported
    tvm_t = t.tvm_target()              # tvm.target.Target (needs apache-tvm)

``load_target`` also takes the path of a user-written ``.json`` descriptor with the same fields
(for instance a ``host`` copy with ``"mcpu": "native"`` for a machine-specific build).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmc.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import tvm.target

    from ssmc.toolchain import Toolchain

__all__ = [
    "LLVM_OPTIONS",
    "PRECISIONS",
    "Budget",
    "Target",
    "check_precision",
    "list_targets",
    "load_target",
    "missing_cpu_features",
    "target_names",
]

#: Precisions ssmc knows, in the order they are listed.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: How well a target runs a precision: at full speed, or in software (allowed, compile warns).
SUPPORT_LEVELS: tuple[str, ...] = ("native", "emulated")
ARCHES: tuple[str, ...] = ("x86_64", "aarch64")
DEVICES: tuple[str, ...] = ("cpu", "cuda")

_FIELDS = {
    "name", "description", "arch", "device", "tvm_target", "tvm_host", "cross_compiler",
    "emulator", "cpu_features", "precisions", "budget", "notes",
}
_BUDGET_FIELDS = {"control_rate_hz", "step_latency_us", "memory_bytes", "source"}


#: LLVM options every CPU (``llvm``) target is built with, in TVM's ``cl-opt`` syntax (``-name:type=value``;
#: without the type TVM sets the option as a bool, which for an integer option does nothing).
#:
#: ``unroll-threshold-aggressive`` is the size budget of LLVM's loop unroller at -O3 (default 300). At 0 LLVM
#: unrolls no loop of its own accord, and the loops the schedules unroll (compile/tuning.py's register
#: blocks) are unrolled by TVM before LLVM sees them. Without it LLVM fully unrolled any loop whose constant
#: trip count times its body fit the budget: a window step's per-token loops at small K (30 tokens at
#: K = 10: a slice copy became 30 copies of its row), so a DeMa window step's code was 30 % larger at
#: K = 10 than at K = 160, where the same loops stay loops. With it the code is the same size at every K
#: (tests/test_window_step.py pins it). ``unroll-threshold`` itself is not used: LLVM reads it only when
#: it was given on a command line, which TVM's option setter does not count.
LLVM_OPTIONS: tuple[str, ...] = ("-unroll-threshold-aggressive:uint=0",)


def _with_llvm_options(target: dict[str, Any]) -> dict[str, Any]:
    """``target`` (a TVM target dict) with :data:`LLVM_OPTIONS` added to its ``cl-opt`` when it is an
    ``llvm`` target; a descriptor's own ``cl-opt`` entries come after them, so they can override."""
    target = dict(target)
    if target.get("kind") == "llvm":
        target["cl-opt"] = [*LLVM_OPTIONS, *target.get("cl-opt", [])]
    return target


@dataclass(frozen=True)
class Budget:
    """What a compiled step must meet on the target.

    ``step_latency_us`` is the per-step latency budget (p99) derived from ``control_rate_hz``;
    ``memory_bytes`` is the resident memory budget of the runtime serving the policy (library,
    parameters, state and the TVM runtime). ``source`` says where the numbers come from.
    """

    control_rate_hz: float
    step_latency_us: float
    memory_bytes: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        """The budget as a JSON-ready dict."""
        return {
            "control_rate_hz": self.control_rate_hz,
            "step_latency_us": self.step_latency_us,
            "memory_bytes": self.memory_bytes,
            "source": self.source,
        }


@dataclass(frozen=True)
class Target:
    """One deployment target, as read from its descriptor.

    Attributes:
        name: the name users type (``ssmc compile --target NAME``).
        description: one line for ``ssmc targets``.
        arch: ``x86_64`` or ``aarch64``: the CPU the artifact's library is built for.
        device: ``cpu`` or ``cuda``: where the step executes.
        target_dict: the TVM target as a dict (descriptor field ``tvm_target``), e.g.
            ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", ...}``.
        host_dict: the TVM host target dict for device (CUDA) targets (descriptor field
            ``tvm_host``), else ``None``; :meth:`tvm_target` attaches it.
        cross_compiler: the GNU cross compiler that links the library when it is installed (``None``: the
            host's compiler); without it :meth:`toolchain` falls back to ``zig cc``.
        emulator: argv prefix that runs this target's binaries here (qemu), or ``None``.
        cpu_features: ``/proc/cpuinfo`` flags the built code requires (checked by the runtime).
        precisions: supported precision -> ``"native"`` or ``"emulated"``; absent = unsupported.
        budget: the latency and memory budgets.
        notes: why the descriptor says what it says.
    """

    name: str
    description: str
    arch: str
    device: str
    target_dict: dict[str, Any]
    host_dict: dict[str, Any] | None
    cross_compiler: str | None
    emulator: tuple[str, ...] | None
    cpu_features: tuple[str, ...]
    precisions: dict[str, str]
    budget: Budget
    notes: str = ""
    source: str = field(default="", compare=False)  # where the descriptor was read from

    # -- TVM -------------------------------------------------------------------------------
    def tvm_target(self) -> tvm.target.Target:
        """Build the ``tvm.target.Target`` (with its host for device targets); imports TVM."""
        try:
            from tvm.target import Target as TvmTarget
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ConfigError(
                f"target {self.name!r} needs Apache TVM, part of ssmc's default install: pip install -e . ({e})"
            ) from e
        try:
            if self.host_dict is not None:
                return TvmTarget(_with_llvm_options(self.target_dict), host=_with_llvm_options(self.host_dict))
            return TvmTarget(_with_llvm_options(self.target_dict))
        except Exception as e:  # TVM raises its own error types (ValueError, TVMError, ...)
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ConfigError(f"target {self.name!r}: TVM rejects its target dict: {msg}") from e

    def toolchain(self) -> Toolchain:
        """The C toolchain that links this target's code here (ssmc/toolchain.py): the host's compiler,
        or for aarch64 ``cross_compiler`` when it is on PATH, else ``zig cc`` from the ziglang wheel.
        Raises ConfigError, in one line that says what to install, when there is none."""
        from ssmc.toolchain import c_toolchain

        return c_toolchain(self.arch if self.cross_compiler is not None else _host_arch())

    def to_dict(self) -> dict[str, Any]:
        """The full descriptor as a JSON-ready dict (what an artifact manifest embeds)."""
        return {
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
            "device": self.device,
            "tvm_target": _jsonable(self.target_dict),
            "tvm_host": _jsonable(self.host_dict),
            "cross_compiler": self.cross_compiler,
            "emulator": list(self.emulator) if self.emulator is not None else None,
            "cpu_features": list(self.cpu_features),
            "precisions": dict(self.precisions),
            "budget": self.budget.to_dict(),
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> Target:
        """Validate a descriptor dict and build the ``Target``; bad fields raise ConfigError."""
        where = source or str(d.get("name", "<descriptor>"))
        if not isinstance(d, dict):
            raise ConfigError(f"target descriptor {where}: expected a JSON object")
        missing = sorted(_FIELDS - {"notes"} - set(d))
        unknown = sorted(set(d) - _FIELDS)
        if missing:
            raise ConfigError(f"target descriptor {where}: missing field(s) {', '.join(missing)}")
        if unknown:
            raise ConfigError(f"target descriptor {where}: unknown field(s) {', '.join(unknown)}")

        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ConfigError(f"target descriptor {where}: {what}")

        need(isinstance(d["name"], str) and d["name"] != "", "name must be a non-empty string")
        need(isinstance(d["description"], str), "description must be a string")
        need(d["arch"] in ARCHES, f"arch must be one of {', '.join(ARCHES)}")
        need(d["device"] in DEVICES, f"device must be one of {', '.join(DEVICES)}")
        need(isinstance(d["tvm_target"], dict) and "kind" in d["tvm_target"],
             "tvm_target must be a dict with a 'kind'")
        need(d["tvm_host"] is None or (isinstance(d["tvm_host"], dict) and "kind" in d["tvm_host"]),
             "tvm_host must be null or a dict with a 'kind'")
        need(d["device"] == "cpu" or d["tvm_host"] is not None, "a device target needs a tvm_host")
        need(d["cross_compiler"] is None or isinstance(d["cross_compiler"], str),
             "cross_compiler must be null or a string")
        emu = d["emulator"]
        need(emu is None or (isinstance(emu, list) and emu and all(isinstance(a, str) for a in emu)),
             "emulator must be null or a non-empty list of strings (an argv prefix)")
        need(isinstance(d["cpu_features"], list) and all(isinstance(f, str) for f in d["cpu_features"]),
             "cpu_features must be a list of strings")
        known = _known_cpu_features()
        unknown = [f for f in d["cpu_features"] if f not in known]
        need(not unknown, f"cpu_features: unknown {', '.join(map(repr, unknown))} (the runtime checks only "
                          f"{', '.join(known)})")
        prec = d["precisions"]
        need(isinstance(prec, dict) and "fp32" in prec, "precisions must be a dict that includes fp32")
        for p, level in prec.items():
            need(p in PRECISIONS, f"unknown precision {p!r} (known: {', '.join(PRECISIONS)})")
            need(level in SUPPORT_LEVELS, f"precision {p}: level must be one of {', '.join(SUPPORT_LEVELS)}")
        b = d["budget"]
        need(isinstance(b, dict) and set(b) == _BUDGET_FIELDS,
             f"budget must have exactly the fields {', '.join(sorted(_BUDGET_FIELDS))}")
        for k in ("control_rate_hz", "step_latency_us", "memory_bytes"):
            v = b[k]
            need(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                 f"budget.{k} must be a positive number")
        need(isinstance(b["memory_bytes"], int), "budget.memory_bytes must be an integer")
        need(b["step_latency_us"] <= 1e6 / b["control_rate_hz"],
             "budget.step_latency_us exceeds the control period")
        notes = d.get("notes", "")
        need(isinstance(notes, str), "notes must be a string")
        return cls(
            name=d["name"],
            description=d["description"],
            arch=d["arch"],
            device=d["device"],
            target_dict=dict(d["tvm_target"]),
            host_dict=dict(d["tvm_host"]) if d["tvm_host"] is not None else None,
            cross_compiler=d["cross_compiler"],
            emulator=tuple(emu) if emu is not None else None,
            cpu_features=tuple(d["cpu_features"]),
            precisions={p: prec[p] for p in PRECISIONS if p in prec},
            budget=Budget(
                control_rate_hz=b["control_rate_hz"],
                step_latency_us=b["step_latency_us"],
                memory_bytes=b["memory_bytes"],
                source=b["source"],
            ),
            notes=notes,
            source=source,
        )


def _jsonable(obj: Any) -> Any:
    """A deep copy of a descriptor value in plain JSON types (tuples become lists)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# -- loading -------------------------------------------------------------------------------

def _builtin_files() -> dict[str, Any]:
    root = resources.files(__name__)
    return {
        entry.name[: -len(".json")]: entry
        for entry in root.iterdir()
        if entry.name.endswith(".json") and entry.is_file()
    }


#: Listing order of the built-in targets (others follow, sorted): host first, then by class.
_ORDER = ("host", "host-avx512", "aarch64", "rpi5", "jetson-orin-cpu", "jetson-orin")


def _known_cpu_features() -> tuple[str, ...]:
    """The ``/proc/cpuinfo`` flags an artifact may require: the manifest schema's ``cpu_feature`` enum.

    Checked when a descriptor is loaded, so a misspelt feature is refused before a compile, not when the
    artifact is written (runtime/c/manifest.schema.json is the one list; the C runtime reads it too).
    """
    from ssmc.artifact.schema import schema  # json only: no TVM, no torch

    return tuple(schema()["$defs"]["cpu_feature"]["enum"])


def target_names() -> list[str]:
    """Names of the built-in targets: host, host-avx512, aarch64, rpi5, jetson-orin-cpu, jetson-orin, then any others sorted."""
    names = set(_builtin_files())
    return [n for n in _ORDER if n in names] + sorted(names - set(_ORDER))


def _parse(text: str, source: str) -> Target:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"target descriptor {source}: not valid JSON ({e})") from e
    return Target.from_dict(d, source=source)


def load_target(name: Target | str | os.PathLike[str]) -> Target:
    """Load a built-in target by name, or a descriptor from a ``.json`` path.

    A ``Target`` passed in is returned as is.

    Raises:
        ConfigError: unknown name (the message lists the known ones) or an invalid descriptor.
    """
    if isinstance(name, Target):
        return name
    s = os.fspath(name)
    if s.endswith(".json") or os.sep in s:
        path = Path(s)
        if not path.is_file():
            raise ConfigError(f"target descriptor {s} not found")
        return _parse(path.read_text(encoding="utf-8"), str(path))
    files = _builtin_files()
    if s not in files:
        raise ConfigError(f"unknown target {s!r}; known targets: {', '.join(target_names())}")
    t = _parse(files[s].read_text(encoding="utf-8"), f"{s}.json")
    if t.name != s:
        raise ConfigError(f"target descriptor {s}.json names itself {t.name!r}")
    return t


def list_targets() -> list[Target]:
    """Every built-in target, in :func:`target_names` order."""
    return [load_target(n) for n in target_names()]


def check_precision(target: Target | str, precision: str) -> str:
    """Check that ``target`` can run ``precision``; return ``"native"`` or ``"emulated"``.

    ``"emulated"`` means allowed but slow (fp16 on x86-64): the caller should warn.

    Raises:
        ConfigError: unknown precision, or one the target cannot run, in one line.
    """
    t = load_target(target)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    level = t.precisions.get(precision)
    if level is None:
        others = [
            o.name + (" (emulated)" if o.precisions[precision] == "emulated" else "")
            for o in list_targets()
            if precision in o.precisions
        ]
        hint = f"; targets with {precision}: {', '.join(others)}" if others else ""
        raise ConfigError(
            f"target {t.name!r} cannot run {precision}; it supports {', '.join(t.precisions)}{hint}"
        )
    return level


def _host_arch() -> str:
    from ssmc.toolchain import host_arch

    return host_arch()


def missing_cpu_features(target: Target | str, cpuinfo: str | None = None) -> list[str]:
    """The ``cpu_features`` of ``target`` that this machine's CPU lacks.

    Reads ``/proc/cpuinfo`` (or the given text). Returns ``[]`` when the machine's architecture
    differs from the target's (nothing to check: the code runs under an emulator or elsewhere)
    or when the CPU flags cannot be read.
    """
    t = load_target(target)
    here = _host_arch()
    if cpuinfo is None:
        if here != t.arch:
            return []
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        return []
    return [f for f in t.cpu_features if f not in flags]
