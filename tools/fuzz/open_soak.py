"""Open/close soak: does ssmc_open leak? A C program opens an artifact, takes one step and closes it N times
(and, with --bad, also fails to open a refused artifact each round, the error paths), sampling its resident
memory (VmRSS) as it goes. Prints JSON; --doc writes the table into docs/security.md.

    python tools/fuzz/open_soak.py ARTIFACT [--bad REFUSED_ARTIFACT] [--keys KEYS.pub] [--opens 10000]
    python tools/fuzz/open_soak.py --doc docs/security.md --runs RUN.json [RUN.json ...]

tests/test_security.py runs the same program for 1,000 opens and bounds the growth (a leak check, not a
timing). The first tenth of the opens is warm-up (the allocator's arenas, dlopen's caches); growth is
measured from there to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SOURCE = r"""
#include "ssmc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  if (f == NULL) return -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "VmRSS:", 6) == 0) { v = atol(line + 6); break; }
  }
  fclose(f);
  return v;
}

int main(int argc, char **argv) {
  if (argc < 4) { fputs("usage: open_soak ARTIFACT BAD|- N [SAMPLES]\n", stderr); return 2; }
  const char *good = argv[1], *bad = strcmp(argv[2], "-") == 0 ? NULL : argv[2];
  long n = atol(argv[3]), samples = argc > 4 ? atol(argv[4]) : 20, every = n / samples > 0 ? n / samples : 1;
  printf("{\"rss_kb_start\": %ld, \"samples\": [", rss_kb());
  for (long i = 1; i <= n; ++i) {
    ssmc_policy *p = NULL;
    if (ssmc_open(good, &p) != SSMC_OK) { fprintf(stderr, "error: %s\n", ssmc_last_error(NULL)); return 2; }
    size_t no = ssmc_obs_dim(p), na = ssmc_act_dim(p);
    float *obs = calloc(no, sizeof *obs), *act = calloc(na, sizeof *act);
    if (ssmc_act(p, obs, no, 0.0, act, na) != SSMC_OK) { fprintf(stderr, "error: %s\n", ssmc_last_error(p)); return 2; }
    free(obs);
    free(act);
    ssmc_close(p);
    if (bad != NULL) {
      ssmc_policy *q = NULL;
      if (ssmc_open(bad, &q) == SSMC_OK) { fputs("error: the bad artifact opened\n", stderr); return 2; }
    }
    if (i % every == 0) printf("%s[%ld, %ld]", i == every ? "" : ", ", i, rss_kb());
  }
  printf("]}\n");
  return 0;
}
"""


def build(bundle_dir: Path, out: Path) -> Path:
    src = out.with_suffix(".c")
    src.write_text(SOURCE)
    subprocess.run(["gcc", "-std=c11", "-O2", f"-I{bundle_dir}", "-o", str(out), str(src), f"-L{bundle_dir}", "-lssmc",
                    f"-Wl,-rpath,{bundle_dir}"], check=True)
    return out


def soak(artifact: Path, opens: int, bad: Path | None = None, keys: Path | None = None, samples: int = 20) -> dict:
    """Run the soak; returns the samples and the growth after warm-up (KiB)."""
    from ssmc.runtime import runtime_bundle

    bundle = runtime_bundle()
    env = {k: v for k, v in os.environ.items() if k != "SSMC_TRUSTED_KEYS"}
    if keys is not None:
        env["SSMC_TRUSTED_KEYS"] = str(keys)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(bundle.dir, Path(tmp) / "open_soak")
        proc = subprocess.run([str(exe), str(artifact), str(bad) if bad else "-", str(opens), str(samples)],
                              capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"open_soak failed: {proc.stderr.strip()}")
    res = json.loads(proc.stdout)
    pts = res["samples"]
    warm = next(p for p in pts if p[0] >= max(1, opens // 10))
    res.update(opens=opens, artifact=artifact.name, bad=bad.name if bad else None, signed=keys is not None,
               rss_kb_after_warmup=warm[1], rss_kb_end=pts[-1][1], growth_kb=pts[-1][1] - warm[1],
               growth_bytes_per_open=round((pts[-1][1] - warm[1]) * 1024 / max(1, opens - warm[0]), 3))
    return res


def write_doc(doc: Path, runs: list[dict]) -> None:
    rows = ["| artifact | signed, keys set | failed open each round | opens | RSS after warm-up | RSS at the end | growth | per open |",
            "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r['artifact']} | {'yes' if r['signed'] else 'no'} | {r['bad'] or '—'} | {r['opens']:,} | "
                    f"{r['rss_kb_after_warmup']:,} KiB | {r['rss_kb_end']:,} KiB | {r['growth_kb']:+,} KiB | "
                    f"{r['growth_bytes_per_open']:+.1f} B |")
    begin, end = "<!-- open-soak:begin -->", "<!-- open-soak:end -->"
    text = doc.read_text()
    if begin not in text:
        raise SystemExit(f"{doc}: no {begin} marker")
    head, rest = text.split(begin, 1)
    doc.write_text(head + begin + "\n" + "\n".join(rows) + "\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", nargs="?")
    ap.add_argument("--bad", default=None, help="an artifact ssmc_open refuses, opened (and refused) every round")
    ap.add_argument("--keys", default=None, help="SSMC_TRUSTED_KEYS for the soak (the artifact must be signed)")
    ap.add_argument("--opens", type=int, default=10000)
    ap.add_argument("--out", default=None, help="write the run's JSON here")
    ap.add_argument("--doc", default=None, help="write the table of --runs into this markdown file")
    ap.add_argument("--runs", nargs="*", default=[])
    args = ap.parse_args(argv)
    if args.doc:
        write_doc(Path(args.doc), [json.loads(Path(r).read_text()) for r in args.runs])
        return 0
    if not args.artifact:
        ap.error("ARTIFACT is required")
    res = soak(Path(args.artifact), args.opens, Path(args.bad) if args.bad else None,
               Path(args.keys) if args.keys else None)
    text = json.dumps(res)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
