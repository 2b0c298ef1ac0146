"""Small file-system helpers every stage shares."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write to it. On success it replaces ``path`` (with the
    permissions the umask gives a new file); on any error it is removed and ``path`` is untouched, so
    readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_marked_block(path: str | os.PathLike, begin: str, end: str, block: str, default: str = "") -> None:
    """Atomically replace the text between the ``begin`` and ``end`` markers of ``path`` (markers kept) with
    ``block``, or append the marked block when the markers are absent (to ``default`` if ``path`` is missing).
    Generated tables in docs/ live between such markers so the prose around them survives regeneration."""
    path = Path(path)
    marked = f"{begin}\n{block}{end}"
    old = path.read_text(encoding="utf-8") if path.exists() else default
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + marked + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + marked + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(new, encoding="utf-8")
