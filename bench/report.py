"""The benchmark's report: a Markdown table for people, then one JSON line for machines."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.harness import BATCH_STAGES

REQUIRED_KEYS = (
    "naive_eps",
    "batched_baseline_eps",
    "worker_eps",
    "inference_only_eps",
    "cache_hit_eps",
    "cache_hit_eps_kafka_python",
    "cache_hit_eps_confluent",
    "p99_ms_half_load",
    "speedup_vs_naive",
    "io_overhead_share",
)


def fmt(x: Any, digits: int = 1) -> str:
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:,.{digits}f}"
    return str(x)


def render(r: dict[str, Any]) -> str:
    s, m = r["settings"], r["machine"]
    full, half, hit = r["full_load"], r["half_load"], r["cache_hit"]
    inf = r["inference_only"]
    lines = [
        "# product-tagger benchmark",
        "",
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}, Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}; load average at start {m['loadavg_start']}, end {m['loadavg_end']}",
        f"Model: {r['model_dir']} ({r['model_version']}), serving {s['precision']} on {s['device']}, "
        f"worker's Kafka client {s['client']}; "
        f"texts: {r['texts_source']}",
        f"Worker settings: max_items {s['max_items']}, max_tokens {s['max_tokens']}, max_wait_ms {s['max_wait_ms']}, "
        f"max_in_flight {s['max_in_flight']}, linger_ms {s['linger_ms']}, max_poll_records {s['max_poll_records']}, "
        f"ORT intra-op threads {s['intra_op_threads']}",
        f"N = {r['n_events']} (full load), {half['events']} (half load), {hit['events']} (cache replay), "
        f"{r['naive']['events']:.0f} (naive)",
        "",
        "| measurement | events/s | p50 ms | p95 ms | p99 ms | notes |",
        "|---|---:|---:|---:|---:|---|",
        f"| worker, full load (cold cache) | {fmt(full['eps'])} | {fmt(full['p50_ms'], 0)} | {fmt(full['p95_ms'], 0)} "
        f"| {fmt(full['p99_ms'], 0)} | burst of {full['events']} after warm-up; latency is queueing; "
        f"{full['batches']} batches, mean {fmt(full['mean_batch_size'])} items |",
        f"| worker, half load (cold cache) | {fmt(half['rate_eps'])} offered | {fmt(half['p50_ms'], 0)} "
        f"| {fmt(half['p95_ms'], 0)} | {fmt(half['p99_ms'], 0)} | target p99 <= {fmt(r['p99_target_ms'], 0)} ms "
        f"({'met' if r['p99_target_met'] else 'MISSED'}); mean batch {fmt(half['mean_batch_size'])} items |",
    ]
    for client, h in r["cache_hit_by_client"].items():
        target = 25_000 if client == "confluent" else 12_000
        lines.append(
            f"| worker, cache-hit replay, {client} | {fmt(h['eps'])} | {fmt(h['p50_ms'], 0)} | {fmt(h['p95_ms'], 0)} "
            f"| {fmt(h['p99_ms'], 0)} | target >= {target:,}/s ({'met' if h['eps'] >= target else 'MISSED'}); "
            f"{h['cached']}/{h['events']} hits; pre-produced backlog, so latency includes worker start-up |"
        )
    fl = r["broker_floor_half_rate"]
    lines.append(
        f"| broker alone, half-load rate | {fmt(fl['rate_eps'])} offered | {fmt(fl['p50_ms'], 0)} "
        f"| {fmt(fl['p95_ms'], 0)} | {fmt(fl['p99_ms'], 0)} | produce -> plain consumer with the worker's "
        f"fetch settings (fetch_max_wait_ms {r['settings']['fetch_max_wait_ms']}), no worker |"
    )
    for name, v in inf.items():
        lines.append(
            f"| inference only, {name.replace('_', ' ')} | {fmt(v['eps'])} | | | | "
            f"TagEngine/torch on the same texts in batches of {s['max_items']}, no I/O |"
        )
    ev = r.get("evidence")
    if ev:
        lines.append(
            f"| tagging step, evidence off / on | {fmt(ev['eps_evidence_off'])} / {fmt(ev['eps_evidence_on'])} | | | | "
            f"evidence costs {fmt(100 * ev['cost_share'])}% of throughput ({fmt(100 * ev['cpu_cost_share'])}% of CPU), "
            f"target < 10%; {ev['items']} items x {ev['rounds']} rounds, TagBatch in-process |"
        )
    lines.append(
        f"| naive (per message, torch, auto-commit) | {fmt(r['naive_eps'])} | | | | "
        f"{r['naive']['events']:.0f} events in {fmt(r['naive']['elapsed_s'])} s |"
    )
    bt = r["batched"]
    lines.append(
        f"| batched competitor (poll 64, torch batch, produce, commit) | {fmt(r['batched_baseline_eps'])} | | | | "
        f"{bt['events']:.0f} events in {fmt(bt['elapsed_s'])} s, {bt['polls']:.0f} polls |"
    )
    lines += [
        "",
        f"- speedup vs naive: **{fmt(r['speedup_vs_naive'], 1)}x**; vs the batched competitor: "
        f"**{fmt(r['speedup_vs_batched'], 2)}x**",
        f"- worker / its own inference-only ({s['precision']}): **{fmt(100 * r['worker_share_of_inference'])}%**",
        f"- I/O overhead share (1 - worker / inference-only, same precision): **{fmt(100 * r['io_overhead_share'])}%**",
        f"- half-load target: max_wait_ms {s['max_wait_ms']} + 2 x {fmt(r['half_load_batch_inference_ms'])} ms "
        f"(mean inference per batch at half load) = {fmt(r['p99_target_ms'], 0)} ms; "
        f"with full-load batches ({fmt(r['full_load_batch_inference_ms'])} ms) it would be "
        f"{fmt(r['p99_target_ms_full_batches'], 0)} ms",
        "- issue 10 targets met: "
        + ", ".join(f"{name} {'yes' if met else 'NO'}" for name, met in r["targets_met"].items()),
        "",
    ]
    for title, bd in (("full load", full["breakdown"]), ("cache-hit replay", hit["breakdown"])):
        lines += [
            f"Worker /metrics, {title}: {bd['batches']} batches, mean {fmt(bd['mean_batch_size'])} items"
            + (f", wall {fmt(bd['wall_seconds'])} s" if "wall_seconds" in bd else ""),
            "",
            "| stage | thread | seconds | count | share |",
            "|---|---|---:|---:|---:|",
        ]
        for stage, v in bd["stages"].items():
            thread = "batch" if stage in BATCH_STAGES else "feedback" if stage == "feedback" else "poll loop"
            lines.append(f"| {stage} | {thread} | {fmt(v['seconds'], 3)} | {v['count']} | {fmt(100 * v['share'])}% |")
        lines += [
            "",
            "(poll includes the poll loop's idle waits while batches are in flight; batch stages add up over the "
            "batch threads, which run concurrently; graph_wait: a batch waiting for another's graph run.)",
            "",
        ]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def finite(obj: Any) -> Any:
    """NaN/inf (e.g. a rate over a zero span) become null: strict JSON, and visibly missing."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
