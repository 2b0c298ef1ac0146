"""``ssmc models``, ``ssmc train`` and ``ssmc eval``: the model zoo, training and PyTorch rollouts."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
def models(as_json: bool) -> None:
    """List the model zoo with parameter counts and MACs per control step (hopper: obs 11, act 3)."""
    from ssmc.envs import HOPPER_DIMS
    from ssmc.train.models import MODELS, build_model

    rows = []
    for name in MODELS:
        m = build_model(name, obs_dim=HOPPER_DIMS[0], act_dim=HOPPER_DIMS[1])
        rows.append({"model": name, "semantics": m.semantics, "K": m.config.K, "params": m.num_params(),
                     "macs_per_step": m.macs_per_step(), "state_bytes": m.state_bytes()})
    if as_json:
        click.echo(json.dumps({"env": "Hopper-v5", "obs_dim": HOPPER_DIMS[0], "act_dim": HOPPER_DIMS[1],
                               "models": rows}))
        return
    click.echo(f"{'model':<10}{'semantics':<11}{'K':>5}{'params':>11}{'MACs/step':>13}{'state':>11}")
    for r in rows:
        click.echo(f"{r['model']:<10}{r['semantics']:<11}{r['K']:>5}{r['params']:>11,}{r['macs_per_step']:>13,}"
                   f"{r['state_bytes']:>10,}B")
    click.echo("hopper configuration (obs 11, act 3); MACs for one control step in the model's own semantics")


@click.command()
@click.option("--model", "model_name", required=True, help="Model kind: see `ssmc models`.")
@click.option("--dataset", required=True, help="D4RL-layout HDF5, Minari dataset dir/id, or an ssmc file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory.")
@click.option("--env", "env_id", default=None,
              help="Environment id (e.g. Hopper-v5), recorded in the checkpoint and the artifacts compiled from it "
                   "[default: what the dataset names; D4RL's HDF5 files name none].")
@click.option("--steps", type=int, default=10_000, show_default=True, help="Gradient steps.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--warmup", type=int, default=1_000, show_default=True, help="Linear warm-up steps (≤ 10% of --steps).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a model config field, e.g. --set n_layer=2 (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available (mamba-ssm's fused kernels are used if installed).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="CPU threads for torch and the fused scan (0: torch's default, the physical cores). "
                   "On 2 cores, 2 threads train a DeMa step 1.7x faster than 1; runs sharing the machine want 1.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last save.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(model_name: str, dataset: str, out: str, env_id: str | None, steps: int, batch_size: int, lr: float, warmup: int, seed: int,
          overrides: tuple[str, ...], device: str, threads: int, resume: bool, quiet: bool) -> None:
    """Train a model on an offline dataset; writes config.json + model.safetensors + train_log.csv to --out."""
    import torch

    from ssmc.envs import guess_env, resolve_env
    from ssmc.errors import ConfigError
    from ssmc.rollout import check_dims
    from ssmc.train.dataset import load_dataset
    from ssmc.train.models import MODELS
    from ssmc.train.trainer import TrainConfig, Trainer

    if model_name not in MODELS:
        raise ConfigError(f"unknown model {model_name!r}; known: {', '.join(MODELS)}")
    data = load_dataset(dataset)
    env = resolve_env(env_id) if env_id else guess_env(data.env_id, dataset)
    if env is not None:
        check_dims(env.env_id, (data.obs_dim, data.act_dim), f"dataset {dataset}")
    elif not data.env_id:
        click.echo(f"warning: {dataset} does not name its environment: pass --env ENV_ID (e.g. --env Hopper-v5) "
                   "so that eval, compile, run and verify know it", err=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, seed=seed, threads=threads)
    trainer = Trainer(model_name, data, out, cfg, overrides=_parse_overrides(overrides), device=device,
                      dataset_path=dataset, env_id=env.env_id if env is not None else None)
    if resume:
        trainer.resume()
        click.echo(f"resuming {out} at step {trainer.step}", err=True)
    result = trainer.fit(progress=not quiet)
    click.echo(f"trained {model_name} ({result['params']:,} params) for {result['steps']} steps in "
               f"{result['wall_s']} s on {device}; checkpoint: {result['out']}")


def _parse_overrides(items: tuple[str, ...]) -> dict:
    from ssmc.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path())
@click.option("--env", "env_id", default=None, help="Environment id [default: the one the checkpoint records].")
@click.option("--episodes", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Episode i uses seed+i.")
@click.option("--target-return", type=float, default=None, help="Return to condition on [default: checkpoint's].")
@click.option("--semantics", type=click.Choice(["window", "recurrent"]), default=None,
              help="Override the inference semantics (e.g. run a window-trained model recurrently to measure drift).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
def evaluate(checkpoint: str, env_id: str | None, episodes: int, seed: int, target_return: float | None,
             semantics: str | None, as_json: bool) -> None:
    """Roll out a checkpoint through its own step() in gymnasium; D4RL-normalised mean ± std."""
    import torch

    from ssmc.train.rollout import evaluate_checkpoint

    torch.set_num_threads(1)  # batch-1 steps: a second thread only adds synchronisation

    res = evaluate_checkpoint(checkpoint, env_id, episodes, seed, target_return, semantics, progress=True)
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"{res['model']} ({res['semantics']}) on {res['env_id']}, {res['episodes']} episodes, "
               f"seeds {res['seeds'][0]}..{res['seeds'][-1]}, target return {res['target_return']:.0f}")
    click.echo(f"  return      {res['return_mean']:.1f} ± {res['return_std']:.1f}")
    click.echo(f"  normalised  {res['normalized_mean']:.1f} ± {res['normalized_std']:.1f}  "
               f"(constants: {res['normalized_ref']}; D4RL-like on locally collected data)")


COMMANDS = [models, train, evaluate]
