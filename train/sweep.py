"""Model × dataset × seed sweeps on Ray: one training + evaluation run per Ray task, resumable from disk.

A sweep config (JSON, ``ssmc/configs/sweeps/*.json`` or a path) names datasets, models and seeds:

    {"name": "...", "datasets": {"hopper-medium-replay": {"path": "data/...hdf5", "env": "Hopper-v5",
                                                          "quality": "medium-replay"}},
     "models": {"dt": "dt-corl", "dema": {"hopper-medium-replay": "dema-hopper-medium-replay"}},
     "seeds": [0, 1, 2], "train": {"steps": 300}, "eval": {"episodes": 5, "every": 150}}

A model maps to a named config (``ssmc/configs/NAME.json``: the paper's model settings, training settings
and protocol), one per dataset or one for all; ``train`` and ``eval`` override the named configs' values
(the budget). A dataset whose file is missing is collected first when it names env and quality.

Every run lives in ``OUT/<model>/<dataset>/seed<k>/``: the checkpoint and trainer state (ssmc.train.trainer),
``evals.jsonl`` (one line per evaluation) and, when finished, ``result.json``. All state is in these
folders: a sweep started again (another session, another machine sharing the folder) skips finished runs,
resumes a half-trained one from its last save and never repeats a recorded evaluation.

Scores follow CORL's convention: *last* = the final evaluation, *best* = the best evaluation during
training, each averaged over seeds with a 95 % Student-t confidence interval.
"""

from __future__ import annotations

import json
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from ssmc.errors import ConfigError
from ssmc.fsutil import atomic_file

RESULT = "result.json"
EVALS = "evals.jsonl"
TRAIN_KEYS = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "rtg_scale")


def _configs():
    """ssmc/configs/ (package data): the named configs, the sweeps and the papers' published scores."""
    return resources.files("ssmc").joinpath("configs")


# -- configs ----------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data


def named_configs() -> list[str]:
    """The named model configs shipped in ssmc/configs/ (the papers' settings)."""
    root = _configs()
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json") and p.name != "published.json")


def load_named(name_or_path: str | dict[str, Any]) -> dict[str, Any]:
    """A named model config by name (ssmc/configs/NAME.json), a path to one, or an inline dict."""
    if isinstance(name_or_path, dict):
        cfg = dict(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.suffix:
            path = Path(str(_configs() / f"{name_or_path}.json"))
            if not path.exists():
                raise ConfigError(f"unknown named config {name_or_path!r}; known: {', '.join(named_configs())}")
        cfg = _read_json(path, "model config")
    from ssmc.train.models import MODELS

    if cfg.get("model") not in MODELS:
        raise ConfigError(f"config {cfg.get('name', name_or_path)!r}: unknown model {cfg.get('model')!r}; "
                          f"known: {', '.join(MODELS)}")
    cfg.setdefault("name", cfg["model"])
    cfg.setdefault("model_config", {})
    cfg.setdefault("train", {})
    cfg.setdefault("eval", {})
    bad = set(cfg["train"]) - set(TRAIN_KEYS)
    if bad:
        raise ConfigError(f"config {cfg['name']!r}: unknown train settings {sorted(bad)}; known: {', '.join(TRAIN_KEYS)}")
    return cfg


def published() -> dict[str, Any]:
    return json.loads((_configs() / "published.json").read_text())


def load_sweep(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A sweep config by path or by name (ssmc/configs/sweeps/NAME.json), checked."""
    path = Path(name_or_path)
    if not path.exists() and not path.suffix:
        path = Path(str(_configs() / "sweeps" / f"{name_or_path}.json"))
    if not path.exists():
        raise ConfigError(f"no sweep config {name_or_path!r} (a path, or a name in ssmc/configs/sweeps/)")
    cfg = _read_json(path, "sweep config")
    for key in ("datasets", "models", "seeds"):
        if not cfg.get(key):
            raise ConfigError(f"sweep config {path}: {key!r} is missing or empty")
    if not all(isinstance(s, int) for s in cfg["seeds"]):
        raise ConfigError(f"sweep config {path}: seeds must be integers")
    cfg.setdefault("name", path.stem)
    cfg.setdefault("train", {})
    cfg.setdefault("eval", {})
    cfg["_path"] = str(path)
    return cfg


def expand(sweep: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The grid, one self-contained run spec per (model, dataset, seed), in a stable order."""
    runs = []
    for model_key, which in sweep["models"].items():
        for ds_key, ds in sweep["datasets"].items():
            name = which.get(ds_key, which.get("*")) if isinstance(which, dict) and "model" not in which else which
            if name is None:
                raise ConfigError(f"sweep: model {model_key!r} names no config for dataset {ds_key!r}")
            named = load_named(name)
            train = {**named["train"], **sweep["train"]}
            ev = {"episodes": 10, "every": None, "target_return": None, **named["eval"], **sweep["eval"]}
            steps = int(train.get("steps", 10_000))
            every = int(ev["every"] or steps)
            if steps <= 0 or every <= 0:
                raise ConfigError("sweep: train.steps and eval.every must be positive")
            for seed in sweep["seeds"]:
                runs.append({
                    "key": f"{model_key}/{ds_key}/seed{seed}", "model_key": model_key, "dataset": ds_key,
                    "seed": int(seed), "config": named["name"], "model": named["model"],
                    "model_config": named["model_config"], "train": train, "steps": steps,
                    "eval_steps": sorted({*range(every, steps + 1, every), steps}),
                    "episodes": int(ev["episodes"]), "target_return": ev["target_return"],
                    "dataset_path": str(Path(ds["path"]).absolute()), "env": ds.get("env"),
                    "out": str((out / model_key / ds_key / f"seed{seed}").absolute()),
                })
    return runs


def ensure_datasets(sweep: dict[str, Any], progress: bool = True) -> None:
    """Collect every dataset file that is missing and names env + quality; else a clear error."""
    for key, ds in sweep["datasets"].items():
        if Path(ds["path"]).exists():
            continue
        if not (ds.get("env") and ds.get("quality")):
            raise ConfigError(f"dataset {key!r}: {ds['path']} does not exist and names no env/quality to collect it")
        from ssmc.train.collect import collect

        collect(ds["env"], ds["quality"], out=ds["path"], size=ds.get("size"), seed=int(ds.get("seed", 0)),
                progress=progress)


# -- one run (a Ray task) -------------------------------------------------------------------------------------
def _evals(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / EVALS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(spec: dict[str, Any]) -> bool:
    """A run is finished when its result.json exists for at least the steps the spec asks. A sweep whose
    train.steps was raised continues each finished run from its last checkpoint (with the warm-up given
    explicitly the learning-rate schedule is the same as a run started at the larger count)."""
    path = Path(spec["out"]) / RESULT
    if not path.exists():
        return False
    try:
        return int(json.loads(path.read_text()).get("steps", 0)) >= spec["steps"]
    except (OSError, ValueError):
        return False


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one run; picks up where the run folder left off. Returns its result record."""
    out = Path(spec["out"])
    if finished(spec):
        return json.loads((out / RESULT).read_text())
    import torch

    from ssmc.train.dataset import load_dataset
    from ssmc.train.rollout import evaluate_checkpoint
    from ssmc.train.trainer import TrainConfig, Trainer

    if spec.get("nice") is not None:  # an absolute level: Ray starts its workers at niceness 15 (its
        try:                          # worker_niceness) and reuses them, so os.nice() would add up
            os.setpriority(os.PRIO_PROCESS, 0, int(spec["nice"]))
        except OSError:  # lowering niceness needs privileges: keep what Ray gave
            pass
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "run.json") as tmp:
        tmp.write_text(json.dumps(spec, indent=1))
    data = load_dataset(spec["dataset_path"])
    t = spec["train"]
    cfg = TrainConfig(steps=spec["steps"], seed=spec["seed"], threads=1, save_every=spec["eval_steps"][0],
                      log_every=max(1, min(50, spec["steps"] // 10)),
                      **{k: t[k] for k in TRAIN_KEYS if k in t and k != "steps"})
    trainer = Trainer(spec["model"], data, out, cfg, overrides=spec["model_config"],
                      dataset_path=spec["dataset_path"])
    if (out / "trainer_state.json").exists():
        trainer.resume()
    done = {e["step"] for e in _evals(out)}
    eval_seed = 10_000 + 1_000 * spec["seed"]  # episode i: eval_seed + i, never a collection seed
    for point in spec["eval_steps"]:
        if point in done:
            continue
        if trainer.step < point:
            trainer.fit(progress=False, until=point)
        t0 = time.perf_counter()
        res = evaluate_checkpoint(str(out), spec.get("env"), spec["episodes"], seed=eval_seed,
                                  target_return=spec["target_return"], progress=False)
        row = {"step": point, "normalized_mean": res["normalized_mean"], "normalized_std": res["normalized_std"],
               "return_mean": res["return_mean"], "episodes": res["episodes"], "target_return": res["target_return"],
               "eval_wall_s": round(time.perf_counter() - t0, 1), "train_wall_s": round(trainer.wall, 1)}
        with open(out / EVALS, "a") as f:
            f.write(json.dumps(row) + "\n")
    evals = sorted(_evals(out), key=lambda e: e["step"])
    result = {
        "key": spec["key"], "model_key": spec["model_key"], "dataset": spec["dataset"], "seed": spec["seed"],
        "config": spec["config"], "model": spec["model"], "params": trainer.model.num_params(),
        "macs_per_step": trainer.model.macs_per_step(), "steps": spec["steps"],
        "last": evals[-1]["normalized_mean"], "best": max(e["normalized_mean"] for e in evals),
        "evals": evals, "train_wall_s": round(trainer.wall, 1),
        "eval_wall_s": round(sum(e["eval_wall_s"] for e in evals), 1),
    }
    with atomic_file(out / RESULT) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


# -- the sweep -----------------------------------------------------------------------------------------------
def run_sweep(config: str | os.PathLike, out: str | os.PathLike | None = None, address: str | None = None,
              parallel: int | None = None, nice: int | None = None, progress: bool = True,
              doc: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run (or finish) a sweep and write ``OUT/sweep.json`` and ``OUT/sweep.md`` (and, with ``doc``, the
    table into that Markdown file's marked block and the summary beside it as .json); returns the summary."""
    sweep = load_sweep(config)
    out = Path(out or Path("runs") / "sweeps" / sweep["name"])
    runs = expand(sweep, out)
    ensure_datasets(sweep, progress)
    # seed-major: every cell gets its first seed before any gets its second, so a sweep cut short (a
    # session's end) leaves whole seeds of the grid rather than whole models
    todo = sorted((r for r in runs if not finished(r)),
                  key=lambda r: (sweep["seeds"].index(r["seed"]), list(sweep["datasets"]).index(r["dataset"])))
    t0 = time.perf_counter()
    if todo:
        _run_on_ray(todo, address, parallel, nice, progress)
    summary = summarize(sweep, runs)
    summary["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
    summary["ran_this_invocation"] = len(todo)
    write_outputs(summary, out, doc)
    return summary


def _run_on_ray(todo: list[dict[str, Any]], address: str | None, parallel: int | None, nice: int | None,
                progress: bool) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("ssmc sweep needs Ray: pip install 'ssmc[sweep]'") from None
    from tqdm import tqdm

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = parallel or os.cpu_count() or 1
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise ConfigError(f"cannot join the Ray cluster at {address}: {e}") from None
    task = ray.remote(num_cpus=1, max_retries=1)(run_one)
    refs = {task.remote({**r, "nice": nice}): r["key"] for r in todo}
    failures = []
    try:
        with tqdm(total=len(refs), desc="sweep", unit="run", disable=not progress) as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    res = ray.get(ready[0])
                    bar.set_postfix_str(f"{res['key']}: last {res['last']:.1f}")
                except ray.exceptions.RayError as e:
                    failures.append(f"{refs[ready[0]]}: {str(e).strip().splitlines()[-1][:300]}")
                bar.update(1)
    finally:
        if started_here:
            ray.shutdown()
    if failures:
        raise ConfigError(f"{len(failures)} run(s) failed (their folders keep what was done; run again to "
                          "resume): " + "; ".join(failures))


# -- statistics and tables -------------------------------------------------------------------------------------
def t_quantile(p: float, df: int) -> float:
    """Student t quantile by bisection on its CDF (the regularised incomplete beta, by continued fraction);
    scipy is not a dependency."""
    def cdf(t: float) -> float:
        x = df / (df + t * t)
        tail = 0.5 * _betainc(df / 2.0, 0.5, x)
        return 1.0 - tail if t > 0 else tail

    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (Numerical Recipes' continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + num / (c if abs(c) > 1e-300 else 1e-300)
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and the half-width of its Student-t confidence interval (None with fewer than 2 values)."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return {"mean": mean, "ci": None, "n": n, "values": list(values)}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci": half, "sd": sd, "n": n, "values": list(values)}


def summarize(sweep: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Group finished runs by (model, dataset): last/best mean ± 95 % CI over seeds, wall times."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    missing = []
    for r in runs:
        path = Path(r["out"]) / RESULT
        if finished(r):
            cells.setdefault((r["model_key"], r["dataset"]), []).append(json.loads(path.read_text()))
        else:
            missing.append(r["key"])
    rows = []
    for (model_key, dataset), res in cells.items():
        res.sort(key=lambda x: x["seed"])
        rows.append({
            "model": model_key, "dataset": dataset, "config": res[0]["config"], "params": res[0]["params"],
            "macs_per_step": res[0]["macs_per_step"], "steps": res[0]["steps"], "seeds": [x["seed"] for x in res],
            "last": mean_ci([x["last"] for x in res]), "best": mean_ci([x["best"] for x in res]),
            "train_wall_s_mean": round(sum(x["train_wall_s"] for x in res) / len(res), 1),
            "eval_wall_s_mean": round(sum(x["eval_wall_s"] for x in res) / len(res), 1),
            "train_wall_s_total": round(sum(x["train_wall_s"] for x in res), 1),
        })
    return {"sweep": sweep["name"], "config": sweep.get("_path"), "description": sweep.get("description"),
            "budget": sweep.get("budget"), "seeds": sweep["seeds"], "datasets": sweep["datasets"],
            "train": sweep["train"], "eval": sweep["eval"], "rows": rows, "missing": missing,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def fmt_ci(stat: dict[str, Any]) -> str:
    if stat["ci"] is None:
        return f"{stat['mean']:.1f} (n={stat['n']})"
    return f"{stat['mean']:.1f} ± {stat['ci']:.1f}"


def _published(model_key: str, dataset: str, pub: dict[str, Any]) -> str:
    ds = pub.get("analogue", {}).get(dataset, dataset)
    hit = pub["scores"].get(model_key, {}).get(ds)
    if hit is None:
        return "n/a"
    return f"{hit['score']:.1f}" + ("" if ds == dataset else f" ({ds})")


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(summary: dict[str, Any]) -> str:
    pub = published()
    lines = [
        f"Sweep `{summary['sweep']}` ({summary['date']}): "
        f"{len(summary['rows'])} model × dataset cells, seeds {summary['seeds']}; scores are D4RL-normalised "
        "means ± 95 % CI (Student t) over seeds, **D4RL-like** (ssmc's own behaviour data, gymnasium v5), "
        "*last* = final evaluation, *best* = best evaluation during training (CORL's convention).",
        "",
        "| dataset | model | config | params | steps | seeds | last | best | published (paper) | train wall / run | eval wall / run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(summary["rows"], key=lambda r: (r["dataset"], r["model"])):
        lines.append(f"| {r['dataset']} | {r['model']} | {r['config']} | {r['params']:,} | {r['steps']:,} | "
                     f"{len(r['seeds'])} | {fmt_ci(r['last'])} | {fmt_ci(r['best'])} | {_published(r['model'], r['dataset'], pub)} | "
                     f"{_dur(r['train_wall_s_mean'])} | {_dur(r['eval_wall_s_mean'])} |")
    total = sum(r["train_wall_s_total"] for r in summary["rows"])
    evals = sum(r["eval_wall_s_mean"] * len(r["seeds"]) for r in summary["rows"])
    lines += ["", f"Wall time, all runs: {total / 3600:.2f} h training + {evals / 3600:.2f} h evaluation "
              "summed over the runs (one thread each; they ran in parallel, so the sweep took less)."]
    if summary.get("budget"):
        lines += ["", f"Budget: {summary['budget']}."]
    if summary["missing"]:
        lines += ["", f"Not finished yet ({len(summary['missing'])}): " + ", ".join(summary["missing"])]
    lines += ["", f"Published: {pub['note']} A stochastic-medium row is compared with the paper's medium score, "
              "its nearest analogue (D4RL's medium data came from a stochastic SAC policy)."]
    return "\n".join(lines) + "\n"


DOC_BEGIN, DOC_END = "<!-- ssmc sweep: begin (generated by `ssmc sweep --doc`) -->", "<!-- ssmc sweep: end -->"


def write_outputs(summary: dict[str, Any], out: Path, doc: str | os.PathLike | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if doc is not None:
        from ssmc.fsutil import replace_marked_block

        doc = Path(doc)
        replace_marked_block(doc, DOC_BEGIN, DOC_END, markdown(summary), default="# Results\n")
        with atomic_file(doc.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")
    with atomic_file(out / "sweep.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    with atomic_file(out / "sweep.md") as tmp:
        tmp.write_text(markdown(summary))
