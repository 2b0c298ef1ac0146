"""T-maze: a memory task with a configurable memory length k (Bakker 2001; the "passive T-maze" of Ni et
al. 2023, "When Do Transformers Shine in RL?"), as DM-H's paper uses it.

    t = 0        t = 1 .. k-1        t = k
    [cue] ──────── corridor ──────── junction ─┬─ up    (action[0] > 0)
                                               └─ down  (action[0] <= 0)

- Observation (2,) float32: [cue, junction]. ``cue`` is +1 (the goal is up) or -1 (down) at step 0 and 0
  afterwards; ``junction`` is 1 at step k only. Nothing else about the cue is ever observed.
- Action (1,) in [-1, 1]. Moving along the corridor is automatic and the action is ignored there; at
  the junction the sign of action[0] picks the turn and the episode terminates.
- Reward: 1 for the cued turn, 0 otherwise (and 0 in the corridor): the return is the success flag, and
  ``info["success"]`` says it too. An episode is exactly k + 1 steps.

A policy that remembers the cue for k steps succeeds always; one that does not is at chance (50%). A
window policy over the last K timesteps sees the cue at the junction only when k <= K - 1.

The environment itself (``TMazeEnv``) and its gymnasium ids ``ssmc/TMaze-k{k}-v0`` live in ssmc/tmaze.py,
shared by every stage; this module holds what only data collection needs.

Behaviour policies for ``ssmc data collect`` (``collection_plan``): ``Oracle`` remembers the cue it saw at
step 0 and turns that way, ``Guesser`` turns a random way; both put Gaussian noise on every action, and
corridor actions are pure noise independent of the cue (so no action leaks the cue into a context).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ssmc.errors import ConfigError

ACTION_NOISE = 0.1  # std of the behaviour policies' Gaussian action noise
TURN = 0.8  # magnitude of a scripted turn before noise


class Oracle:
    """Turns the cued way: remembers the cue of its first observation (one instance per episode).

    ``informed`` False makes it a guesser: it turns a random way (drawn once, at the junction)."""

    def __init__(self, rng: np.random.Generator, noise: float = ACTION_NOISE, informed: bool = True) -> None:
        self.rng, self.noise, self.informed = rng, noise, informed
        self.cue: float | None = None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.cue is None:
            self.cue = float(obs[0])
        action = self.noise * self.rng.standard_normal(1)
        if obs[1] > 0:  # the junction
            direction = self.cue if self.informed else (1.0 if self.rng.integers(2) else -1.0)
            action += TURN * direction
        return np.clip(action, -1.0, 1.0)


def collection_plan(quality: str, size: int) -> tuple[dict[str, Any], list[tuple[int, Callable, str]]]:
    """Behaviour for ``ssmc data collect ssmc/TMaze-* --quality Q``: (metadata, [(until, make_actor, label)]).

    - ``expert``: the oracle (success ~100%);
    - ``medium``: the guesser (success ~50%: it walks the maze competently but forgets the cue);
    - ``medium-expert``: guesser data then oracle data, half each;
    - ``medium-replay``: a learner whose probability of remembering the cue grows from 0 to 1 over the
      collection (each episode is an oracle or a guesser episode);
    - ``random`` is the collector's generic uniform-random actions (success ~50%).
    """

    def oracle(rng: np.random.Generator, _fraction: float) -> Oracle:
        return Oracle(rng)

    def guesser(rng: np.random.Generator, _fraction: float) -> Oracle:
        return Oracle(rng, informed=False)

    def learner(rng: np.random.Generator, fraction: float) -> Oracle:
        return Oracle(rng, informed=bool(rng.random() < fraction))

    label = f"action noise std {ACTION_NOISE}"
    plans = {
        "expert": [(size, oracle, f"oracle (remembers the cue), {label}")],
        "medium": [(size, guesser, f"guesser (random turn), {label}")],
        "medium-expert": [(size // 2, guesser, f"guesser, {label}"), (size, oracle, f"oracle, {label}")],
        "medium-replay": [(size, learner, f"oracle with probability rising 0 -> 1, else guesser; {label}")],
    }
    if quality not in plans:
        raise ConfigError(f"no T-maze behaviour for quality {quality!r}; known: {', '.join(plans)} and random")
    return {"behaviour_policy": "scripted T-maze oracle / guesser (ssmc.train.tmaze)"}, plans[quality]
