"""The fault schedules. Each runs under a live stream of valid product events against fresh
topics and a fresh consumer group, then drains and tallies (see `accounting.tally`).

Pass (per scenario): nothing lost, no product tagged twice under different event ids, every
valid product tagged and every bad one dead-lettered with a reason, the backlog built up during
the fault committed within `recovery_limit_s` of the fault's end, lag 0 at the end, and no worker
exit we did not cause (a crash, let alone a crash loop), plus the scenario's own checks.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import fuzz
from bench.chaos.accounting import Tally, caught_up, committed_unacknowledged, lag, slope, tally
from bench.chaos.harness import (
    Collector,
    Fleet,
    Offsets,
    Stack,
    Stream,
    make_topics,
    proc_cpu_s,
    proc_fds,
    proc_rss_kb,
)
from bench.chaos.model import POISON_WORD, poisoned_artifact
from bench.chaos.proxy import Mode

log = logging.getLogger(__name__)

INFERENCE_FAILED = "inference_failed"


@dataclass(frozen=True)
class Config:
    fault_s: float = 30.0
    kills: int = 10
    storm_cycles: int = 6
    fuzz_events: int = 10_000
    soak_s: float = 600.0
    soak_ttl_s: int = 60
    rate: float = 10.0  # live stream, events/s (well under one worker's capacity on shared cores)
    recovery_limit_s: float = 60.0
    drain_s: float = 10.0  # the workers' TAGGER_SHUTDOWN__DRAIN_TIMEOUT_S
    final_wait_s: float = 90.0
    log_lines_per_20s: int = 1_000  # bound on a worker's log while the broker is away
    cpu_s_per_20s: float = 5.0
    storm_flood: int = 400  # records that put w1 in backpressure at the start of the storm
    soak_burst: int = 1_500  # records of the soak's capacity measurement
    # Tansu's memory storage costs more CPU the more it holds: at 120/s it went from 6 to 27 CPU-s
    # per 30 s as the topics grew to ~50k records, and past that its fetches crawled while the
    # worker sat idle (at 243/s: after ~90k). The soak is about flat memory, fds and keys over time,
    # not throughput: its stream is capped.
    soak_max_rate: float = 60.0


QUICK = Config(
    fault_s=10.0, kills=3, storm_cycles=2, fuzz_events=300, soak_s=40.0, soak_ttl_s=10, rate=10.0,
    recovery_limit_s=45.0, final_wait_s=45.0, storm_flood=300, soak_burst=300,
)  # fmt: skip


@dataclass
class Result:
    name: str
    tally: Tally
    recovery_s: float | None
    final_lag: int
    crashes: list[tuple[str, int]]
    checks: dict[str, bool] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    lost_committed: int = 0  # lost records below the committed offset: skipped, not just stuck

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def summary(self) -> dict[str, Any]:
        t = self.tally
        return {
            "sent": t.sent,
            "tagged": t.tagged,
            "dead_lettered": t.dead_lettered,
            "lost": t.lost,
            "lost_committed": self.lost_committed,
            "dup_diff_id": t.dup_diff_id,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 1),
            "final_lag": self.final_lag,
            "crashes": len(self.crashes),
            "passed": self.passed,
            "failed_checks": sorted(k for k, ok in self.checks.items() if not ok),
        }


class Run:
    """One scenario's topics, group, workers, stream, collector and offset reader."""

    def __init__(self, stack: Stack, cfg: Config, name: str, model: Path, worker_root: Path, base_env: dict[str, str],
                 logdir: Path, rng: random.Random, pool: list[dict[str, str]], **worker_env: str) -> None:  # fmt: skip
        self.stack, self.cfg, self.name, self.rng, self.model = stack, cfg, name, rng, model
        sfx = f"{name}-{uuid.uuid4().hex[:6]}"
        self.in_topic, self.out_topic, self.dlq_topic = f"in-{sfx}", f"out-{sfx}", f"dlq-{sfx}"
        self.group, self.prefix = f"g-{sfx}", f"chaos-{sfx}:"
        # Own feedback and review topics, created first (a first send to an auto-created topic stalled).
        fb_topic, rev_topic = f"fb-{sfx}", f"rev-{sfx}"
        make_topics(stack.bootstrap, [self.in_topic, self.out_topic, self.dlq_topic, fb_topic, rev_topic])
        env = dict(base_env)
        env.update(
            {
                "TAGGER_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap,
                "TAGGER_KAFKA__INPUT_TOPIC": self.in_topic,
                "TAGGER_KAFKA__OUTPUT_TOPIC": self.out_topic,
                "TAGGER_KAFKA__DLQ_TOPIC": self.dlq_topic,
                "TAGGER_KAFKA__FEEDBACK_TOPIC": fb_topic,
                "TAGGER_KAFKA__REVIEW_TOPIC": rev_topic,
                "TAGGER_KAFKA__GROUP_ID": self.group,
                "TAGGER_KAFKA__SESSION_TIMEOUT_MS": "6000",
                "TAGGER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
                "TAGGER_KAFKA__FETCH_MAX_WAIT_MS": "10",  # Tansu holds every fetch this long
                "TAGGER_REDIS__URL": stack.redis.url,
                "TAGGER_REDIS__KEY_PREFIX": self.prefix,
                "TAGGER_MODEL__PATH": str(model),
                "TAGGER_MODEL__INTRA_OP_THREADS": "1",
                "TAGGER_HTTP__HOST": "127.0.0.1",
                "TAGGER_LOG__JSON_FORMAT": "true",
                "TAGGER_SHUTDOWN__DRAIN_TIMEOUT_S": str(cfg.drain_s),
            }
        )
        env.update(worker_env)
        self.fleet = Fleet(env, worker_root, logdir / name)
        (logdir / name).mkdir(parents=True, exist_ok=True)
        self.stream = Stream(stack.bootstrap, self.in_topic, pool, f"p-{sfx}", rng)
        self.collector = Collector(stack.bootstrap, self.out_topic, self.dlq_topic)
        self.offsets = Offsets(stack.bootstrap, self.group, self.in_topic)
        self.started = time.monotonic()

    def start_workers(self, *names: str, wait: bool = True) -> None:
        for n in names:
            self.fleet.start(n)
        if wait:
            self.fleet.wait_ready(names)

    def wait_caught_up(self, target: dict[int, int], limit_s: float) -> float | None:
        """Seconds until every partition's committed offset reaches `target`; None past `limit_s`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            if caught_up(target, self.offsets.committed()):
                return time.monotonic() - t0
            time.sleep(0.5)
        return None

    def recover(self) -> float | None:
        """Call at the end of a fault: time to commit what was produced up to now."""
        return self.wait_caught_up(self.stream.end_offsets(), self.cfg.recovery_limit_s)

    def finish(
        self,
        recovery_s: float | None,
        checks: dict[str, bool] | None = None,
        extra: dict[str, Any] | None = None,
        expected_dead: dict[tuple[int, int], str] | None = None,
    ) -> Result:
        self.stream.stop()
        final = self.stream.end_offsets()
        self.wait_caught_up(final, self.cfg.final_wait_s)
        final_lag = lag(final, self.offsets.committed())
        sent = self.stream.snapshot()
        deadline = time.monotonic() + 30
        while True:
            tags, dead = self.collector.snapshot()
            t = tally(sent, tags, dead, expected_dead=expected_dead)
            if t.lost == 0 or self.collector.idle_for() > 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        crashes = self.fleet.crashes()
        # Of the lost, those below the committed offset are gone for good (the rest are stuck).
        lost_committed = committed_unacknowledged(sent, self.offsets.committed(), self.collector.acknowledged())
        all_checks = {
            "lost_0": t.lost == 0,
            "dup_diff_id_0": t.dup_diff_id == 0,
            "valid_tagged": t.good_dead_lettered == 0,
            "bad_dead_lettered": t.bad_tagged == 0,
            "reasons_given": t.dead_without_reason == 0,
            "recovered_in_time": recovery_s is not None,
            "final_lag_0": final_lag == 0,
            "no_crash": not crashes,
            "sends_acknowledged": self.stream.failed == 0,
        }
        if expected_dead:
            all_checks["expected_dead_letters"] = t.expected_dead_missing == 0
        all_checks.update(checks or {})
        info = {"reasons": t.reasons, "duplicates_same_id": t.duplicates, "lost_sample": t.lost_sample,
                "send_failures": self.stream.failed, "unparseable_outputs": self.collector.unparseable}  # fmt: skip
        info.update(extra or {})
        result = Result(self.name, t, recovery_s, final_lag, crashes, all_checks, info, time.monotonic() - self.started)
        result.lost_committed = lost_committed
        return result

    def close(self) -> None:
        self.fleet.close()
        self.stream.close()
        self.collector.close()
        self.offsets.close()


Scenario = Callable[[Run], Result]


def kill9(run: Run) -> Result:
    """SIGKILL a worker at random moments (two replicas; the killed one is replaced at once)."""
    run.start_workers("w1", "w2")
    run.stream.start(run.cfg.rate)
    time.sleep(5)
    kills = []
    for _ in range(run.cfg.kills):
        time.sleep(run.rng.uniform(2, 10))
        victim = run.rng.choice(["w1", "w2"])
        run.fleet.kill(victim)
        kills.append(victim)
    return run.finish(run.recover(), extra={"kills": len(kills)})


STORM_WORKER_ENV = {
    # Big batches, one in flight and a drain budget shorter than one batch: a flood keeps w1
    # paused with a batch stuck in inference whenever the group rebalances.
    "TAGGER_BATCHING__MAX_ITEMS": "128",
    "TAGGER_BATCHING__MAX_TOKENS": "65536",
    "TAGGER_BATCHING__MAX_IN_FLIGHT": "1",
    "TAGGER_BATCHING__MAX_WAIT_MS": "200",
    "TAGGER_SHUTDOWN__DRAIN_TIMEOUT_S": "2",
}


def rebalance_storm(run: Run) -> Result:
    """w2 and w3 join and leave repeatedly while w1 is backpressured (partitions paused, a batch
    in inference longer than the drain budget)."""
    for name in ("w1", "w2", "w3"):
        run.fleet.configure(name, **STORM_WORKER_ENV)
    run.start_workers("w1")
    run.stream.start(run.cfg.rate / 2)  # the floods, not the stream, keep w1 backpressured
    flood = run.cfg.storm_flood
    run.stream.send_good(flood)
    paused_seen = _wait_metric(run, "w1", "tagger_paused_partitions", timeout_s=30)
    joins_while_paused = 0
    for cycle in range(run.cfg.storm_cycles):
        for joiner in ("w2", "w3"):
            if (run.fleet.metric("w1", "tagger_paused_partitions") or 0) > 0:
                joins_while_paused += 1
            run.fleet.start(joiner)
            time.sleep(run.rng.uniform(3, 8))
        for leaver in ("w2", "w3"):
            if cycle % 2 and leaver == "w3":
                run.fleet.kill(leaver, restart=False)  # a member that vanishes: its session must expire
            else:
                run.fleet.stop(leaver)
            time.sleep(run.rng.uniform(2, 6))
        run.stream.send_good(flood // 3)  # pile up again so w1 is backpressured at the next join
    checks = {"backpressure_reached": paused_seen, "joined_while_backpressured": joins_while_paused > 0}
    return run.finish(run.recover(), checks, {"joins_while_paused": joins_while_paused})


def _wait_metric(run: Run, worker: str, metric: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (run.fleet.metric(worker, metric) or 0) > 0:
            return True
        time.sleep(0.2)
    return False


def redis_stop(run: Run) -> Result:
    """Redis stopped for `fault_s`, then started again on the same port (empty)."""
    run.start_workers("w1")
    run.stream.start(run.cfg.rate)
    time.sleep(5)
    run.stack.redis.stop()
    time.sleep(run.cfg.fault_s)
    run.stack.redis.start()
    recovery = run.recover()
    keys = _wait_keys(run, 15)
    return run.finish(recovery, {"cache_used_again": keys > 0}, {"cache_keys_after": keys})


def redis_freeze(run: Run) -> Result:
    """Redis frozen (SIGSTOP) for `fault_s`: connections stay open, nothing answers."""
    run.start_workers("w1")
    run.stream.start(run.cfg.rate)
    time.sleep(5)
    run.stack.redis.freeze()
    try:
        time.sleep(run.cfg.fault_s)
    finally:
        run.stack.redis.thaw()
    recovery = run.recover()
    before = _count_keys(run)
    keys = _wait_keys(run, 15, above=before)
    return run.finish(recovery, {"cache_used_again": keys > before}, {"cache_keys_after": keys})


def _count_keys(run: Run) -> int:
    client = run.stack.redis.client()
    try:
        return sum(1 for _ in client.scan_iter(match=run.prefix + "*", count=1_000))
    except Exception:  # Redis may still be coming back
        return 0
    finally:
        client.close()


def _wait_keys(run: Run, timeout_s: float, above: int = 0) -> int:
    deadline = time.monotonic() + timeout_s
    n = _count_keys(run)
    while n <= above and time.monotonic() < deadline:
        time.sleep(0.5)
        n = _count_keys(run)
    return n


def _broker_fault(run: Run, mode: Mode) -> Result:
    run.start_workers("w1")
    run.stream.start(run.cfg.rate)
    time.sleep(5)
    slot = run.fleet.slots["w1"]
    assert run.stack.proxy is not None and slot.proc is not None
    pid = slot.proc.pid
    lines0, cpu0 = run.fleet.log_lines("w1"), proc_cpu_s(pid) or 0.0
    run.stack.proxy.set_mode(mode)
    t0, unready = time.monotonic(), 0
    try:
        while time.monotonic() - t0 < run.cfg.fault_s:
            time.sleep(1)
            # Any sample counts: noticing a silent broker takes up to a session timeout (6 s here).
            if not run.fleet.ready("w1"):
                unready += 1
    finally:
        lines1, cpu1 = run.fleet.log_lines("w1"), proc_cpu_s(pid) or 0.0
        run.stack.proxy.set_mode("pass")
    per20 = 20 / run.cfg.fault_s
    log_rate, cpu_rate = (lines1 - lines0) * per20, (cpu1 - cpu0) * per20
    recovery = run.recover()
    ready_after = _wait_ready(run, "w1", 30)
    checks = {
        "unready_during_fault": unready > 0,
        "ready_after": ready_after,
        "log_bounded": log_rate <= run.cfg.log_lines_per_20s,
        "cpu_bounded": cpu_rate <= run.cfg.cpu_s_per_20s,
    }
    extra = {"log_lines_per_20s": round(log_rate), "cpu_s_per_20s": round(cpu_rate, 2), "unready_samples": unready}
    return run.finish(recovery, checks, extra)


def _wait_ready(run: Run, name: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.fleet.ready(name):
            return True
        time.sleep(0.5)
    return False


def broker_cut(run: Run) -> Result:
    """Every worker connection to the broker closed, new ones refused, for `fault_s`."""
    return _broker_fault(run, "cut")


def broker_blackhole(run: Run) -> Result:
    """Worker connections accepted but nothing forwarded either way for `fault_s`."""
    return _broker_fault(run, "blackhole")


def fuzz_events(run: Run) -> Result:
    """`fuzz_events` bad events (every kind, one 3 MB value) among the live stream."""
    run.start_workers("w1")
    run.stream.start(run.cfg.rate)
    time.sleep(3)
    kinds: dict[str, int] = {}
    for i, f in enumerate(fuzz.generate(run.cfg.fuzz_events, run.rng)):
        run.stream.send_raw(f.key, f.value)
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
        if i % 500 == 499:
            run.stream.flush()
            time.sleep(0.2)
    run.stream.flush()
    return run.finish(run.recover(), extra={"fuzz_kinds": kinds})


def sigterm_frozen_broker(run: Run) -> Result:
    """SIGTERM while batches are in flight and the broker is blackholed: the worker must exit
    within its drain budget and must not have committed anything it had not published."""
    run.start_workers("w1")
    run.stream.start(run.cfg.rate)
    run.stream.send_good(300)  # enough that batches are in flight when the broker goes silent
    time.sleep(4)
    assert run.stack.proxy is not None
    run.stack.proxy.set_mode("blackhole")
    time.sleep(2)
    grace = run.cfg.drain_s + 10  # like the pod's terminationGracePeriodSeconds (30 s vs a 20 s drain)
    code, exit_s = run.fleet.stop("w1", timeout_s=grace)
    time.sleep(2)  # let the collector read every output published before the blackhole
    committed = run.offsets.committed()
    unacked = committed_unacknowledged(run.stream.snapshot(), committed, run.collector.acknowledged())
    run.stack.proxy.set_mode("pass")
    run.start_workers("w2")
    recovery = run.recover()
    checks = {
        "exit_within_drain_budget": code is not None and exit_s <= run.cfg.drain_s + 1,
        "nothing_committed_unacknowledged": unacked == 0,
    }
    extra = {"exit_s": round(exit_s, 1), "exit_code": code, "committed_unacknowledged": unacked}
    return run.finish(recovery, checks, extra)


def inference_failure(run: Run) -> Result:
    """One poison item among good ones in the same batch: it alone is dead-lettered
    (`inference_failed`), its batch-mates are tagged, the worker keeps running. The worker serves
    a copy of the model whose graph raises on the token `poison` (see `model.poisoned_artifact`)."""
    model = poisoned_artifact(run.model)
    run.fleet.start("w1", TAGGER_MODEL__PATH=str(model))
    run.fleet.wait_ready(["w1"])
    run.stream.start(run.cfg.rate)
    time.sleep(3)
    run.stream.send_good(30)
    poison = run.stream.send_good(1, title=f"Nike running shoes {POISON_WORD}")[0]
    run.stream.send_good(30)
    run.stream.flush()
    where = [(s.partition, s.offset) for s in run.stream.snapshot() if s.product_id == poison]
    time.sleep(5)
    recovery = run.recover()
    return run.finish(
        recovery,
        {"poison_sent": bool(where)},
        extra={"poison_at": where[0] if where else None, "model": model.name},
        expected_dead={pos: INFERENCE_FAILED for pos in where},
    )


def soak(run: Run) -> Result:
    """`soak_s` at about half of one worker's measured capacity (at most `soak_max_rate`): RSS and open fds flat, Redis
    keys bounded by the TTL policy (TTL shortened to `soak_ttl_s` so expiry happens in the run)."""
    ttl_env = str(run.cfg.soak_ttl_s)
    run.fleet.configure("w1", TAGGER_REDIS__TTL_S=ttl_env, TAGGER_FEEDBACK__KNOWN_PRODUCT_TTL_S=ttl_env)
    run.start_workers("w1")
    run.stream.send_good(20)  # warm-up: the group join and the first inference are not capacity
    run.stream.flush()
    run.wait_caught_up(run.stream.end_offsets(), 120)
    burst = run.cfg.soak_burst
    t0 = time.monotonic()
    run.stream.send_good(burst)
    run.stream.flush()
    done = run.wait_caught_up(run.stream.end_offsets(), 300)
    capacity = burst / (time.monotonic() - t0) if done else run.cfg.rate * 2
    rate = max(1.0, min(capacity / 2, run.cfg.soak_max_rate))
    log.info("soak: capacity %.0f events/s; streaming at %.0f/s", capacity, rate)
    run.stream.start(rate)
    slot = run.fleet.slots["w1"]
    samples: list[tuple[float, int, int, int]] = []  # (minutes, rss KB, fds, redis keys)
    start = time.monotonic()
    ttl = run.cfg.soak_ttl_s
    while time.monotonic() - start < run.cfg.soak_s:
        time.sleep(5)
        assert slot.proc is not None
        rss, fds = proc_rss_kb(slot.proc.pid), proc_fds(slot.proc.pid)
        if rss is not None and fds is not None:
            samples.append(((time.monotonic() - start) / 60, rss, fds, _count_keys(run)))
    no_ttl = _keys_without_ttl(run)
    steady = samples[len(samples) // 2 :]  # after warm-up: allocator and caches settle first
    rss_slope = slope([(m, r) for m, r, _, _ in steady])
    fd_slope = slope([(m, f) for m, _, f, _ in steady])
    # an event writes at most two keys, each with the TTL: its content's cache entry and its
    # product's "tagged" marker (feedback on products never tagged is dead-lettered)
    key_bound = int(2 * rate * (ttl + 15) * 1.2) + 50
    # Keys written before the stream (warm-up, capacity burst) have expired after one TTL.
    max_keys = max((k for m, _, _, k in samples if m * 60 >= ttl + 15), default=0)
    checks = {
        "rss_flat": rss_slope <= 256,  # KB per minute over the second half
        "fds_flat": bool(steady) and max(f for _, _, f, _ in steady) - min(f for _, _, f, _ in steady) <= 5,
        "redis_keys_bounded": max_keys <= key_bound,
        "redis_keys_expire": no_ttl == 0,
    }
    extra = {
        "rate": round(rate, 1),
        "capacity_eps": round(capacity, 1),
        "rss_kb_first_last": [samples[0][1], samples[-1][1]] if samples else None,
        "rss_slope_kb_per_min": round(rss_slope, 1),
        "fds_first_last": [samples[0][2], samples[-1][2]] if samples else None,
        "fd_slope_per_min": round(fd_slope, 2),
        "redis_keys_max": max_keys,
        "redis_key_bound": key_bound,
        "redis_keys_without_ttl": no_ttl,
    }
    return run.finish(run.recover(), checks, extra)


def _keys_without_ttl(run: Run) -> int:
    client = run.stack.redis.client()
    try:
        return sum(1 for k in client.scan_iter(match=run.prefix + "*", count=1_000) if client.ttl(k) == -1)
    finally:
        client.close()


SCENARIOS: dict[str, Scenario] = {
    "kill9": kill9,
    "rebalance_storm": rebalance_storm,
    "redis_stop": redis_stop,
    "redis_freeze": redis_freeze,
    "broker_cut": broker_cut,
    "broker_blackhole": broker_blackhole,
    "fuzz": fuzz_events,
    "sigterm_frozen_broker": sigterm_frozen_broker,
    "inference_failure": inference_failure,
    "soak": soak,
}
QUICK_SET = ("kill9", "redis_freeze", "broker_blackhole", "fuzz", "sigterm_frozen_broker", "inference_failure")
