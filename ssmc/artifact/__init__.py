"""The compiled artifact: manifest schema, hashing, writing, packing, loading and verifying.

This module is the contract between ``ssmc compile`` (which writes artifacts) and the runtime
and ``ssmc verify`` (which read them). It imports neither TVM nor torch.

An artifact is a directory (conventionally ``NAME.ssmc/``), optionally packed into a ``.tar``::

    NAME.ssmc/
        manifest.json            what this module describes (``Manifest``)
        <library>                the compiled library for the target (e.g. ``lib.so``)
        <params>                 parameters, when not embedded in the library (optional)
        reference.safetensors    reference (inputs, state) -> (outputs, state) pairs (optional)
        ...                      any other file the manifest lists

``manifest.json`` lists every other file with its sha256 and size; loading refuses an artifact
whose files differ from that list in any way (changed, truncated, missing, or extra) and one of
another format version. See docs/artifact.md for the fields.

Writing is atomic: files go into a temporary directory next to the destination, which is
renamed into place only when complete, so a crash never leaves a half-written artifact.
No pickle anywhere: JSON for the manifest, safetensors for tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ssmc.artifact.schema import parse_manifest_text, validate_manifest
from ssmc.artifact.signing import SIGNATURE_NAME, check_signature, configured_keyring, read_signature
from ssmc.errors import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    from ssmc.targets import Target

__all__ = [
    "DTYPES",
    "EXECUTORS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "REFERENCE_NAME",
    "SEMANTICS",
    "FileEntry",
    "Manifest",
    "ReferenceStep",
    "TensorSpec",
    "check_reference",
    "default_versions",
    "load_manifest",
    "pack_tar",
    "read_reference",
    "reference_bytes",
    "sha256_file",
    "unpack_tar",
    "write_artifact",
    "write_reference",
]

#: The manifest format this ssmc writes and the only one it reads. 2: ``executor``, ``arena_bytes``,
#: ``normalisation_in_graph`` and ``env_id`` became fields (they were absent or under ``extra`` in 1).
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
#: The Ed25519 signature of manifest.json (ssmc/artifact/signing.py); like the manifest, not listed in it.
UNLISTED = (MANIFEST_NAME, SIGNATURE_NAME)
REFERENCE_NAME = "reference.safetensors"
#: Inference semantics (docs/design.md): re-encode a K-window, or carry recurrent state.
SEMANTICS: tuple[str, ...] = ("window", "recurrent")
#: Tensor dtypes a manifest may name (numpy spellings).
DTYPES: tuple[str, ...] = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: How the library runs the step: ``static`` native code (runtime/c/ssmc_static_abi.h; no TVM on the target)
#: or ``vm``, a Relax VM executable loaded through TVM's runtime (docs/compile.md, Executors).
EXECUTORS: tuple[str, ...] = ("static", "vm")

_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 16 << 20  # the C runtime's bound


# -- small types ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one step input, output or state tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return self.numel * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"name": ..., "shape": [...], "dtype": ...}``."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_any(cls, obj: Any, where: str) -> TensorSpec:
        """From a ``TensorSpec``, a dict with name/shape/dtype, or a ``(name, shape, dtype)`` tuple."""
        if isinstance(obj, TensorSpec):
            name, shape, dtype = obj.name, obj.shape, obj.dtype
        elif isinstance(obj, Mapping):
            if set(obj) != {"name", "shape", "dtype"}:
                raise ArtifactError(f"{where}: a tensor spec needs exactly name, shape, dtype")
            name, shape, dtype = obj["name"], obj["shape"], obj["dtype"]
        elif isinstance(obj, list | tuple) and len(obj) == 3:
            name, shape, dtype = obj
        else:
            raise ArtifactError(f"{where}: expected a tensor spec (name, shape, dtype), got {obj!r}")
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\0"):
            raise ArtifactError(f"{where}: invalid tensor name {name!r}")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise ArtifactError(f"{where}: tensor {name!r}: shape must be a list of non-negative integers")
        dtype = str(np.dtype(dtype)) if isinstance(dtype, np.dtype | type) else dtype
        if dtype not in DTYPES:
            raise ArtifactError(f"{where}: tensor {name!r}: dtype {dtype!r} not one of {', '.join(DTYPES)}")
        return cls(name=name, shape=tuple(shape), dtype=dtype)


@dataclass(frozen=True)
class FileEntry:
    """The recorded size and sha256 of one artifact file."""

    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"sha256": ..., "bytes": ...}``."""
        return {"sha256": self.sha256, "bytes": self.bytes}


# -- the manifest ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    """Everything a runtime and ``verify`` need to know about a compiled step.

    The JSON keys of ``manifest.json`` are exactly these field names. The compiled entry
    function is called as ``entry(*inputs, *state) -> (*outputs, *new_state)``, each list in
    the order given here, with the shapes and dtypes given here.
    """

    format_version: int
    # the model
    model_kind: str  # dt, dema, dema-rnn, dmm, mambadm, dmh
    model_config: dict[str, Any]  # the checkpoint's config.json, as compiled
    semantics: str  # "window" or "recurrent"
    # the calling convention of the compiled step
    entry: str  # function name in the library, usually "main"
    inputs: tuple[TensorSpec, ...]  # e.g. obs (1, obs_dim), rtg (1, 1), ...
    outputs: tuple[TensorSpec, ...]  # e.g. action (1, act_dim)
    state: tuple[TensorSpec, ...]  # carried between steps; zeros after reset
    # environment interface
    obs_dim: int
    act_dim: int
    obs_mean: tuple[float, ...]  # observation normalisation: (obs - mean) / std
    obs_std: tuple[float, ...]
    rtg_scale: float  # return-to-go is divided by this before it enters the model
    target_return: float  # default target return at reset, unscaled
    normalisation_in_graph: bool  # the library takes raw observations and the raw return-to-go
    env_id: str | None  # the environment the checkpoint was trained for (None: unknown)
    # how it was compiled
    precision: str  # fp32, fp16, int8
    target: dict[str, Any]  # the full target descriptor (ssmc.targets.Target.to_dict())
    library: str  # file name of the compiled library
    params: str | None  # file name of the parameters, None when embedded in the library
    executor: str  # "static" (native step, ssmc_static_abi.h) or "vm" (Relax VM executable)
    arena_bytes: int  # static: scratch bytes one step needs (ssmc_static_arena_bytes()); vm: 0
    # sizes and costs
    param_count: int
    macs_per_step: int
    state_bytes: int  # sum of the state tensors' bytes
    # integrity and provenance
    files: dict[str, FileEntry]  # every file but manifest.json: sha256 and size
    versions: dict[str, str | None]  # at least ssmc, tvm, torch (None when not installed)
    created: str  # ISO 8601 UTC
    reference: str | None  # file name of the reference pairs (reference.safetensors) or None
    reference_scores: dict[str, Any] = field(default_factory=dict)  # e.g. PyTorch scores at compile time
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for fields not yet in the schema

    # -- conversion ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON types, keys in field order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("inputs", "outputs", "state"):
                v = [t.to_dict() for t in v]
            elif f.name == "files":
                v = {k: e.to_dict() for k, e in sorted(v.items())}
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def to_json(self) -> str:
        """``manifest.json`` text (indented, finite floats only, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        """Validate a manifest dict; the first problem raises ``ArtifactError`` naming the field."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"{where}: expected a JSON object")
        _check_version(d.get("format_version"), where)
        validate_manifest(dict(d), where)  # runtime/c/manifest.schema.json, then the rules between fields

        def specs(name: str) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in d[name])

        return cls(
            format_version=d["format_version"],
            model_kind=d["model_kind"],
            model_config=dict(d["model_config"]),
            semantics=d["semantics"],
            entry=d["entry"],
            inputs=specs("inputs"),
            outputs=specs("outputs"),
            state=specs("state"),
            obs_dim=d["obs_dim"],
            act_dim=d["act_dim"],
            obs_mean=tuple(float(x) for x in d["obs_mean"]),
            obs_std=tuple(float(x) for x in d["obs_std"]),
            rtg_scale=float(d["rtg_scale"]),
            target_return=float(d["target_return"]),
            normalisation_in_graph=d["normalisation_in_graph"],
            env_id=d["env_id"],
            precision=d["precision"],
            target=dict(d["target"]),
            library=d["library"],
            params=d["params"],
            executor=d["executor"],
            arena_bytes=d["arena_bytes"],
            param_count=d["param_count"],
            macs_per_step=d["macs_per_step"],
            state_bytes=d["state_bytes"],
            files={k: FileEntry(sha256=e["sha256"], bytes=e["bytes"]) for k, e in d["files"].items()},
            versions=dict(d["versions"]),
            created=d["created"],
            reference=d["reference"],
            reference_scores=dict(d.get("reference_scores", {})),
            extra=dict(d.get("extra", {})),
        )

    # -- conveniences -------------------------------------------------------------------------
    def target_descriptor(self) -> Target:
        """The embedded target descriptor as an ``ssmc.targets.Target``."""
        from ssmc.targets import Target

        return Target.from_dict(self.target, source="manifest target")

    @property
    def artifact_bytes(self) -> int:
        """Total bytes of the listed files (manifest.json excluded)."""
        return sum(e.bytes for e in self.files.values())


def _check_version(v: Any, where: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ArtifactError(f"{where}: no integer format_version: not an ssmc artifact manifest")
    if v > FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: artifact format version {v} is newer than this ssmc reads ({FORMAT_VERSION}); "
            "upgrade ssmc or recompile the model with this version"
        )
    if v < FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: artifact format version {v} is older than this ssmc reads ({FORMAT_VERSION}); "
            "recompile the model with this ssmc"
        )


def _check_file_name(name: str, where: str) -> None:
    """Artifact file names are relative POSIX paths without '..', hidden parts or backslashes."""
    p = PurePosixPath(name)
    if (
        not isinstance(name, str)
        or not name
        or name != str(p)
        or p.is_absolute()
        or "\\" in name
        or "\0" in name
        or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)
        or name == MANIFEST_NAME
    ):
        raise ArtifactError(f"{where}: invalid artifact file name {name!r}")


# -- hashing and versions -------------------------------------------------------------------

def _sha256_stream(f: IO[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        return _sha256_stream(f)[0]


def default_versions() -> dict[str, str | None]:
    """Installed versions of ssmc, TVM, tvm-ffi, torch and Python, without importing any of them."""
    import platform
    from importlib import metadata

    from ssmc import __version__

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "ssmc": __version__,
        "tvm": dist("apache-tvm"),
        "tvm_ffi": dist("apache-tvm-ffi"),
        "torch": dist("torch"),
        "python": platform.python_version(),
    }


# -- writing --------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_artifact(
    path: str | os.PathLike[str],
    manifest_fields: Mapping[str, Any],
    files: Mapping[str, bytes | str | os.PathLike[str]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write an artifact directory atomically and return its path.

    Args:
        path: the artifact directory to create (conventionally ``NAME.ssmc``).
        manifest_fields: the ``Manifest`` fields except ``format_version``, ``files``; ``created``
            and ``versions`` default to now and :func:`default_versions`, ``state_bytes`` to the
            sum of the state tensors' bytes, ``entry`` to ``"main"``. ``target`` may be an
            ``ssmc.targets.Target`` or its dict; tensor specs may be ``TensorSpec``, dicts or
            ``(name, shape, dtype)`` tuples.
        files: artifact file name (relative POSIX path) -> contents (bytes) or a file to copy.
        overwrite: replace an existing artifact at ``path`` (still atomically).

    The manifest is validated before anything is written, and a reference file named by
    ``reference`` is checked against the manifest's tensor specs.

    Raises:
        ArtifactError: invalid fields or file names, or ``path`` exists and not ``overwrite``.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise ArtifactError(f"{dest} already exists (pass overwrite=True / --force to replace it)")
    for reserved in ("format_version", "files"):
        if reserved in manifest_fields:
            raise ArtifactError(f"write_artifact: {reserved!r} is computed, do not pass it")
    for name in files:
        _check_file_name(name, "write_artifact")

    fields_in = dict(manifest_fields)
    target = fields_in.get("target")
    if target is not None and hasattr(target, "to_dict"):
        fields_in["target"] = target.to_dict()
    fields_in.setdefault("entry", "main")
    fields_in.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    fields_in.setdefault("versions", default_versions())
    fields_in.setdefault("reference_scores", {})
    fields_in.setdefault("extra", {})
    for key in ("inputs", "outputs", "state"):
        if key in fields_in and isinstance(fields_in[key], list | tuple):
            fields_in[key] = [TensorSpec.from_any(s, f"write_artifact: {key}").to_dict() for s in fields_in[key]]
    if "state_bytes" not in fields_in and isinstance(fields_in.get("state"), list):
        fields_in["state_bytes"] = sum(TensorSpec.from_any(s, "state").nbytes for s in fields_in["state"])
    for key in ("obs_mean", "obs_std"):
        if key in fields_in and isinstance(fields_in[key], np.ndarray):
            fields_in[key] = [float(x) for x in fields_in[key].reshape(-1)]

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        entries: dict[str, FileEntry] = {}
        for name, content in files.items():
            target_path = tmp / name
            target_path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes | bytearray | memoryview):
                with open(target_path, "wb") as f:
                    f.write(content)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                src = Path(content)
                if not src.is_file():
                    raise ArtifactError(f"write_artifact: {name}: source file {src} not found")
                shutil.copyfile(src, target_path)
            os.chmod(target_path, 0o644)
            with open(target_path, "rb") as f:
                digest, size = _sha256_stream(f)
            entries[name] = FileEntry(sha256=digest, bytes=size)

        manifest = Manifest.from_dict(
            {"format_version": FORMAT_VERSION, **fields_in, "files": {k: e.to_dict() for k, e in entries.items()}},
            where="write_artifact",
        )
        if manifest.reference is not None:
            check_reference(manifest, read_reference(tmp / manifest.reference))
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        _fsync_dir(tmp)

        if dest.exists():  # overwrite: move the old one aside, swap, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            old.rmdir()
            os.rename(dest, old)
            try:
                os.rename(tmp, dest)
            except BaseException:
                os.rename(old, dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# -- reading and verifying --------------------------------------------------------------------

class _Source:
    """The files of an artifact, from a directory or a tar, with the same interface."""

    label: str

    def names(self) -> dict[str, int]:  # relative name -> size
        raise NotImplementedError

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        raise NotImplementedError
        yield  # pragma: no cover


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def names(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for dn in dirnames:
                if (Path(dirpath) / dn).is_symlink():
                    rel = (Path(dirpath) / dn).relative_to(self.root).as_posix()
                    raise ArtifactError(f"artifact {self.label}: {rel}: a symbolic link, not a file")
            for fn in filenames:
                p = Path(dirpath) / fn
                rel = p.relative_to(self.root).as_posix()
                if p.is_symlink() or not p.is_file():
                    raise ArtifactError(f"artifact {self.label}: {rel}: not a regular file")
                out[rel] = p.stat().st_size
        return out

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        with open(self.root / name, "rb") as f:
            yield f


class _TarSource(_Source):
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self.tar = tarfile.open(path, "r:*")
            members = self.tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArtifactError(f"artifact {path}: not a readable tar archive ({e})") from e
        files: dict[str, tarfile.TarInfo] = {}
        for m in members:
            name = m.name[2:] if m.name.startswith("./") else m.name
            name = name.rstrip("/")
            if not name or name == ".":
                continue
            if m.isdir():
                continue
            if not m.isfile():
                raise ArtifactError(f"artifact {path}: {name}: not a regular file (links and devices are refused)")
            if name in files:
                raise ArtifactError(f"artifact {path}: {name}: stored twice in the tar")
            files[name] = m
        # Either manifest.json at the top, or everything under one folder holding it.
        prefix = ""
        if MANIFEST_NAME not in files:
            tops = {n.split("/", 1)[0] for n in files}
            if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST_NAME}" in files:
                prefix = next(iter(tops)) + "/"
        self.members = {n[len(prefix):]: m for n, m in files.items() if n.startswith(prefix)}
        stray = [n for n in files if not n.startswith(prefix)]
        if stray:
            raise ArtifactError(f"artifact {path}: unexpected file {stray[0]} outside the artifact folder")

    def names(self) -> dict[str, int]:
        return {n: m.size for n, m in self.members.items()}

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        f = self.tar.extractfile(self.members[name])
        if f is None:  # pragma: no cover - only regular members are kept
            raise ArtifactError(f"artifact {self.label}: {name}: cannot be read")
        with f:
            yield f

    def close(self) -> None:
        self.tar.close()


def _read_manifest(src: _Source, present: Mapping[str, int], keys: Any = None) -> Manifest:
    where = f"artifact {src.label}: {MANIFEST_NAME}"
    if MANIFEST_NAME not in present:
        raise ArtifactError(f"artifact {src.label}: {MANIFEST_NAME} missing (not an ssmc artifact, or an incomplete one)")
    if present[MANIFEST_NAME] > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{where}: too large")
    with src.open(MANIFEST_NAME) as f:
        raw = f.read(_MAX_MANIFEST_BYTES + 1)
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{where}: too large")
    if keys is not None:  # the signature first: with keys configured nothing unsigned is parsed
        try:
            check_signature(read_signature(src.open, present), raw, keys)
        except ArtifactError as e:
            raise ArtifactError(f"artifact {src.label}: {e}") from None
    return Manifest.from_dict(parse_manifest_text(raw, where), where=where)


def _verify(src: _Source, keys: Any = None) -> Manifest:
    present = src.names()
    manifest = _read_manifest(src, present, keys)
    label = f"artifact {src.label}"
    for name in sorted(manifest.files):
        if name not in present:
            raise ArtifactError(f"{label}: {name}: missing (listed in {MANIFEST_NAME})")
    extra = sorted(set(present) - set(manifest.files) - set(UNLISTED))
    if extra:
        raise ArtifactError(f"{label}: {extra[0]}: unexpected file (not listed in {MANIFEST_NAME})")
    for name, entry in sorted(manifest.files.items()):
        size = present[name]
        if size != entry.bytes:
            what = "truncated" if size < entry.bytes else "grown"
            raise ArtifactError(f"{label}: {name}: {size} bytes, {MANIFEST_NAME} says {entry.bytes} ({what})")
        with src.open(name) as f:
            digest, n = _sha256_stream(f)
        if n != entry.bytes:  # the file changed while it was read
            raise ArtifactError(f"{label}: {name}: {n} bytes read, {MANIFEST_NAME} says {entry.bytes}")
        if digest != entry.sha256:
            raise ArtifactError(f"{label}: {name}: sha256 mismatch (the file was modified after compile)")
    return manifest


def _is_tar_path(p: Path) -> bool:
    return p.is_file() and (p.name.endswith((".tar", ".tar.gz", ".tgz")) or tarfile.is_tarfile(p))


def load_manifest(path: str | os.PathLike[str], trusted_keys: str | os.PathLike[str] | None = None, *,
                  check_signatures: bool = True) -> Manifest:
    """Load and verify an artifact (a directory or a ``.tar`` of one); return its manifest.

    Checks, in the C runtime's order: the signature when trusted keys are configured (``trusted_keys``, a
    key file or folder, else ``$SSMC_TRUSTED_KEYS``; ssmc/artifact/signing.py), the manifest's text (UTF-8,
    JSON nested at most 64 deep, finite numbers), its format version, the schema and the rules between
    fields (ssmc/artifact/schema.py), and every file: each listed file must exist with the recorded size
    and sha256, and no other file may be present. ``check_signatures=False`` skips the signature whatever
    is configured (``ssmc sign`` verifies what it is about to sign that way).

    Raises:
        ArtifactError: one line naming the artifact and the bad file or field.
    """
    keys = configured_keyring(trusted_keys) if check_signatures else None
    p = Path(path)
    if p.is_dir():
        return _verify(_DirSource(p), keys)
    if not p.exists():
        raise ArtifactError(f"no artifact at {p}")
    if not _is_tar_path(p):
        raise ArtifactError(f"{p}: not an artifact (expected a directory or a .tar of one)")
    src = _TarSource(p)
    try:
        return _verify(src, keys)
    finally:
        src.close()


def pack_tar(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Verify the artifact directory ``path`` and pack it into an uncompressed tar.

    The tar holds one folder named like the directory, members sorted, with fixed owners,
    modes and times (the manifest's ``created``), so packing is reproducible. ``out`` defaults
    to ``<path>.tar``; it is written atomically.
    """
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"pack_tar: {root} is not an artifact directory")
    manifest = load_manifest(root, check_signatures=False)
    dest = Path(out) if out is not None else root.with_name(root.name + ".tar")
    mtime = int(datetime.fromisoformat(manifest.created).timestamp())
    names = sorted(manifest.files) + [MANIFEST_NAME] + ([SIGNATURE_NAME] if (root / SIGNATURE_NAME).is_file() else [])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            def add(name: str, data: IO[bytes] | None, size: int, is_dir: bool = False) -> None:
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
                if is_dir:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                else:
                    info.size, info.mode = size, 0o644
                tar.addfile(info, data)

            add(root.name, None, 0, is_dir=True)
            for name in names:
                with open(root / name, "rb") as f:
                    add(f"{root.name}/{name}", f, (root / name).stat().st_size)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return dest


def unpack_tar(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Verify a packed artifact and extract it into the new directory ``dest``; return ``dest``.

    Only the verified regular files are written (no links, no paths outside ``dest``), into a
    temporary directory renamed into place, and the result is verified again.
    """
    src_path, out = Path(path), Path(dest)
    if out.exists():
        raise ArtifactError(f"unpack_tar: {out} already exists")
    if not src_path.is_file():
        raise ArtifactError(f"no artifact at {src_path}")
    src = _TarSource(src_path)
    try:
        manifest = _verify(src, configured_keyring())
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            for name in [*sorted(manifest.files), *(n for n in UNLISTED if n in src.members)]:
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with src.open(name) as f, open(target, "wb") as g:
                    shutil.copyfileobj(f, g, _CHUNK)
            os.chmod(tmp, 0o755)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        src.close()
    load_manifest(out)
    return out


# -- reference pairs ----------------------------------------------------------------------------

_GROUPS = ("in", "state_in", "out", "state_out")
_GROUP_ATTR = {"in": "inputs", "state_in": "state_in", "out": "outputs", "state_out": "state_out"}


@dataclass
class ReferenceStep:
    """One recorded step of the PyTorch model: (inputs, state_in) -> (outputs, state_out).

    Keys are the manifest's tensor names (``inputs``, ``state``, ``outputs``).
    """

    inputs: dict[str, np.ndarray]
    state_in: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    state_out: dict[str, np.ndarray]

    def groups(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        """``(group key, tensors)`` pairs in file order."""
        return [(g, getattr(self, _GROUP_ATTR[g])) for g in _GROUPS]


def reference_bytes(steps: Sequence[ReferenceStep], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise reference steps as safetensors.

    Keys are ``step{i}.{group}.{name}`` with group one of ``in``, ``state_in``, ``out``,
    ``state_out`` (e.g. ``step0.in.obs``, ``step0.out.action``, ``step3.state_out.layer0.ssm``).
    ``metadata`` (strings only) is stored alongside, with ``format=ssmc-reference`` and the step
    count added.
    """
    from safetensors.numpy import save

    tensors: dict[str, np.ndarray] = {}
    for i, step in enumerate(steps):
        for group, arrays in step.groups():
            for name, arr in arrays.items():
                if not isinstance(name, str) or not name:
                    raise ArtifactError(f"reference step {i}: invalid tensor name {name!r}")
                tensors[f"step{i}.{group}.{name}"] = np.ascontiguousarray(arr)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"format": "ssmc-reference", "version": "1", "steps": str(len(steps))})
    return save(tensors, metadata=meta)


def write_reference(
    path: str | os.PathLike[str], steps: Sequence[ReferenceStep], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write reference steps to ``path`` (see :func:`reference_bytes`); return the path."""
    p = Path(path)
    p.write_bytes(reference_bytes(steps, metadata))
    return p


def _safetensors_metadata(data: bytes, where: str) -> dict[str, str]:
    if len(data) < 8:
        raise ArtifactError(f"{where}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ArtifactError(f"{where}: not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{where}: not a safetensors file ({e})") from e
    meta = (header.get("__metadata__") or {}) if isinstance(header, dict) else {}
    return dict(meta)


def read_reference(
    src: str | os.PathLike[str] | bytes, manifest: Manifest | None = None
) -> list[ReferenceStep]:
    """Read reference steps written by :func:`reference_bytes`; check them against ``manifest`` if given."""
    from safetensors.numpy import load

    if isinstance(src, bytes | bytearray):
        data, where = bytes(src), "reference"
    else:
        data, where = Path(src).read_bytes(), str(src)
    meta = _safetensors_metadata(data, where)
    if meta.get("format") != "ssmc-reference":
        raise ArtifactError(f"{where}: not an ssmc reference file (metadata format={meta.get('format')!r})")
    try:
        tensors = load(data)
        n = int(meta["steps"])
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ArtifactError(f"{where}: cannot read ({e})") from e
    steps = [ReferenceStep({}, {}, {}, {}) for _ in range(n)]
    for key, arr in tensors.items():
        head, _, rest = key.partition(".")
        group, _, name = rest.partition(".")
        if not head.startswith("step") or not head[4:].isdigit() or group not in _GROUPS or not name:
            raise ArtifactError(f"{where}: unexpected key {key!r}")
        i = int(head[4:])
        if i >= n:
            raise ArtifactError(f"{where}: key {key!r} beyond the {n} recorded steps")
        getattr(steps[i], _GROUP_ATTR[group])[name] = arr
    if manifest is not None:
        check_reference(manifest, steps, where)
    return steps


def check_reference(manifest: Manifest, steps: Sequence[ReferenceStep], where: str = "reference") -> None:
    """Check that every step holds exactly the manifest's tensors with their shapes and dtypes."""
    if not steps:
        raise ArtifactError(f"{where}: no reference steps")
    expect = {"in": manifest.inputs, "state_in": manifest.state, "out": manifest.outputs, "state_out": manifest.state}
    for i, step in enumerate(steps):
        for group, arrays in step.groups():
            specs = {s.name: s for s in expect[group]}
            if set(arrays) != set(specs):
                missing, unknown = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
                raise ArtifactError(
                    f"{where}: step {i} {group}: tensors differ from the manifest "
                    f"(missing {missing or 'none'}, unexpected {unknown or 'none'})"
                )
            for name, arr in arrays.items():
                s = specs[name]
                if tuple(arr.shape) != s.shape or str(arr.dtype) != s.dtype:
                    raise ArtifactError(
                        f"{where}: step{i}.{group}.{name}: {arr.dtype}{list(arr.shape)}, "
                        f"manifest says {s.dtype}{list(s.shape)}"
                    )

