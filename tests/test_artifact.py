"""The artifact contract: writing, packing, loading, and refusing anything tampered with."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssmc.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    REFERENCE_NAME,
    Manifest,
    ReferenceStep,
    TensorSpec,
    load_manifest,
    pack_tar,
    read_reference,
    reference_bytes,
    sha256_file,
    unpack_tar,
    write_artifact,
    write_reference,
)
from ssmc.errors import ArtifactError, SsmcError
from ssmc.targets import load_target

OBS, ACT = 3, 2
STATE = [TensorSpec("layer0.conv", (1, 16, 3), "float32"), TensorSpec("layer0.ssm", (1, 16, 4), "float32")]
INPUTS = [("obs", (1, OBS), "float32"), ("rtg", (1, 1), "float32")]
OUTPUTS = [{"name": "action", "shape": [1, ACT], "dtype": "float32"}]


def _steps(n: int = 3, seed: int = 0) -> list[ReferenceStep]:
    rng = np.random.default_rng(seed)
    state = {s.name: np.zeros(s.shape, np.float32) for s in STATE}
    steps = []
    for _ in range(n):
        new = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in state.items()}
        steps.append(ReferenceStep(
            inputs={"obs": rng.normal(size=(1, OBS)).astype(np.float32), "rtg": np.ones((1, 1), np.float32)},
            state_in=state,
            outputs={"action": rng.normal(size=(1, ACT)).astype(np.float32)},
            state_out=new,
        ))
        state = new
    return steps


def _fields(**over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "model_kind": "dema-rnn",
        "model_config": {"d_model": 16, "n_layer": 1, "d_state": 4, "d_conv": 3},
        "semantics": "recurrent",
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "state": STATE,
        "obs_dim": OBS,
        "act_dim": ACT,
        "obs_mean": np.zeros(OBS, np.float32),
        "obs_std": [1.0, 2.0, 0.5],
        "rtg_scale": 1000.0,
        "target_return": 3600.0,
        "normalisation_in_graph": True,
        "env_id": "Hopper-v5",
        "precision": "fp32",
        "target": load_target("host"),
        "library": "lib.so",
        "params": "params.bin",
        "executor": "static",
        "entry": "ssmc_static_step",
        "arena_bytes": 4096,
        "param_count": 1234,
        "macs_per_step": 5678,
        "reference": REFERENCE_NAME,
        "reference_scores": {"env": "Hopper-v5", "episodes": 2, "normalized_mean": 51.0},
    }
    f.update(over)
    return f


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    src = tmp_path / "params.src"
    src.write_bytes(bytes(range(256)) * 8)
    return write_artifact(
        tmp_path / "m.ssmc",
        _fields(),
        {"lib.so": b"\x7fELF" + b"\0" * 300, "params.bin": src, REFERENCE_NAME: reference_bytes(_steps())},
    )


def _one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, SsmcError)
    return msg


def test_round_trip(artifact: Path) -> None:
    m = load_manifest(artifact)
    assert m.format_version == FORMAT_VERSION
    assert sorted(p.name for p in artifact.iterdir()) == sorted([MANIFEST_NAME, "lib.so", "params.bin", REFERENCE_NAME])
    assert m.state_bytes == 4 * (16 * 3 + 16 * 4)
    assert m.inputs[0] == TensorSpec("obs", (1, OBS), "float32") and m.outputs[0].name == "action"
    assert m.obs_mean == (0.0, 0.0, 0.0) and m.obs_std == (1.0, 2.0, 0.5)
    assert m.files["params.bin"].bytes == 2048
    assert m.files["lib.so"].sha256 == sha256_file(artifact / "lib.so")
    assert m.target_descriptor() == load_target("host")
    assert m.versions["ssmc"] and "tvm" in m.versions and "torch" in m.versions
    assert Manifest.from_dict(json.loads((artifact / MANIFEST_NAME).read_text())) == m
    steps = read_reference(artifact / REFERENCE_NAME, manifest=m)
    for a, b in zip(steps, _steps(), strict=True):
        for (_, x), (_, y) in zip(a.groups(), b.groups(), strict=True):
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_no_temp_left_and_refuses_existing(artifact: Path) -> None:
    assert [p.name for p in artifact.parent.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ArtifactError, match="already exists"):
        write_artifact(artifact, _fields(), {})
    write_artifact(artifact, _fields(reference=None, params=None), {"lib.so": b"new"}, overwrite=True)
    assert load_manifest(artifact).files.keys() == {"lib.so"}
    assert [p.name for p in artifact.parent.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "bad.ssmc"
    with pytest.raises(ArtifactError, match="library"):  # the library is not among the files
        write_artifact(dest, _fields(reference=None), {"params.bin": b"x"})
    with pytest.raises(ArtifactError, match="step0"):  # reference does not match the specs
        bad = _steps()
        bad[0].outputs["action"] = np.zeros((1, ACT + 1), np.float32)
        write_artifact(dest, _fields(), {"lib.so": b"x", "params.bin": b"y", REFERENCE_NAME: reference_bytes(bad)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["lib.so", "params.bin", REFERENCE_NAME])
def test_flipped_byte_is_refused(artifact: Path, name: str) -> None:
    p = artifact / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as e:
        load_manifest(artifact)
    assert name in _one_line(e) and "sha256" in str(e.value)


def test_truncated_file_is_refused(artifact: Path) -> None:
    p = artifact / "params.bin"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(ArtifactError) as e:
        load_manifest(artifact)
    assert "params.bin" in _one_line(e) and "truncated" in str(e.value)


def test_missing_file_is_refused(artifact: Path) -> None:
    (artifact / "lib.so").unlink()
    with pytest.raises(ArtifactError) as e:
        load_manifest(artifact)
    assert "lib.so" in _one_line(e) and "missing" in str(e.value)


@pytest.mark.parametrize("extra", ["notes.txt", "sub/x.bin", ".hidden"])
def test_extra_file_is_refused(artifact: Path, extra: str) -> None:
    p = artifact / extra
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(b"surprise")
    with pytest.raises(ArtifactError) as e:
        load_manifest(artifact)
    assert extra in _one_line(e) and "unexpected" in str(e.value)


def test_symlink_is_refused(artifact: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.so"
    shutil.move(artifact / "lib.so", target)
    os.symlink(target, artifact / "lib.so")
    with pytest.raises(ArtifactError, match="lib.so"):
        load_manifest(artifact)


@pytest.mark.parametrize(("version", "word"), [(FORMAT_VERSION + 1, "newer"), (FORMAT_VERSION - 1, "older")])
def test_wrong_format_version(artifact: Path, version: int, word: str) -> None:
    p = artifact / MANIFEST_NAME
    d = json.loads(p.read_text())
    d["format_version"] = version
    p.write_text(json.dumps(d))
    with pytest.raises(ArtifactError) as e:
        load_manifest(artifact)
    assert word in _one_line(e) and str(version) in str(e.value)


def test_manifest_missing_or_garbled(artifact: Path) -> None:
    p = artifact / MANIFEST_NAME
    text = p.read_text()
    p.write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError) as e:
        load_manifest(artifact)
    assert "not valid JSON" in _one_line(e)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ArtifactError, match="not UTF-8"):
        load_manifest(artifact)
    p.write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        load_manifest(artifact)
    p.unlink()
    with pytest.raises(ArtifactError) as e:
        load_manifest(artifact)
    assert MANIFEST_NAME in _one_line(e) and "missing" in str(e.value)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("semantics", "sliding", "semantics"),
        ("precision", "fp16x", "precision"),
        ("state_bytes", 7, "state_bytes"),
        ("obs_std", [1.0, 0.0, 1.0], "obs_std"),
        ("obs_mean", [0.0], "obs_mean"),
        ("surprise", 1, "unknown field"),
        ("executor", "interpreter", "executor"),
        ("normalisation_in_graph", "yes", "normalisation_in_graph"),
        ("arena_bytes", -1, "arena_bytes"),
        ("env_id", 3, "env_id"),
        ("files", {"../lib.so": {"sha256": "0" * 64, "bytes": 1}}, "not a valid artifact file name"),
    ],
)
def test_bad_manifest_fields(artifact: Path, key: str, value: Any, match: str) -> None:
    p = artifact / MANIFEST_NAME
    d = json.loads(p.read_text())
    d[key] = value
    p.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match=match) as e:
        load_manifest(artifact)
    _one_line(e)


def test_missing_manifest_field(artifact: Path) -> None:
    p = artifact / MANIFEST_NAME
    d = json.loads(p.read_text())
    del d["param_count"]
    p.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="missing field.*param_count"):
        load_manifest(artifact)


def test_precision_the_target_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="fp16 is not supported by target 'aarch64'"):
        write_artifact(tmp_path / "a.ssmc", _fields(precision="fp16", target=load_target("aarch64"), reference=None,
                                                    params=None), {"lib.so": b"x"})


def test_tar_round_trip(artifact: Path, tmp_path: Path) -> None:
    tar = pack_tar(artifact)
    assert tar == artifact.with_name("m.ssmc.tar") and tar.is_file()
    assert load_manifest(tar) == load_manifest(artifact)
    # Packing is reproducible.
    again = pack_tar(artifact, tmp_path / "again.tar")
    assert again.read_bytes() == tar.read_bytes()
    out = unpack_tar(tar, tmp_path / "unpacked" / "m.ssmc")
    assert load_manifest(out) == load_manifest(artifact)
    assert (out / "params.bin").read_bytes() == (artifact / "params.bin").read_bytes()


def test_flat_tar_is_accepted(artifact: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as t:
        for p in sorted(artifact.iterdir()):
            t.add(p, arcname=p.name)
    assert load_manifest(flat).model_kind == "dema-rnn"


def _rewrite_tar(src: Path, dst: Path, edit) -> Path:
    with tarfile.open(src) as t_in, tarfile.open(dst, "w") as t_out:
        for m in t_in.getmembers():
            data = t_in.extractfile(m).read() if m.isfile() else None
            res = edit(m, data)
            if res is None:
                continue
            m, data = res
            if data is not None:
                m.size = len(data)
            t_out.addfile(m, None if data is None else io.BytesIO(data))
    return dst


def test_tampered_tar_is_refused(artifact: Path, tmp_path: Path) -> None:
    tar = pack_tar(artifact)

    def flip(m: tarfile.TarInfo, data: bytes | None):
        if m.name.endswith("lib.so"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        return m, data

    with pytest.raises(ArtifactError) as e:
        load_manifest(_rewrite_tar(tar, tmp_path / "flip.tar", flip))
    assert "lib.so" in _one_line(e) and "sha256" in str(e.value)

    def drop(m: tarfile.TarInfo, data: bytes | None):
        return None if m.name.endswith("params.bin") else (m, data)

    with pytest.raises(ArtifactError, match="params.bin: missing"):
        load_manifest(_rewrite_tar(tar, tmp_path / "drop.tar", drop))

    def link(m: tarfile.TarInfo, data: bytes | None):
        if m.name.endswith("lib.so"):
            m.type, m.linkname = tarfile.SYMTYPE, "/etc/passwd"
            return m, None
        return m, data

    with pytest.raises(ArtifactError, match="lib.so: not a regular file"):
        load_manifest(_rewrite_tar(tar, tmp_path / "link.tar", link))
    with pytest.raises(ArtifactError, match="lib.so"):
        unpack_tar(tmp_path / "flip.tar", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no artifact"):
        load_manifest(tmp_path / "absent.ssmc")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar" * 100)
    with pytest.raises(ArtifactError, match="not a readable tar"):
        load_manifest(junk)
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"\0" * 10)
    with pytest.raises(ArtifactError, match="not an artifact"):
        load_manifest(other)


def test_reference_file_helpers(tmp_path: Path) -> None:
    p = write_reference(tmp_path / REFERENCE_NAME, _steps(2), {"seed": "7"})
    steps = read_reference(p)
    assert len(steps) == 2 and steps[1].state_in["layer0.ssm"].shape == (1, 16, 4)
    from safetensors.numpy import load_file

    keys = set(load_file(str(p)))
    assert {"step0.in.obs", "step0.out.action", "step1.state_out.layer0.conv"} <= keys
    from safetensors.numpy import save

    (tmp_path / "plain.safetensors").write_bytes(save({"x": np.zeros(2, np.float32)}))
    with pytest.raises(ArtifactError, match="not an ssmc reference"):
        read_reference(tmp_path / "plain.safetensors")
    with pytest.raises(ArtifactError, match="not a safetensors"):
        read_reference(b"1234")


def test_bad_file_names_rejected(tmp_path: Path) -> None:
    for name in ["../x", "/abs", "a/../b", ".hidden", MANIFEST_NAME, "a\\b"]:
        with pytest.raises(ArtifactError, match="invalid artifact file name"):
            write_artifact(tmp_path / "x.ssmc", _fields(reference=None, params=None), {"lib.so": b"x", name: b"y"})
    assert list(tmp_path.iterdir()) == []
