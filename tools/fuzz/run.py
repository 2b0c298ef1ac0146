"""Build and run the libFuzzer harnesses for a bounded time; print (and optionally write) the figures.

    python tools/fuzz/run.py --artifact DMM_STATIC.ssmc --seconds 60 [--json docs/fuzz.json] [--work DIR]

For each harness (tools/fuzz/fuzz_manifest.cc, fuzz_act.cc; built by tools/fuzz/build.sh with clang,
-fsanitize=fuzzer,address,undefined): seeds are the bad-manifest corpus applied to the artifact's own
manifest (tools/fuzz/corpus.py), the harness runs for --seconds, and the result is the executions, the
corpus size at the end, and the crash/leak/timeout files libFuzzer wrote (each one a finding: add it to
tests/manifest_corpus once fixed). Exit status 1 when anything was found, 3 when clang is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402

HARNESSES = ("fuzz_manifest", "fuzz_act")


def build(out: Path) -> str:
    proc = subprocess.run(["bash", str(ROOT / "tools" / "fuzz" / "build.sh"), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode if proc.returncode == 3 else 2)
    line = proc.stdout.strip()
    return line[line.index("(") + 1:line.rindex(")")] if "(" in line else line


def run_one(binary: Path, work: Path, seeds: Path | None, seconds: int, env: dict[str, str]) -> dict:
    name = binary.name
    corpus_dir, crashes = work / f"{name}.corpus", work / f"{name}.findings"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    cmd = [str(binary), str(corpus_dir), *([str(seeds)] if seeds else []), f"-max_total_time={seconds}",
           "-max_len=262144", "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1",
           f"-artifact_prefix={crashes}/"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 300)
    log = proc.stdout + proc.stderr
    (work / f"{name}.log").write_text(log)
    stat = {k: int(v) for k, v in re.findall(r"stat::(\w+):\s+(\d+)", log)}
    findings = sorted(p.name for p in crashes.iterdir())
    return {"harness": name, "seconds": round(time.time() - t0, 1), "exit_status": proc.returncode,
            "executions": stat.get("number_of_executed_units", 0), "execs_per_sec": stat.get("average_exec_per_sec", 0),
            "corpus_files": sum(1 for _ in corpus_dir.iterdir()), "new_units": stat.get("new_units_added", 0),
            "peak_rss_mb": stat.get("peak_rss_mb", 0), "findings": findings,
            "summary": [line for line in log.splitlines() if line.startswith(("SUMMARY:", "==ERROR", "ERROR:"))][:5]}


def write_doc(doc: Path, res: dict) -> None:
    """The figures as a table between docs/security.md's fuzz markers."""
    rows = ["| harness | seconds | executions | per second | corpus files at the end | new units | peak RSS | findings |",
            "|---|---|---|---|---|---|---|---|"]
    for h in res["harnesses"]:
        rows.append(f"| `{h['harness']}` | {h['seconds']:.0f} | {h['executions']:,} | {h['execs_per_sec']:,} | "
                    f"{h['corpus_files']:,} | {h['new_units']:,} | {h['peak_rss_mb']} MB | "
                    f"{len(h['findings']) or 'none'} |")
    begin, end = "<!-- fuzz:begin -->", "<!-- fuzz:end -->"
    text = doc.read_text()
    head, rest = text.split(begin, 1)
    doc.write_text(head + begin + "\n" + "\n".join(rows) + "\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", help="a static artifact directory (seeds, and what fuzz_act steps)")
    ap.add_argument("--seconds", type=int, default=60, help="per harness")
    ap.add_argument("--work", default="build/fuzz", help="build and corpus folder")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--doc", default=None, help="with --from-json: write the table into this markdown file")
    ap.add_argument("--from-json", default=None, help="a result JSON to put in --doc (nothing is run)")
    args = ap.parse_args(argv)
    if args.doc:
        write_doc(Path(args.doc), json.loads(Path(args.from_json).read_text()))
        return 0
    if not args.artifact:
        ap.error("--artifact is required")
    work = Path(args.work).resolve()
    compiler = build(work / "bin")
    seeds = work / "seeds"
    corpus.write_seeds((Path(args.artifact) / "manifest.json").read_bytes(), seeds)
    env = {**os.environ, "SSMC_FUZZ_ARTIFACT": str(Path(args.artifact).resolve()), "ASAN_OPTIONS": "detect_leaks=1"}
    env.pop("SSMC_TRUSTED_KEYS", None)
    results = [run_one(work / "bin" / h, work, seeds if h == "fuzz_manifest" else None, args.seconds, env)
               for h in HARNESSES]
    out = {"compiler": compiler, "seed_files": len(list(seeds.iterdir())), "seconds_per_harness": args.seconds,
           "harnesses": results}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 1 if any(r["findings"] or r["exit_status"] != 0 for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
