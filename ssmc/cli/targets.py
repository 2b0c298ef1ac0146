"""``ssmc targets``: list the deployment targets ssmc compiles for."""

from __future__ import annotations

import json

import click


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.0f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
def targets(name: str | None, as_json: bool) -> None:
    """List the known targets, or show the full descriptor of target NAME.

    \b
    Precisions: fp16* = allowed but emulated (slow) on that target.
    Budgets: per-step latency (p99) and resident memory the compiled step is judged against.
    """
    from ssmc.targets import list_targets, load_target

    if name is not None:
        t = load_target(name)
        if as_json:
            click.echo(json.dumps(t.to_dict()))
            return
        click.echo(json.dumps(t.to_dict(), indent=2))
        return

    ts = list_targets()
    if as_json:
        click.echo(json.dumps({"targets": [t.to_dict() for t in ts]}))
        return
    rows = [("TARGET", "ARCH", "DEVICE", "PRECISIONS", "STEP BUDGET", "MEMORY", "DESCRIPTION")]
    for t in ts:
        precs = ",".join(p + ("*" if lvl == "emulated" else "") for p, lvl in t.precisions.items())
        rows.append((
            t.name, t.arch, t.device, precs,
            f"{t.budget.step_latency_us:g} us @ {t.budget.control_rate_hz:g} Hz",
            _fmt_bytes(t.budget.memory_bytes), t.description,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    click.echo("\n* emulated: allowed, but slow on that target (compile warns).  "
               "`ssmc targets NAME` shows a full descriptor.")


COMMANDS = [targets]
