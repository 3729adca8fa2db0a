"""`make chaos` / `python -m bench.chaos`: the fault suite against real processes on 127.0.0.1.

Prints one table row per scenario and, last, one JSON line
`{"scenarios": {NAME: {"sent", "tagged", "dead_lettered", "lost", "dup_diff_id", "recovery_s", ...}}}`.
Exit code 0 only when every selected scenario passed.

    python -m bench.chaos                      # every scenario, the durations of issue 11 (~20 min)
    python -m bench.chaos --quick              # a subset with short faults (< 3 min)
    python -m bench.chaos --only kill9 --only fuzz
    python -m bench.chaos --worker-root ../wt15   # run another tree's worker code
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos.harness import Stack, load_titles, new_workdir
from bench.chaos.model import ensure_chaos_model
from bench.chaos.scenarios import QUICK, QUICK_SET, SCENARIOS, Config, Result, Run
from scripts.model_cache import FLIPKART, REPO

log = logging.getLogger("bench.chaos")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"short faults, scenarios {', '.join(QUICK_SET)}")
    p.add_argument("--only", action="append", default=[], choices=sorted(SCENARIOS), metavar="NAME",
                   help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")  # fmt: skip
    p.add_argument("--model", type=Path, help="model artifact (default: a small model trained once into runs/chaos)")
    p.add_argument("--worker-root", type=Path, default=REPO, help="source tree the worker processes run from")
    p.add_argument("--seed", type=int, default=11, help="seed of fault timings and fuzzed events")
    p.add_argument("--logs", type=Path, help="keep worker/broker/redis logs here (default: a temp dir)")
    p.add_argument("--json-out", type=Path, help="also write the final JSON here")
    return p.parse_args(argv)


def worker_base_env(worker_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    env["PYTHONPATH"] = str(worker_root.resolve())
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.1f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def render(results: Sequence[Result]) -> str:
    columns = ["scenario", "sent", "tagged", "dead-lettered", "lost (committed)", "dup_diff_id", "recovery s"]
    head = "| " + " | ".join([*columns, "final lag", "crashes", "result"]) + " |"
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        s = r.summary()
        verdict = "pass" if r.passed else "FAIL: " + ", ".join(s["failed_checks"])
        lost = f"{fmt(s['lost'])} ({fmt(s['lost_committed'])})"
        cells = [r.name, fmt(s["sent"]), fmt(s["tagged"]), fmt(s["dead_lettered"]), lost]
        cells += [fmt(s[k]) for k in ("dup_diff_id", "recovery_s", "final_lag", "crashes")] + [verdict]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    cfg: Config = QUICK if args.quick else Config()
    names = args.only or list(QUICK_SET if args.quick else SCENARIOS)
    model = args.model or ensure_chaos_model()
    workdir = new_workdir(args.logs)
    pool = load_titles(FLIPKART)
    base_env = worker_base_env(args.worker_root)
    started = datetime.now(UTC)
    print(f"# chaos: {started:%Y-%m-%d %H:%M} UTC, {machine()}; worker code {args.worker_root.resolve()}; "
          f"model {model}; logs {workdir}", flush=True)  # fmt: skip
    results: list[Result] = []
    stack = Stack(workdir)
    try:
        stack.start()
        for i, name in enumerate(names):
            rng = random.Random(args.seed * 1_000 + i)
            log.info("scenario %s", name)
            run = Run(stack, cfg, name, model, args.worker_root, base_env, workdir, rng, pool)
            try:
                result = SCENARIOS[name](run)
            finally:
                run.close()
                if stack.proxy is not None:
                    stack.proxy.set_mode("pass")
                stack.redis.thaw()
                if stack.redis.proc is None:
                    stack.redis.start()
            results.append(result)
            log.info("%s: %s %s", name, "pass" if result.passed else "FAIL", json.dumps(result.summary()))
    finally:
        stack.close()
    print(render(results))
    for r in results:
        print(f"- {r.name} ({r.elapsed_s:.0f} s): {json.dumps(r.extra, default=str)}")
    payload = {
        "scenarios": {r.name: r.summary() for r in results},
        "quick": args.quick,
        "started": started.isoformat(),
        "elapsed_s": round((datetime.now(UTC) - started).total_seconds()),
        "machine": machine(),
    }
    line = json.dumps(payload)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line, flush=True)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    t = time.monotonic()
    code = main()
    sys.exit(code)
