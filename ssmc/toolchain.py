"""C toolchains for the targets: the host's compiler, Debian's aarch64 cross gcc, or ``zig cc``.

Every aarch64 build (an artifact's library, the aarch64 runtime bundle) needs a C compiler that
targets ``aarch64-linux-gnu``. ssmc takes the first of:

1. ``aarch64-linux-gnu-gcc`` on PATH (Debian/Ubuntu ``gcc-aarch64-linux-gnu``, what
   ``.ci/install-toolchains.sh`` installs);
2. ``zig cc -target aarch64-linux-gnu`` from the ``ziglang`` wheel (a default dependency, so a
   plain ``pip install -e .`` can cross-compile). Zig ships its own glibc headers and stubs, so no
   sysroot is needed to *build*.

For zig, :func:`c_toolchain` writes small wrapper scripts named like Debian's tools
(``aarch64-linux-gnu-gcc``, ``-g++``, ``-strip``, ``-ar``) into ``$SSMC_CACHE/toolchain`` (default
``~/.cache/ssmc``), so TVM's ``export_library``, the static executor's link and ``runtime/c/Makefile``
call either toolchain the same way. The wrappers run ``python -m ssmc.toolchain``, which drops the
GNU-ld options zig's linker does not take (``--exclude-libs``, ``-static-libstdc++``), links with ``-s``
(zig cannot strip an ELF shared object afterwards) and runs zig.

*Running* aarch64 code here is another matter: it needs qemu-user (``qemu-aarch64-static``) and an
aarch64 glibc for its dynamic loader (``/usr/aarch64-linux-gnu``, Debian's ``libc6-arm64-cross``);
:data:`MISSING_HINT` says so in one line. Nothing here imports torch or TVM.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ssmc.errors import ConfigError

__all__ = ["MISSING_HINT", "Toolchain", "c_toolchain", "can_emulate", "host_arch", "zig_available"]

#: The GNU triple (and Debian tool prefix) of each cross architecture ssmc builds for.
TRIPLES = {"aarch64": "aarch64-linux-gnu"}
#: What to install when something is missing, in one line (build and run are different needs).
MISSING_HINT = ("building for aarch64 needs aarch64-linux-gnu-gcc or the ziglang package "
                "(pip install ziglang, part of ssmc's default install); running aarch64 code here also needs "
                "qemu-user-static and an aarch64 libc (Debian/Ubuntu: bash .ci/install-toolchains.sh)")
#: Linker options zig's linker (lld) rejects or warns about (-rpath-link: "unimplemented"); dropped by the wrapper. Zig links its own
#: libc++ and compiler-rt statically, which is what -static-libstdc++/-static-libgcc ask GNU g++ for.
_DROP = {"-Wl,--exclude-libs,ALL", "-static-libstdc++", "-static-libgcc"}
_DROP_PREFIX = ("-Wl,-rpath-link,",)


@dataclass(frozen=True)
class Toolchain:
    """A C/C++ toolchain for one architecture.

    Attributes:
        arch: ``x86_64`` or ``aarch64``.
        kind: ``host`` (this machine's cc), ``gnu`` (Debian's cross gcc) or ``zig``.
        prefix: what goes before ``gcc``/``g++``/``strip`` (``""`` for the host; a path ending in
            ``aarch64-linux-gnu-`` for zig's wrappers); ``runtime/c/Makefile``'s ``CROSS``.
    """

    arch: str
    kind: str
    prefix: str

    @property
    def cc(self) -> str:
        return f"{self.prefix}gcc" if self.prefix else ("cc" if shutil.which("cc") else "gcc")

    @property
    def cxx(self) -> str:
        return f"{self.prefix}g++"

    @property
    def strip(self) -> str:
        return f"{self.prefix}strip"

    def describe(self) -> str:
        """One phrase for progress lines: which compiler links the code."""
        if self.kind == "zig":
            return f"zig cc -target {TRIPLES[self.arch]} (ziglang {_zig_version()})"
        return self.cc


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def zig_available() -> bool:
    """Whether the ``ziglang`` package is installed (located without importing it)."""
    return importlib.util.find_spec("ziglang") is not None


def _zig_version() -> str:
    try:
        from importlib.metadata import version

        return version("ziglang")
    except Exception:  # noqa: BLE001 - metadata may be missing in odd installs
        return "unknown"


def _cache_root() -> Path:
    return Path(os.environ.get("SSMC_CACHE") or Path.home() / ".cache" / "ssmc")


def _zig_wrappers(arch: str) -> str:
    """Write (once) the Debian-named wrapper scripts for zig and return their common prefix."""
    triple = TRIPLES[arch]
    folder = _cache_root() / "toolchain" / f"zig-{_zig_version()}-{triple}"
    tools = {"gcc": "cc", "g++": "c++", "strip": "strip", "ar": "ar"}
    python = sys.executable
    for name, tool in tools.items():
        path = folder / f"{triple}-{name}"
        text = f'#!/bin/sh\nexec "{python}" -m ssmc.toolchain {tool} {triple} "$@"\n'
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o755)
        tmp.replace(path)
    return str(folder / f"{triple}-")


def c_toolchain(arch: str, *, prefer: str | None = None) -> Toolchain:
    """The toolchain that builds for ``arch`` here.

    The host's compiler for this machine's architecture; for aarch64, Debian's cross gcc when it is on
    PATH, else zig from the ziglang wheel. ``prefer`` (``gnu`` or ``zig``; also the environment variable
    ``SSMC_CROSS``) forces one of the two.

    Raises:
        ConfigError: no compiler for ``arch``, in one line that says what to install.
    """
    if arch == host_arch():
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            raise ConfigError("building for this machine needs a C compiler (Debian/Ubuntu: apt-get install gcc)")
        return Toolchain(arch, "host", "")
    if arch not in TRIPLES:
        raise ConfigError(f"no cross toolchain for {arch!r}; known: {', '.join(TRIPLES)}")
    prefer = prefer or os.environ.get("SSMC_CROSS") or None
    if prefer not in (None, "gnu", "zig"):
        raise ConfigError(f"SSMC_CROSS={prefer!r}: expected gnu or zig")
    gnu = f"{TRIPLES[arch]}-"
    if prefer in (None, "gnu") and shutil.which(gnu + "gcc") is not None:
        return Toolchain(arch, "gnu", gnu)
    if prefer in (None, "zig") and zig_available():
        return Toolchain(arch, "zig", _zig_wrappers(arch))
    want = "aarch64-linux-gnu-gcc" if prefer == "gnu" else "the ziglang package" if prefer == "zig" else None
    raise ConfigError(f"no C compiler for {arch}" + (f" ({want} was asked for)" if want else "")
                      + f"; {MISSING_HINT}")


def can_emulate(arch: str) -> bool:
    """Whether this machine can run ``arch`` binaries (same arch, or qemu-user plus an aarch64 libc)."""
    if arch == host_arch():
        return True
    return shutil.which("qemu-aarch64-static") is not None and Path("/usr/aarch64-linux-gnu/lib").is_dir()


# -- the zig wrapper (python -m ssmc.toolchain TOOL TRIPLE ARGS...) -------------------------------

def _zig(*args: str) -> list[str]:
    return [sys.executable, "-m", "ziglang", *args]


def _strip(args: list[str]) -> int:
    """``strip FILE...``: zig 0.17's ``objcopy --strip-all`` is unimplemented for ELF shared objects, so the
    wrapper's ``cc`` links with ``-s`` instead (lld's --strip-all: the static symbol table goes, the dynamic
    symbols stay). Here: succeed for files that are already stripped, fail for any that are not."""
    for f in (a for a in args if not a.startswith("-")):
        if not _is_stripped(Path(f)):
            print(f"ssmc.toolchain: {f} has a symbol table and zig cannot strip it after linking", file=sys.stderr)
            return 1
    return 0


def _is_stripped(path: Path) -> bool:
    """Whether an ELF64 little-endian file has no SHT_SYMTAB section (what ``strip`` removes)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return all(struct.unpack_from("<I", data, shoff + i * shentsize + 4)[0] != 2 for i in range(shnum))


def _links(args: list[str]) -> bool:
    """Whether a cc command line links (no -c/-S/-E, not a query such as -dumpmachine) without -g."""
    return bool(args) and not any(a in ("-c", "-S", "-E", "-g") or a.startswith("-dump") or a.startswith("-print")
                                  for a in args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python -m ssmc.toolchain cc|c++|strip|ar TRIPLE ARGS...", file=sys.stderr)
        return 2
    tool, triple, args = argv[0], argv[1], argv[2:]
    if tool == "strip":
        return _strip(args)
    if tool == "ar":
        return subprocess.run(_zig("ar", *args)).returncode
    if tool not in ("cc", "c++"):
        print(f"ssmc.toolchain: unknown tool {tool!r}", file=sys.stderr)
        return 2
    if args == ["--version"]:
        return subprocess.run(_zig(tool, "--version")).returncode
    kept = [a for a in args if a not in _DROP and not a.startswith(_DROP_PREFIX)]
    if _links(kept) and "-s" not in kept:
        kept.append("-s")  # what strip would do afterwards (see _strip)
    return subprocess.run(_zig(tool, "-target", triple, *kept)).returncode


if __name__ == "__main__":
    sys.exit(main())
