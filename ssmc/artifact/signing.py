"""Signed artifacts: Ed25519 over ``manifest.json``, which lists every other file's sha256 (docs/security.md).

    from ssmc.artifact.signing import generate_key, sign_artifact
    generate_key("keys/fleet")                     # keys/fleet.key (private, 0600) and keys/fleet.pub
    sign_artifact("artifacts/dmm.ssmc", "keys/fleet.key")   # writes artifacts/dmm.ssmc/manifest.sig
    SSMC_TRUSTED_KEYS=keys/fleet.pub ssmc run artifacts/dmm.ssmc   # refused unless signed by that key

Formats (read by this module and by libssmc.so, runtime/c/ssmc_runtime.cc, the same way):

- ``NAME.key``: the private key, PKCS#8 PEM (unencrypted; protect the file), as ``cryptography`` writes it.
- ``NAME.pub``: one line ``ssmc-ed25519 <public key, 64 hex digits> <comment>``. A trusted-keys file holds
  any number of such lines (``#`` comments and blank lines allowed); a trusted-keys folder holds ``*.pub``
  files.
- ``manifest.sig``: one line ``ssmc-signature-v1 ed25519 <key id> <signature, 128 hex digits>``, the
  signature of ``b"ssmc-manifest-v1\\n" + manifest.json's bytes``. The key id is the first 16 hex digits of
  the sha256 of the 32-byte public key.

Policy (the same in C): when trusted keys are configured (``trusted_keys=``, else the environment variable
``SSMC_TRUSTED_KEYS``), an artifact must carry a valid signature by one of them, checked before the manifest
is parsed; configured keys that cannot be read refuse every artifact. Without keys nothing is checked.
Ed25519 is ``cryptography``'s (OpenSSL); nothing here is hand-written crypto.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ssmc.errors import ArtifactError, ConfigError

__all__ = ["ENV_VAR", "SIGNATURE_NAME", "SIGNED_PREFIX", "Keyring", "TrustedKey", "check_signature",
           "configured_keyring", "generate_key", "key_id", "load_keyring", "load_private_key", "sign_artifact",
           "signature_line"]

ENV_VAR = "SSMC_TRUSTED_KEYS"
SIGNATURE_NAME = "manifest.sig"
SIGNED_PREFIX = b"ssmc-manifest-v1\n"
_SIG_TAG, _KEY_TAG = "ssmc-signature-v1", "ssmc-ed25519"
_MAX_SIG_BYTES, _MAX_KEY_FILE_BYTES, _MAX_KEYS = 4096, 1 << 20, 1024


def key_id(public_key: bytes) -> str:
    """The first 16 hex digits of sha256(public key): how messages and manifest.sig name a key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    public: bytes  # 32 bytes
    id: str


@dataclass(frozen=True)
class Keyring:
    """Trusted public keys and where they came from (``SSMC_TRUSTED_KEYS=...`` / ``trusted_keys=...``)."""

    source: str
    keys: tuple[TrustedKey, ...]

    def ids(self) -> str:
        head = ", ".join(k.id for k in self.keys[:4])
        return head + (f" and {len(self.keys) - 4} more" if len(self.keys) > 4 else "")


def _hex(s: str, n: int) -> bytes | None:
    if len(s) != 2 * n or any(c not in "0123456789abcdef" for c in s):
        return None
    return bytes.fromhex(s)


def _read_small(path: Path, label: str, limit: int) -> bytes:
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{label}: missing")
    if path.stat().st_size > limit:
        raise ArtifactError(f"{label}: too large")
    data = path.read_bytes()
    if len(data) > limit:
        raise ArtifactError(f"{label}: too large")
    return data


def _read_key_file(path: Path, keys: list[TrustedKey]) -> None:
    label = f"trusted key file {path}"
    text = _read_small(path, label, _MAX_KEY_FILE_BYTES)
    for n, line in enumerate(text.split(b"\n"), 1):
        words = line.replace(b"\t", b" ").replace(b"\r", b" ").split()
        if not words or words[0].startswith(b"#"):
            continue
        pub = _hex(words[1].decode("ascii", "replace"), 32) if len(words) >= 2 and words[0] == _KEY_TAG.encode() else None
        if pub is None:
            raise ArtifactError(f"{label} line {n}: not an ssmc-ed25519 public key (ssmc keygen writes them)")
        if len(keys) >= _MAX_KEYS:
            raise ArtifactError("trusted keys: more than 1024")
        keys.append(TrustedKey(pub, key_id(pub)))


def load_keyring(path: str | os.PathLike[str], source: str | None = None) -> Keyring:
    """The keys of a key file, or of every ``*.pub`` file directly in a folder (name order)."""
    p = Path(path)
    source = source or f"trusted_keys={p}"
    if not os.fspath(path) or not p.exists():
        raise ArtifactError(f"{source}: no such file or folder (trusted keys are configured: nothing opens without them)")
    keys: list[TrustedKey] = []
    if p.is_dir():
        for f in sorted(p.iterdir(), key=lambda f: f.name):
            if f.name.endswith(".pub") and len(f.name) > 4 and not f.name.startswith("."):
                _read_key_file(f, keys)
    else:
        _read_key_file(p, keys)
    if not keys:
        raise ArtifactError(f"{source}: holds no ssmc-ed25519 key (trusted keys are configured: nothing opens without one)")
    return Keyring(source, tuple(keys))


def configured_keyring(trusted_keys: str | os.PathLike[str] | None = None) -> Keyring | None:
    """``trusted_keys`` when given, else ``$SSMC_TRUSTED_KEYS`` when set and not empty, else None (no checks)."""
    if trusted_keys is not None:
        return load_keyring(trusted_keys)
    env = os.environ.get(ENV_VAR)
    if env:
        return load_keyring(env, f"{ENV_VAR}={env}")
    return None


def check_signature(sig: bytes | None, manifest: bytes, ring: Keyring) -> str:
    """Verify ``manifest.sig``'s bytes (None: absent) over the manifest's bytes; returns the key id."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if sig is None:
        raise ArtifactError(f"not signed (no manifest.sig), and trusted keys are configured ({ring.source}: "
                            f"{ring.ids()}); sign it with `ssmc sign ARTIFACT KEY`")
    line = sig[:-1] if sig.endswith(b"\n") else sig
    words = line.replace(b"\t", b" ").replace(b"\r", b" ").split()
    ok = (b"\n" not in line and len(words) == 4 and words[0] == _SIG_TAG.encode() and words[1] == b"ed25519"
          and _hex(words[2].decode("ascii", "replace"), 8) is not None)
    signature = _hex(words[3].decode("ascii", "replace"), 64) if ok else None
    if signature is None:
        raise ArtifactError("manifest.sig: not an ssmc signature (one line: ssmc-signature-v1 ed25519 KEY_ID SIGNATURE)")
    kid = words[2].decode()
    candidates = [k for k in ring.keys if k.id == kid]
    if not candidates:
        raise ArtifactError(f"manifest.sig: signed by key {kid}, which is not trusted ({ring.source}: {ring.ids()})")
    for k in candidates:
        try:
            Ed25519PublicKey.from_public_bytes(k.public).verify(signature, SIGNED_PREFIX + manifest)
            return kid
        except InvalidSignature:
            continue
    raise ArtifactError(f"manifest.sig: the signature of key {kid} does not match manifest.json "
                        "(the manifest was changed after it was signed)")


# -- keys and signing --------------------------------------------------------------------------------------

def generate_key(out: str | os.PathLike[str], comment: str | None = None, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``OUT.key`` (PKCS#8 PEM, mode 0600) and ``OUT.pub``; returns both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    base = Path(out)
    if base.suffix in (".key", ".pub"):
        base = base.with_suffix("")
    private, public = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for p in (private, public):
        if p.exists() and not force:
            raise ConfigError(f"{p} already exists (pass --force to replace it)")
    base.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    note = "".join(c if c.isprintable() and not c.isspace() else "_" for c in (comment or base.name))
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(private, 0o600)
    public.write_text(f"{_KEY_TAG} {raw.hex()} {note}\n", encoding="ascii")
    return private, public


def load_private_key(path: str | os.PathLike[str]):  # -> Ed25519PrivateKey
    """The private key of ``ssmc keygen`` (PKCS#8 PEM); one-line ConfigError when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"signing key {p} not found")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"signing key {p}: not an unencrypted PEM private key ({str(e).splitlines()[0]})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {p}: not an Ed25519 key")
    return key


def signature_line(key, manifest: bytes) -> bytes:
    """``manifest.sig``'s content for ``manifest``'s bytes, signed with ``key``."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{_SIG_TAG} ed25519 {key_id(raw)} {key.sign(SIGNED_PREFIX + manifest).hex()}\n".encode()


def sign_artifact(artifact: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> str:
    """Verify the artifact directory (every hash; any existing signature is replaced) and write its
    ``manifest.sig`` atomically; returns the signing key's id."""
    from ssmc.artifact import MANIFEST_NAME, load_manifest

    root = Path(artifact)
    if not root.is_dir():
        raise ArtifactError(f"{root}: sign an artifact directory (unpack a .tar first, pack it again after)")
    key = load_private_key(key_path)
    manifest = (root / MANIFEST_NAME).read_bytes() if (root / MANIFEST_NAME).is_file() else None
    load_manifest(root, trusted_keys=None, check_signatures=False)  # refuse to sign a broken artifact
    if manifest is None or manifest != (root / MANIFEST_NAME).read_bytes():
        raise ArtifactError(f"artifact {root}: manifest.json changed while it was signed")
    line = signature_line(key, manifest)
    fd, tmp = tempfile.mkstemp(prefix=f".{root.name}.manifest.sig.", dir=root.resolve().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / SIGNATURE_NAME)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return line.split()[2].decode()


def read_signature(src_open, present: dict[str, int]) -> bytes | None:
    """manifest.sig's bytes from an artifact source (None when absent); refused over 4 KiB."""
    if SIGNATURE_NAME not in present:
        return None
    if present[SIGNATURE_NAME] > _MAX_SIG_BYTES:
        raise ArtifactError("manifest.sig: too large")
    with src_open(SIGNATURE_NAME) as f:
        data = f.read(_MAX_SIG_BYTES + 1)
    if len(data) > _MAX_SIG_BYTES:
        raise ArtifactError("manifest.sig: too large")
    return data
