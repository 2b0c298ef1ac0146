"""DM-H's "28x" as its paper defines it: online testing time over a long cross-episode context, DM-H
against a transformer that attends over the same context (issue 13, docs/long-context.md).

The paper times *online testing over a 4000-step cross-episode context*: an algorithm-distillation (AD)
transformer attending over the whole context took 173 min, DM-H 6.2 min (28x). This benchmark runs that
comparison on this machine, one thread, PyTorch eager for both (the same framework, so the ratio is the
architectures'), hopper sizes (obs 11, act 3), freshly initialised weights (time does not depend on them):

- ``dmh``: the zoo's DM-H at the named config ``dmh-d4rl`` (ssmc/configs/dmh-d4rl.json: Mamba 2 x 128,
  GPT 3 x 128, c = 20), stepped by its own ``step()``: one Mamba token on carried state plus three GPT
  tokens against at most 3c cached keys. The step counter restarts at every episode (``t = 0`` marks the
  boundary for its Mamba), the Mamba state carries across episodes: the cross-episode context.
- ``ad-cached``: a transformer of DM-H's GPT sizes (DT's GPT-2 block, ``hidden``, ``n_layer``,
  ``n_head`` of the config) over the whole context, three tokens (R, s, a) per step and a learned
  position per token, with a key/value cache: each step appends three tokens and attends to every
  earlier one. The least a transformer over that context must compute.
- ``ad-reencode``: the same transformer re-encoding the whole context every step (no cache), as a
  windowed AD implementation runs online. A full 4000-step run would take hours here, so its per-step
  time is measured at evenly spaced context lengths (``--samples``) and the run's total is the
  trapezoid sum over steps of that curve (its cost grows smoothly, with length squared); this row is
  marked as estimated in the report.

Before timing, the cached transformer's actions over a short run are checked against the re-encoding
forward of the same weights (relative error <= 1e-5): the cache computes the same function.

Steps are timed in blocks of ``--block`` steps, the models interleaved block by block, so a change of
machine load hits all alike. Reported: time per episode (``--episode`` steps; the paper's 4000 steps are
4 hopper episodes of 1000), the whole run, and the ratios against DM-H.

    python tools/bench/long_context.py                       # -> docs/long-context.{md,json,png}
    python tools/bench/long_context.py --steps 400 --episode 100 --no-docs --json /tmp/lc.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmc.train.models import build_model
from ssmc.train.models.dt import Block
from ssmc.train.sweep import load_named

ROOT = Path(__file__).resolve().parents[2]
HOPPER = (11, 3)
PAPER = {"ad_min": 173.0, "dmh_min": 6.2, "context": 4000}  # DM-H paper's online testing, 4000-step context


class ADTransformer(nn.Module):
    """A GPT over a whole cross-episode context, three tokens (R_t, s_t, a_{t-1}) per step, a learned
    position per token; the action is read at the s_t token. Sizes from a DM-H config's GPT half."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, n_layer: int, n_head: int, max_steps: int,
                 activation: str = "relu") -> None:
        super().__init__()
        from ssmc.train.models.dt import DTConfig

        cfg = DTConfig(obs_dim=obs_dim, act_dim=act_dim, hidden=hidden, n_layer=n_layer, n_head=n_head,
                       dropout=0.0, activation=activation)
        self.hidden, self.n_head, self.max_tokens = hidden, n_head, 3 * max_steps
        self.embed_return = nn.Linear(1, hidden)
        self.embed_state = nn.Linear(obs_dim, hidden)
        self.embed_action = nn.Linear(act_dim, hidden)
        self.embed_pos = nn.Embedding(self.max_tokens, hidden)
        self.embed_ln = nn.LayerNorm(hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, act_dim)

    def _tokens(self, rtg: torch.Tensor, obs: torch.Tensor, prev_action: torch.Tensor, first: int) -> torch.Tensor:
        """(B, T, ·) per-step inputs -> (B, 3T, h) embedded tokens at positions first .. first + 3T."""
        b, t = obs.shape[:2]
        x = torch.stack([self.embed_action(prev_action), self.embed_return(rtg), self.embed_state(obs)], 2)
        pos = torch.arange(first, first + 3 * t, device=obs.device)
        return self.embed_ln(x.reshape(b, 3 * t, self.hidden) + self.embed_pos(pos))

    def reencode(self, rtg: torch.Tensor, obs: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        """The whole context (B, T, ·) through the causal transformer -> the last step's action (B, act)."""
        x = self._tokens(rtg, obs, prev_action, 0)
        n = x.shape[1]
        allowed = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()[None, None]
        for block in self.blocks:
            x = block(x, allowed)
        return torch.tanh(self.head(self.ln_f(x[:, -1])))

    def init_cache(self, batch: int = 1) -> dict[str, object]:
        hs = self.hidden // self.n_head
        return {"n": 0, "kv": [(torch.zeros(batch, self.n_head, self.max_tokens, hs),
                                torch.zeros(batch, self.n_head, self.max_tokens, hs)) for _ in self.blocks]}

    def step(self, cache: dict, rtg: torch.Tensor, obs: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        """One step's three tokens against every cached one (the cache is written in place)."""
        n = cache["n"]
        x = self._tokens(rtg[:, None], obs[:, None], prev_action[:, None], n)  # (B, 3, h)
        b, h, nh = x.shape[0], self.hidden, self.n_head
        allowed = torch.ones(3, n + 3, dtype=torch.bool).tril(n)[None, None]  # causal among the new three
        for block, (k_cache, v_cache) in zip(self.blocks, cache["kv"], strict=True):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(h, dim=2)
            q, k, v = (y.view(b, 3, nh, h // nh).transpose(1, 2) for y in (q, k, v))
            k_cache[:, :, n:n + 3], v_cache[:, :, n:n + 3] = k, v
            keys, values = k_cache[:, :, :n + 3], v_cache[:, :, :n + 3]
            att = (q @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
            y = (F.softmax(att.masked_fill(~allowed, float("-inf")), dim=-1) @ values).transpose(1, 2).reshape(b, 3, h)
            x = x + block.attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
        cache["n"] = n + 3
        return torch.tanh(self.head(self.ln_f(x[:, 2])))


def build(config: str, steps: int, seed: int = 0) -> tuple[nn.Module, ADTransformer]:
    """DM-H at a named config and the transformer of its GPT sizes over ``steps`` steps of context."""
    named = load_named(config)
    torch.manual_seed(seed)
    dmh = build_model("dmh", obs_dim=HOPPER[0], act_dim=HOPPER[1], **named["model_config"]).eval()
    c = dmh.config
    ad = ADTransformer(HOPPER[0], HOPPER[1], c.hidden, c.n_layer, c.n_head, steps, c.activation).eval()
    return dmh, ad


def stream(steps: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic (rtg (T, 1), obs (T, obs)) inputs: timing does not depend on them."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, 1, generator=g) * 3, torch.randn(steps, HOPPER[0], generator=g)


def check_cache(ad: ADTransformer, steps: int = 24) -> float:
    """Largest relative error of the cached step's actions against the re-encoding forward."""
    rtg, obs = stream(steps)
    cache, prev = ad.init_cache(), torch.zeros(1, HOPPER[1])
    prevs, worst = [], 0.0
    with torch.inference_mode():
        for t in range(steps):
            prevs.append(prev)
            a = ad.step(cache, rtg[t:t + 1], obs[t:t + 1], prev)
            ref = ad.reencode(rtg[None, :t + 1], obs[None, :t + 1], torch.stack(prevs, 1))
            err = ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            worst = max(worst, err if err == err else math.inf)
            prev = a
    return worst


def run_interleaved(dmh, ad: ADTransformer, steps: int, episode: int, block: int,
                    progress: bool = True) -> dict[str, list[float]]:
    """Per-step seconds of DM-H and of the cached transformer over one ``steps``-long online run, the two
    interleaved every ``block`` steps."""
    rtg, obs = stream(steps)
    state, cache = dmh.init_state(1), ad.init_cache()
    prev_d, prev_a = torch.zeros(1, HOPPER[1]), torch.zeros(1, HOPPER[1])
    times: dict[str, list[float]] = {"dmh": [], "ad-cached": []}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="online run", unit="step")
    with torch.inference_mode():
        for start in range(0, steps, block):
            stop = min(steps, start + block)
            for t in range(start, stop):
                if t % episode == 0:
                    state = {**state, "t": torch.zeros_like(state["t"])}  # new episode, Mamba state kept
                t0 = time.perf_counter()
                prev_d, state = dmh.step(state, obs[t:t + 1], rtg[t:t + 1])
                times["dmh"].append(time.perf_counter() - t0)
            for t in range(start, stop):
                t0 = time.perf_counter()
                prev_a = ad.step(cache, rtg[t:t + 1], obs[t:t + 1], prev_a)
                times["ad-cached"].append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(stop - start)
    if bar is not None:
        bar.close()
    return times


def reencode_curve(ad: ADTransformer, steps: int, samples: int, repeats: int = 3) -> list[tuple[int, float]]:
    """(context steps, seconds per re-encoding step) at ``samples`` evenly spaced lengths up to ``steps``."""
    rtg, obs = stream(steps)
    prev = torch.rand(steps, HOPPER[1]) * 2 - 1
    lengths = sorted({max(1, round(steps * (i + 1) / samples)) for i in range(samples)})
    curve = []
    with torch.inference_mode():
        for n in lengths:
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                ad.reencode(rtg[None, :n], obs[None, :n], prev[None, :n])
                best = min(best, time.perf_counter() - t0)
            curve.append((n, best))
    return curve


def integrate(curve: list[tuple[int, float]], first: int, last: int) -> float:
    """Sum over steps first..last (1-based context lengths) of the per-step time, the curve interpolated
    linearly between samples (and from (0, 0) before the first)."""
    pts = [(0, 0.0), *curve]
    total = 0.0
    for n in range(first, last + 1):
        for (n0, s0), (n1, s1) in zip(pts, pts[1:], strict=False):
            if n0 <= n <= n1:
                total += s0 + (s1 - s0) * (n - n0) / (n1 - n0)
                break
    return total


def summarise(times: dict[str, list[float]], curve: list[tuple[int, float]], steps: int, episode: int) -> dict:
    episodes = math.ceil(steps / episode)
    rows = {}
    for name, ts in times.items():
        rows[name] = {"total_s": sum(ts), "per_episode_s": [sum(ts[i * episode:(i + 1) * episode]) for i in range(episodes)],
                      "median_step_us_last_episode": sorted(ts[-episode:])[len(ts[-episode:]) // 2] * 1e6,
                      "estimated": False}
    if curve:
        per_ep = [integrate(curve, i * episode + 1, min(steps, (i + 1) * episode)) for i in range(episodes)]
        rows["ad-reencode"] = {"total_s": sum(per_ep), "per_episode_s": per_ep,
                               "median_step_us_last_episode": integrate(curve, steps, steps) * 1e6, "estimated": True}
    base = rows["dmh"]["total_s"]
    for r in rows.values():
        r["ratio_vs_dmh"] = r["total_s"] / base
        r["last_episode_ratio_vs_dmh"] = r["per_episode_s"][-1] / rows["dmh"]["per_episode_s"][-1]
    return rows


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


def report(result: dict) -> str:
    a = result["args"]
    rows = result["rows"]
    lines = [
        f"One online run over a {a['steps']:,}-step cross-episode context ({a['steps'] // a['episode']} episodes of "
        f"{a['episode']:,} steps), batch 1, one thread, PyTorch {result['torch']} eager, {result['cpu']}; "
        f"DM-H at `{a['config']}` ({result['dmh_params']:,} parameters), the transformers of its GPT sizes "
        f"(hidden {result['hidden']}, {result['n_layer']} layers, {result['ad_params']:,} parameters with their "
        f"{3 * a['steps']:,} positions). Cached transformer checked against re-encoding: max relative error "
        f"{result['cache_check_rel_err']:.1e}. Load average {result['load'][0]:.1f} before / {result['load'][1]:.1f} after.",
        "",
        f"Reproduce: `python tools/bench/long_context.py --steps {a['steps']} --episode {a['episode']} "
        f"--samples {a['samples']}`",
        "",
        "| model | whole run | " + " | ".join(f"episode {i + 1}" for i in range(len(rows["dmh"]["per_episode_s"])))
        + " | step, last episode (µs) | run ÷ DM-H | last episode ÷ DM-H |",
        "|---|---:|" + "---:|" * len(rows["dmh"]["per_episode_s"]) + "---:|---:|---:|",
    ]
    names = {"dmh": "DM-H (`step()`)", "ad-cached": "transformer, key/value cache",
             "ad-reencode": "transformer, re-encoding the context (estimated*)"}
    for key, r in rows.items():
        lines.append(f"| {names[key]} | {_fmt_s(r['total_s'])} | " + " | ".join(_fmt_s(s) for s in r["per_episode_s"])
                     + f" | {r['median_step_us_last_episode']:,.0f} | {r['ratio_vs_dmh']:.1f}× | "
                     f"{r['last_episode_ratio_vs_dmh']:.1f}× |")
    lines += ["", f"Paper (its own machine and implementations): AD transformer {PAPER['ad_min']:.0f} min, DM-H "
              f"{PAPER['dmh_min']} min over {PAPER['context']:,} steps: {PAPER['ad_min'] / PAPER['dmh_min']:.0f}×.",
              "", "*Re-encoding: the per-step time measured at " + ", ".join(f"{n:,}" for n, _ in result["curve"])
              + " steps of context (best of 3 each) and summed over the run's steps by linear interpolation; "
              "not a full run."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    block = 50
    for key, label in (("dmh", "DM-H step()"), ("ad-cached", "transformer, KV cache")):
        ts = result["times"][key]
        xs = list(range(block, len(ts) + 1, block))
        ax.plot(xs, [1e3 * sorted(ts[x - block:x])[block // 2] for x in xs], label=label)
    if result["curve"]:
        ax.plot([n for n, _ in result["curve"]], [1e3 * s for _, s in result["curve"]], "o--",
                label="transformer, re-encoding (sampled)")
    ax.set_yscale("log")
    ax.set_xlabel("steps of cross-episode context")
    ax.set_ylabel("ms per step (median of 50)")
    ax.set_title("Online testing cost against context length (one thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="dmh-d4rl", help="DM-H named config (ssmc/configs/).")
    ap.add_argument("--steps", type=int, default=PAPER["context"], help="Steps of cross-episode context.")
    ap.add_argument("--episode", type=int, default=1000, help="Steps per episode.")
    ap.add_argument("--block", type=int, default=100, help="Steps per model before switching (interleaving).")
    ap.add_argument("--samples", type=int, default=8, help="Context lengths at which re-encoding is timed (0: skip).")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-docs", action="store_true", help="Do not write docs/long-context.{md,json,png}.")
    args = ap.parse_args()
    if args.steps <= 0 or args.episode <= 0 or args.block <= 0 or args.samples < 0:
        raise SystemExit("error: --steps, --episode and --block must be positive, --samples non-negative")
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    dmh, ad = build(args.config, args.steps)
    err = check_cache(ad)
    if not err <= 1e-5:
        raise SystemExit(f"error: the cached transformer disagrees with re-encoding (relative error {err:.2e})")
    times = run_interleaved(dmh, ad, args.steps, args.episode, args.block)
    curve = reencode_curve(ad, args.steps, args.samples) if args.samples else []
    result = {
        "args": vars(args) | {"json": str(args.json) if args.json else None}, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "dmh_params": dmh.num_params(),
        "ad_params": sum(p.numel() for p in ad.parameters()), "hidden": ad.hidden, "n_layer": len(ad.blocks),
        "cache_check_rel_err": err, "times": times, "curve": curve,
        "rows": summarise(times, curve, args.steps, args.episode), "load": [load0, os.getloadavg()[0]],
    }
    text = report(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result) + "\n")
    if not args.no_docs:
        from ssmc.fsutil import replace_marked_block

        doc = ROOT / "docs" / "long-context.md"
        replace_marked_block(doc, "<!-- long_context: begin -->", "<!-- long_context: end -->", text,
                             default="# DM-H's long-context claim\n\n")
        (ROOT / "docs" / "long-context.json").write_text(json.dumps({k: v for k, v in result.items() if k != "times"},
                                                                    indent=1) + "\n")
        plot(result, ROOT / "docs" / "long-context.png")


if __name__ == "__main__":
    main()
