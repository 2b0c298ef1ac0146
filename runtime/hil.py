"""``ssmc hil``: hardware-in-the-loop on loopback. The plant and the controller are separate processes.

- **Plant** (this process): a gymnasium/MuJoCo environment stepped on a fixed-rate clock. Every period
  it sends the observation (and the reward of the last step) to the controller and waits until the
  period's deadline for the action. An action that is late or an error frame counts as a **deadline
  miss**: the plant holds the previous action (zeros at an episode's start), as a motor driver would,
  and drops the late reply when it arrives.
- **Controller**: the C control-loop example (``ssmc_control --connect``, runtime/c/examples), which
  opens the artifact through the C API and answers each observation with ``ssmc_act``. With
  ``emulate="aarch64"`` it is the aarch64 build running under ``qemu-aarch64-static``: results are
  correct, but its timing is the emulator's, not a board's.

The wire format is in control_loop.c's header comment: 16-byte header (magic, type, seq, n) and n
little-endian float64 values. Reported: score, deadline misses, round-trip latency (plant send →
action received), and the controller's own per-step compute time.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import time
from typing import Any

import numpy as np

from ssmc.artifact import load_manifest
from ssmc.errors import ConfigError
from ssmc.runtime.native import host_arch, runtime_bundle
from ssmc.runtime.run import artifact_env, latency_summary

MAGIC = 0x434D5353
RESET, OBS, STOP, ACT, ERR, HELLO, ACK = 1, 2, 3, 4, 5, 6, 7
_HEAD = struct.Struct("<IIII")
CONNECT_TIMEOUT_S = 120.0  # qemu start-up and TVM's library load under emulation take seconds


def _accept_controller(server: socket.socket, controller: subprocess.Popen) -> socket.socket:
    """The controller's connection; waits up to CONNECT_TIMEOUT_S in short slices, so that a controller that
    exits first (it refused the artifact, say) is reported at once with its own error line."""
    deadline = time.perf_counter() + CONNECT_TIMEOUT_S
    server.settimeout(0.1)
    while True:
        try:
            conn, _ = server.accept()
            return conn
        except TimeoutError:
            pass
        if controller.poll() is not None:
            lines = [ln for ln in (controller.stderr.read() or "").strip().splitlines() if ln.strip()]
            raise ConfigError(f"the controller exited ({controller.returncode}) before connecting: "
                              f"{lines[-1] if lines else 'no message'}")
        if time.perf_counter() > deadline:
            raise ConfigError(f"the controller did not connect within {CONNECT_TIMEOUT_S:.0f} s (still starting)")


class _Link:
    """Frames over one TCP connection, with a receive buffer so partial frames survive timeouts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, kind: int, seq: int, values: np.ndarray | list[float] = ()) -> None:
        v = np.asarray(values, "<f8").reshape(-1)
        self.sock.sendall(_HEAD.pack(MAGIC, kind, seq, v.size) + v.tobytes())

    def recv(self, deadline: float) -> tuple[int, int, np.ndarray] | None:
        """The next frame, or None if none is complete by ``deadline`` (time.perf_counter())."""
        while True:
            if len(self.buf) >= _HEAD.size:
                magic, kind, seq, n = _HEAD.unpack_from(self.buf)
                if magic != MAGIC:
                    raise ConnectionError("the controller sent a malformed frame")
                size = _HEAD.size + 8 * n
                if len(self.buf) >= size:
                    values = np.frombuffer(self.buf[_HEAD.size:size], "<f8").copy()
                    self.buf = self.buf[size:]
                    return kind, seq, values
            wait = deadline - time.perf_counter()
            if wait <= 0 or not select.select([self.sock], [], [], wait)[0]:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the controller closed the connection")
            self.buf += chunk


def _sleep_until(t: float) -> None:
    while (left := t - time.perf_counter()) > 0:
        time.sleep(min(left, 0.0005) if left < 0.002 else left - 0.001)


def _realtime(on: bool) -> bool:
    """This process to SCHED_FIFO priority 70 (on) or back to normal scheduling; whether it worked."""
    try:
        if on:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(70))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        return True
    except (OSError, AttributeError):
        return False


def run_hil(artifact: str | os.PathLike[str], env_id: str | None = None, rate_hz: float = 50.0, episodes: int = 1,
            seed: int = 0, emulate: str | None = None, max_steps: int | None = None,
            target_return: float | None = None, progress: bool = True, realtime: bool = True) -> dict[str, Any]:
    """Run ``episodes`` episodes with the plant here and the C controller in its own process.

    ``realtime``: both processes ask for SCHED_FIFO (the controller also locks its memory), as a robot's
    loops would; where that is not permitted they run at normal priority and the result says so."""
    from ssmc.envs import make_env, resolve_env

    if rate_hz <= 0:
        raise ConfigError(f"--rate must be positive, got {rate_hz}")
    if episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {episodes}")
    manifest = load_manifest(artifact)
    arch = emulate or host_arch()
    if emulate is not None and emulate != "aarch64":
        raise ConfigError(f"--emulate {emulate}: only aarch64 can be emulated here")
    if manifest.target["arch"] != arch or manifest.target["device"] != "cpu":
        raise ConfigError(f"the artifact is for {manifest.target['name']} ({manifest.target['arch']}, "
                          f"{manifest.target['device']}); the controller here runs {arch} CPU artifacts"
                          + ("" if emulate else " (use --emulate aarch64 for aarch64 artifacts)"))
    spec = resolve_env(artifact_env(manifest, env_id))
    bundle = runtime_bundle(arch, progress=(lambda m: print(m, flush=True)) if progress else None)
    period = 1.0 / rate_hz

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    argv = bundle.command(str(artifact), "--connect", f"127.0.0.1:{port}", "--rate", str(rate_hz))
    controller = subprocess.Popen(argv + (["--realtime"] if realtime else []), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    plant_rt = realtime and _realtime(True)
    env = make_env(spec)
    returns: list[float] = []
    lengths: list[int] = []
    missed: list[list[int]] = []  # per episode, the steps whose action came late (the previous one was held)
    misses = errors = steps_total = 0
    rtt_ns: list[int] = []
    try:
        conn = _accept_controller(server, controller)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(conn)
        hello = link.recv(time.perf_counter() + CONNECT_TIMEOUT_S)
        if hello is None or hello[0] != HELLO:
            raise ConfigError("the controller did not say hello")
        obs_dim, act_dim = (int(x) for x in hello[2])
        if (obs_dim, act_dim) != (int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))):
            raise ConfigError(f"the artifact takes obs/action sizes {(obs_dim, act_dim)}, {spec.env_id} does not")
        seq = 0
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            link.send(RESET, seq, [float("nan") if target_return is None else target_return])
            ack = link.recv(time.perf_counter() + CONNECT_TIMEOUT_S)
            if ack is None or ack[0] != ACK:
                raise ConfigError("the controller did not acknowledge the reset")
            action = np.zeros(act_dim)
            missed.append([])
            reward, total, n, done = 0.0, 0.0, 0, False
            tick = time.perf_counter()
            while not done and (max_steps is None or n < max_steps):
                seq += 1
                sent = time.perf_counter()
                link.send(OBS, seq, np.concatenate([[reward], np.asarray(obs, np.float64).reshape(-1)]))
                deadline = tick + period
                got = None
                while (frame := link.recv(deadline)) is not None:
                    if frame[1] == seq:  # older frames are late replies to missed periods: dropped
                        got = frame
                        break
                if got is not None and got[0] == ACT:
                    rtt_ns.append(int((time.perf_counter() - sent) * 1e9))
                    action = got[2]
                else:
                    misses += 1
                    missed[-1].append(n)
                    errors += int(got is not None and got[0] == ERR)
                low, high = env.action_space.low, env.action_space.high
                obs, reward, terminated, truncated, _ = env.step(np.clip(action, low, high))
                reward = float(reward)
                total += reward
                n += 1
                done = terminated or truncated
                tick += period
                if time.perf_counter() > tick:  # the plant itself overran: restart the clock
                    tick = time.perf_counter()
                _sleep_until(tick)
            returns.append(total)
            lengths.append(n)
            steps_total += n
            if progress:
                print(f"hil episode {ep}: return {total:.1f} ({spec.normalized(total):.1f} normalised), {n} steps, "
                      f"{misses} misses so far", flush=True)
        link.send(STOP, seq + 1)
        out, err = controller.communicate(timeout=CONNECT_TIMEOUT_S)
    finally:
        if plant_rt:
            _realtime(False)
        env.close()
        server.close()
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    if controller.returncode != 0:
        raise ConfigError(f"the controller exited with {controller.returncode}: {err.strip()}")
    ctrl = json.loads(out.strip().splitlines()[-1])
    r = np.asarray(returns)
    return {
        "artifact": str(artifact),
        "env_id": spec.env_id,
        "model": manifest.model_kind,
        "precision": manifest.precision,
        "rate_hz": rate_hz,
        "period_us": period * 1e6,
        "controller": "aarch64 ssmc_control under qemu-aarch64-static (timing is emulation)" if emulate
                      else f"{arch} ssmc_control (native)",
        "episodes": episodes,
        "seeds": list(range(seed, seed + episodes)),
        "returns": [float(x) for x in r],
        "lengths": lengths,
        "return_mean": float(r.mean()),
        "normalized_mean": float(np.mean([spec.normalized(x) for x in r])),
        "normalized_ref": spec.ref_source,
        "steps": steps_total,
        "deadline_misses": misses,
        "missed_steps": missed,
        "controller_errors": errors,
        "round_trip_us": latency_summary(rtt_ns),
        "controller_step_us": ctrl["latency_us"],
        "controller_peak_rss_kb": ctrl["peak_rss_kb"],
        "realtime": {"plant": plant_rt, "controller": bool(ctrl["realtime"])},
    }
