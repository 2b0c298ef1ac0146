"""The bad-manifest corpus (tests/manifest_corpus/*.json): each case is a list of edits applied to a real
compiled manifest. tests/test_security.py runs every case through ssmc.artifact.load_manifest and through
libssmc.so's ssmc_open and requires the same verdict and message; the fuzzers (tools/fuzz) start from the
edited manifests as seeds.

    python tools/fuzz/corpus.py MANIFEST.json OUT_DIR      # write one seed file per case

A case: {"why": ..., "verdict": "refuse"|"accept", "message": "text both messages contain", "edits": [...]}
with edits applied in order, paths as lists of keys and indices:

    {"set": path, "value": v}          set (creating the last key)
    {"delete": path}                   remove a key or list item
    {"append": path, "value": v}       append to a list
    {"add": path, "value": n}          add n to a number
    {"copy": [from, to]}               copy a value
    {"upper": path}                    upper-case a string
    {"text": [old, new]}               replace text in the serialised manifest (once; must occur)
    {"bytes_hex": [old, new]}          the same on its bytes, hex-encoded (for bytes that are not UTF-8)
    {"deep": {"under": key, "levels": n, "open": "[" or "{"}}   n nested containers as a new member of key
    {"replace_all": text}              the whole manifest
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "manifest_corpus"


def cases() -> dict[str, dict[str, Any]]:
    """name -> case, in name order."""
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(CORPUS.glob("*.json"))}


def _walk(d: Any, path: list[Any]) -> tuple[Any, Any]:
    for key in path[:-1]:
        d = d[key]
    return d, path[-1]


def apply(manifest: bytes, edits: list[dict[str, Any]]) -> bytes:
    """The manifest's bytes with ``edits`` applied (structured edits re-serialise it with json.dumps)."""
    data: Any = None
    raw = manifest

    def load() -> Any:
        nonlocal data
        if data is None:
            data = json.loads(raw)
        return data

    def dump() -> bytes:
        return raw if data is None else (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()

    for e in edits:
        if "set" in e:
            parent, key = _walk(load(), e["set"])
            parent[key] = e["value"]
        elif "delete" in e:
            parent, key = _walk(load(), e["delete"])
            del parent[key]
        elif "append" in e:
            parent, key = _walk(load(), e["append"])
            parent[key].append(e["value"])
        elif "add" in e:
            parent, key = _walk(load(), e["add"])
            parent[key] += e["value"]
        elif "copy" in e:
            src_parent, src_key = _walk(load(), e["copy"][0])
            dst_parent, dst_key = _walk(load(), e["copy"][1])
            dst_parent[dst_key] = src_parent[src_key]
        elif "upper" in e:
            parent, key = _walk(load(), e["upper"])
            parent[key] = parent[key].upper()
        else:
            raw, data = dump(), None
            if "text" in e:
                old, new = (s.encode() for s in e["text"])
                if old not in raw:
                    raise ValueError(f"corpus edit: {e['text'][0]!r} not in the manifest")
                raw = raw.replace(old, new, 1)
            elif "bytes_hex" in e:
                old, new = (bytes.fromhex(s) for s in e["bytes_hex"])
                if old not in raw:
                    raise ValueError(f"corpus edit: bytes {e['bytes_hex'][0]} not in the manifest")
                raw = raw.replace(old, new, 1)
            elif "deep" in e:
                spec = e["deep"]
                anchor = f'"{spec["under"]}": {{'.encode()
                if anchor not in raw:
                    raise ValueError(f"corpus edit: no {spec['under']} object to nest under")
                n, opener = spec["levels"], spec["open"]
                inner = b"[" * n + b"]" * n if opener == "[" else b'{"a": ' * (n - 1) + b"{}" + b"}" * (n - 1)
                raw = raw.replace(anchor, anchor + b'"deep": ' + inner + b", ", 1)
            elif "replace_all" in e:
                raw = e["replace_all"].encode()
            else:
                raise ValueError(f"corpus edit: unknown operation {sorted(e)}")
    return dump()


def write_seeds(manifest: bytes, out: Path) -> list[Path]:
    """One file per case (the edited manifest's bytes), for a fuzzer's seed folder."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, case in cases().items():
        p = out / f"{name}.json"
        p.write_bytes(apply(manifest, case["edits"]))
        paths.append(p)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: corpus.py MANIFEST.json OUT_DIR")
    print(len(write_seeds(Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]))), "seeds")
