"""Offline RL datasets: one in-memory container, D4RL-layout HDF5 on disk.

``OfflineData`` is the flat transition layout D4RL made standard: row i is the transition
(observations[i], actions[i], rewards[i], terminals[i], timeouts[i]); an episode ends at a
row whose terminal (the MDP ended) or timeout (the time limit cut it) flag is set. Every
reader in ssmc (D4RL HDF5, Minari, ssmc's own files) returns this container, and ssmc's
collector writes it back as D4RL-layout HDF5, so every reader is exercised by our own data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ssmc.errors import DatasetError
from ssmc.fsutil import atomic_file

# Format tag written into metadata/ of files ssmc collects; readers use it to recognise them.
SSMC_FORMAT = "ssmc-d4rl/1"


@dataclass
class OfflineData:
    """Flat transitions in D4RL layout.

    observations (N, obs_dim) float32, actions (N, act_dim) float32, rewards (N,) float32,
    terminals (N,) bool, timeouts (N,) bool; optional next_observations (N, obs_dim);
    infos maps a name to an (N, ...) array; metadata holds scalars/strings (env_id, quality, ...).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None = None
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "d4rl"  # "d4rl", "minari" or "ssmc": which reader produced it
    path: str | None = None  # where it was read from (a file, a Minari directory), if anywhere

    @property
    def env_id(self) -> str | None:
        v = self.metadata.get("env_id")
        return str(v) if v is not None else None

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return int(self.observations.shape[0])


def write_d4rl(path: str | os.PathLike, data: OfflineData, compression: str | None = "gzip") -> Path:
    """Write ``data`` as D4RL-layout HDF5, atomically: a temporary file, then a rename.

    Metadata values go to ``metadata/<key>`` datasets (D4RL's own convention); ssmc's format
    tag is added so readers know the file's origin.
    """
    import h5py

    path = Path(path)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        kw = {"compression": compression} if compression else {}
        f.create_dataset("observations", data=np.asarray(data.observations, np.float32), **kw)
        f.create_dataset("actions", data=np.asarray(data.actions, np.float32), **kw)
        f.create_dataset("rewards", data=np.asarray(data.rewards, np.float32), **kw)
        f.create_dataset("terminals", data=np.asarray(data.terminals, bool), **kw)
        f.create_dataset("timeouts", data=np.asarray(data.timeouts, bool), **kw)
        if data.next_observations is not None:
            f.create_dataset("next_observations", data=np.asarray(data.next_observations, np.float32), **kw)
        for k, v in data.infos.items():
            f.create_dataset(f"infos/{k}", data=np.asarray(v), **kw)
        meta = {"ssmc_format": SSMC_FORMAT, **data.metadata}
        for k, v in meta.items():
            f.create_dataset(f"metadata/{k}", data=v)
    return path


# --------------------------------------------------------------------------------------------
# Reading: D4RL-layout HDF5 (D4RL's files and ssmc's own) and Minari datasets.

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_PER_STEP_KEYS = ("rewards", "terminals", "timeouts")  # (N,) arrays
# A Minari dataset id: optional namespaces, a name and a version, e.g. mujoco/hopper/expert-v0.
_MINARI_ID = re.compile(r"[\w.\-]+(/[\w.\-]+)*-v\d+")


def load_dataset(path: str | os.PathLike) -> OfflineData:
    """Read PATH, whatever supported dataset it is, into a validated ``OfflineData``.

    PATH may be a D4RL-layout HDF5 file (D4RL's own, or one ssmc collected: source "ssmc"
    when it carries ssmc's format tag), a Minari dataset directory, or the id of a Minari
    dataset in the local Minari root (never downloaded). Every problem with the input,
    including unreadable or corrupt files, raises ``DatasetError`` with a one-line message
    that names the file and the problem.
    """
    p = Path(path)
    where = str(path)
    if p.is_dir():
        data = _read_minari_dir(p)
    elif p.is_file():
        data = _read_hdf5(p)
    elif p.exists():
        raise DatasetError(f"{where}: not a regular file or directory")
    elif _MINARI_ID.fullmatch(where) and not p.is_absolute():
        data = _read_minari_id(where)
    else:
        raise DatasetError(f"{where}: no such file or directory")
    validate(data, where)
    return _standard_dtypes(data)


def validate(data: OfflineData, where: str = "dataset") -> None:
    """Raise ``DatasetError`` unless ``data`` is a usable D4RL-layout dataset.

    Checks shapes (2-D observations/actions, 1-D rewards/flags), equal lengths, a non-empty
    dataset, 0/1 flags and finite observations, actions and rewards. ``where`` names the
    source in the message.
    """
    arrays = {k: np.asarray(getattr(data, k)) for k in REQUIRED_KEYS}
    if data.next_observations is not None:
        arrays["next_observations"] = np.asarray(data.next_observations)
    for k, a in arrays.items():
        want = 1 if k in _PER_STEP_KEYS else 2
        if a.ndim != want:
            layout = "(N,)" if want == 1 else "(N, dim)"
            raise DatasetError(f"{where}: {k} must be {want}-D {layout}, got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DatasetError(f"{where}: {k} has non-numeric dtype {a.dtype}")
    arrays.update({f"infos/{k}": np.asarray(v) for k, v in data.infos.items()})
    lengths = {k: (len(a) if a.ndim else 0) for k, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise DatasetError(f"{where}: mismatched lengths: {listed}")
    if lengths["observations"] == 0:
        raise DatasetError(f"{where}: empty dataset (no transitions)")
    obs_shape, nxt = arrays["observations"].shape, arrays.get("next_observations")
    if nxt is not None and nxt.shape != obs_shape:
        raise DatasetError(
            f"{where}: next_observations shape {nxt.shape} differs from observations {obs_shape}"
        )
    for k in ("terminals", "timeouts"):
        bad = np.flatnonzero((arrays[k] != 0) & (arrays[k] != 1))
        if bad.size:
            row, value = int(bad[0]), arrays[k][bad[0]].item()
            raise DatasetError(f"{where}: {k} must hold 0/1 flags, got {value!r} at row {row}")
    for k in ("observations", "actions", "rewards", "next_observations"):
        if k not in arrays:
            continue
        a = arrays[k].reshape(len(arrays[k]), -1)
        finite = np.isfinite(a).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            kind = "NaN" if np.isnan(a[row]).any() else "inf"
            n_bad = int((~finite).sum())
            raise DatasetError(f"{where}: {kind} in {k} at row {row} (first of {n_bad} bad rows)")


def _standard_dtypes(data: OfflineData) -> OfflineData:
    """The container's dtypes (float32 arrays, bool flags) from whatever the file stored."""
    f32 = np.float32
    nxt = None if data.next_observations is None else np.asarray(data.next_observations, f32)
    return replace(
        data,
        observations=np.asarray(data.observations, f32),
        actions=np.asarray(data.actions, f32),
        rewards=np.asarray(data.rewards, f32),
        terminals=np.asarray(data.terminals).astype(bool),
        timeouts=np.asarray(data.timeouts).astype(bool),
        next_observations=nxt,
    )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_hdf5(path: Path) -> OfflineData:
    """A D4RL-layout HDF5 file, arrays as stored (validation and dtypes come after)."""
    import h5py

    if not os.access(path, os.R_OK):
        raise DatasetError(f"{path}: permission denied")
    try:
        with h5py.File(path, "r") as f:
            return _read_d4rl_layout(f, path)
    except OSError as e:
        if not h5py.is_hdf5(path):
            raise DatasetError(f"{path}: not an HDF5 file") from None
        raise DatasetError(f"{path}: corrupt or truncated HDF5 file ({_one_line(e)})") from None


def _read_d4rl_layout(f: Any, path: Path) -> OfflineData:
    import h5py

    missing = [k for k in REQUIRED_KEYS if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        hint = ""
        if "episode_0" in f:
            hint = "; this looks like a Minari main_data.hdf5: pass the dataset directory instead"
        raise DatasetError(
            f"{path}: missing required dataset(s) {', '.join(missing)} "
            f"(D4RL layout needs {', '.join(REQUIRED_KEYS)}){hint}"
        )
    arrays = {k: f[k][()] for k in REQUIRED_KEYS}
    for k in _PER_STEP_KEYS:  # some D4RL-style exports store these as (N, 1)
        if arrays[k].ndim == 2 and arrays[k].shape[1] == 1:
            arrays[k] = arrays[k][:, 0]
    nxt = f["next_observations"][()] if isinstance(f.get("next_observations"), h5py.Dataset) else None

    infos: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {}

    def take_info(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            infos[name] = obj[()]

    def take_metadata(name: str, obj: Any) -> None:
        # Scalars only: D4RL also keeps the behaviour policy's weights under metadata/policy/.
        if isinstance(obj, h5py.Dataset) and obj.shape == ():
            metadata[name] = _decode_scalar(obj[()])

    if isinstance(f.get("infos"), h5py.Group):
        f["infos"].visititems(take_info)
    if isinstance(f.get("metadata"), h5py.Group):
        f["metadata"].visititems(take_metadata)
    return OfflineData(
        **arrays,
        next_observations=nxt,
        infos=infos,
        metadata=metadata,
        source="ssmc" if "ssmc_format" in metadata else "d4rl",
        path=str(path),
    )


def _decode_scalar(v: Any) -> Any:
    """An HDF5 scalar as a plain python str / float / int / bool."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return v


def _import_minari(where: str) -> Any:
    try:
        import minari
    except ImportError:
        raise DatasetError(
            f"{where}: reading Minari datasets needs the minari package (pip install 'ssmc[minari]')"
        ) from None
    return minari


def _read_minari_dir(path: Path) -> OfflineData:
    """A Minari dataset directory: the one holding data/, or data/ itself."""
    for data_dir in (path / "data", path):
        if (data_dir / "metadata.json").is_file():
            return _read_minari(data_dir, str(path))
    raise DatasetError(f"{path}: a directory but not a Minari dataset (no data/metadata.json)")


def _read_minari_id(dataset_id: str) -> OfflineData:
    """A dataset id resolved in the local Minari root (MINARI_DATASETS_PATH or ~/.minari/datasets)."""
    minari = _import_minari(dataset_id)
    root = Path(minari.storage.get_dataset_path(dataset_id))
    if not (root / "data" / "metadata.json").is_file():
        raise DatasetError(
            f"{dataset_id}: no such file, nor a local Minari dataset of that id "
            f"(looked in {root}; ssmc never downloads)"
        )
    return _read_minari(root / "data", dataset_id)


def _read_minari(data_dir: Path, where: str) -> OfflineData:
    """Flatten a Minari dataset's episodes into D4RL rows.

    Minari stores T+1 observations per T-step episode: rows take observations[:-1], and
    next_observations observations[1:]; terminations/truncations become terminals/timeouts.
    """
    minari = _import_minari(where)
    import gymnasium as gym

    cols: dict[str, list[np.ndarray]] = {k: [] for k in (*REQUIRED_KEYS, "next_observations")}
    try:
        ds = minari.MinariDataset(str(data_dir))
        for name, space in (("observation", ds.observation_space), ("action", ds.action_space)):
            if not isinstance(space, gym.spaces.Box):
                raise DatasetError(f"{where}: {name} space {space} is not a Box (the only kind supported)")
        for ep in ds.iterate_episodes():
            obs = np.asarray(ep.observations).reshape(len(ep.observations), -1)  # (T+1, obs_dim)
            cols["observations"].append(obs[:-1])
            cols["next_observations"].append(obs[1:])
            cols["actions"].append(np.asarray(ep.actions).reshape(len(ep.actions), -1))  # (T, act_dim)
            cols["rewards"].append(np.asarray(ep.rewards))
            cols["terminals"].append(np.asarray(ep.terminations))
            cols["timeouts"].append(np.asarray(ep.truncations))
        raw_meta = dict(ds.storage.metadata)
        env_spec = ds.env_spec
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:  # Minari asserts on bad metadata
        raise DatasetError(f"{where}: cannot read Minari dataset ({_one_line(e)})") from None
    if not cols["observations"]:
        raise DatasetError(f"{where}: empty dataset (no episodes)")

    metadata = {k: v for k, v in raw_meta.items() if isinstance(v, (str, int, float, bool))}
    if env_spec is not None:
        metadata["env_id"] = env_spec.id
    # Minari names datasets by quality (mujoco/hopper/expert-v0): keep it as D4RL files do.
    quality = re.sub(r"-v\d+$", "", str(raw_meta.get("dataset_id", "")).rsplit("/", 1)[-1])
    if quality:
        metadata.setdefault("quality", quality)
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    return OfflineData(**arrays, metadata=metadata, source="minari", path=str(data_dir.parent))


# --------------------------------------------------------------------------------------------
# Summaries for `ssmc data inspect`.


def summarize(data: OfflineData, env: str | None = None) -> dict[str, Any]:
    """A JSON-serialisable summary: sizes, per-episode return and length stats, normalised score.

    The environment comes from ``env`` (an id or alias; unknown names raise ``ConfigError``),
    else the dataset's metadata, else its file name. The normalised mean return uses the
    environment's reference returns and is None when the environment is unknown; MuJoCo scores
    are "D4RL-like" (D4RL's constants on our own setup), as ``normalized_note`` says.
    """
    from ssmc.envs import guess_env, resolve_env
    from ssmc.train.trajectory import episode_bounds, episode_returns

    if env:
        spec = resolve_env(env)
        env_id: str | None = spec.env_id
    else:
        name = Path(data.path).name if data.path else None
        spec = guess_env(data.env_id, data.metadata.get("dataset_id"), name)
        env_id = data.env_id or (spec.env_id if spec else None)

    starts, ends = episode_bounds(data)
    lengths = ends - starts
    returns = episode_returns(data)
    mean_return = float(returns.mean())
    if spec is None:
        normalized, note = None, "unknown environment: pass --env to normalise the score"
    elif spec.ref_source == "D4RL":
        normalized = spec.normalized(mean_return)
        note = (
            f"D4RL-like: D4RL constants on {spec.env_id} with this data; "
            "not comparable one-to-one with published D4RL tables"
        )
    else:
        normalized = spec.normalized(mean_return)
        note = f"reference returns of {spec.env_id}: {spec.ref_source}"
    quality = data.metadata.get("quality")
    return {
        "source": data.source,
        "path": data.path,
        "env_id": env_id,
        "quality": None if quality is None else str(quality),
        "transitions": len(data),
        "episodes": int(lengths.size),
        "terminals": int(np.count_nonzero(data.terminals)),
        "timeouts": int(np.count_nonzero(data.timeouts)),
        "obs_dim": data.obs_dim,
        "act_dim": data.act_dim,
        "return_min": float(returns.min()),
        "return_mean": mean_return,
        "return_max": float(returns.max()),
        "length_min": int(lengths.min()),
        "length_mean": float(lengths.mean()),
        "length_max": int(lengths.max()),
        "normalized_mean": normalized,
        "normalized_note": note,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """``summarize``'s dict as the aligned table ``ssmc data inspect`` prints."""
    s = summary
    norm = "n/a" if s["normalized_mean"] is None else f"{s['normalized_mean']:.1f}"
    ret = f"min {s['return_min']:.2f}  mean {s['return_mean']:.2f}  max {s['return_max']:.2f}"
    rows = [
        ("dataset", f"{s['path']} ({s['source']})"),
        ("environment", s["env_id"] or "unknown"),
        ("quality", s["quality"] or "-"),
        ("transitions", f"{s['transitions']:,} in {s['episodes']:,} episodes"),
        ("episode ends", f"{s['terminals']:,} terminated, {s['timeouts']:,} timed out"),
        ("obs / act dim", f"{s['obs_dim']} / {s['act_dim']}"),
        ("episode length", f"min {s['length_min']}  mean {s['length_mean']:.1f}  max {s['length_max']}"),
        ("episode return", ret),
        ("normalized mean", f"{norm}  ({s['normalized_note']})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
