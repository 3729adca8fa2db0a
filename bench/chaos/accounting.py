"""Pure bookkeeping of a scenario: what was sent, what came out, what is missing.

A sent record is identified by where it landed, (partition, offset): tag events and dead
letters both carry their source partition and offset, so one key matches a record to its
outcome whatever the worker made of it. No I/O here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    product_id: str | None  # None for a fuzzed record (it has no valid product id)
    good: bool  # a valid product event that must be tagged


@dataclass(frozen=True)
class TagOut:
    event_id: str
    product_id: str
    content_hash: str
    model_version: str
    partition: int
    offset: int


@dataclass(frozen=True)
class DeadOut:
    reason: str
    partition: int
    offset: int


@dataclass
class Tally:
    sent: int = 0
    tagged: int = 0
    dead_lettered: int = 0
    lost: int = 0
    dup_diff_id: int = 0
    duplicates: int = 0  # extra tag events with the same event id (replays: allowed)
    good_dead_lettered: int = 0  # valid products that were dead-lettered instead of tagged
    bad_tagged: int = 0  # bad records that were tagged
    dead_without_reason: int = 0
    expected_dead_missing: int = 0  # records of `expected_dead` not dead-lettered with their reason
    reasons: dict[str, int] = field(default_factory=dict)
    lost_sample: list[tuple[int, int]] = field(default_factory=list)


def tally(
    sent: Sequence[Sent],
    tags: Iterable[TagOut],
    dead: Iterable[DeadOut],
    *,
    expected_dead: Mapping[tuple[int, int], str] | None = None,
) -> Tally:
    """Match outcomes to sent records.

    `expected_dead` names good records that are supposed to be dead-lettered and the reason
    (the poison item of the inference-failure scenario); they count as correct, not as
    `good_dead_lettered`, when they carry that reason.
    """
    expected_dead = expected_dead or {}
    tags_by_pos: dict[tuple[int, int], list[TagOut]] = defaultdict(list)
    ids_by_content: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for t in tags:
        tags_by_pos[(t.partition, t.offset)].append(t)
        ids_by_content[(t.product_id, t.content_hash, t.model_version)].add(t.event_id)
    dead_by_pos: dict[tuple[int, int], list[DeadOut]] = defaultdict(list)
    reasons: dict[str, int] = defaultdict(int)
    for d in dead:
        dead_by_pos[(d.partition, d.offset)].append(d)

    out = Tally(sent=len(sent))
    sent_pos = {(s.partition, s.offset) for s in sent}
    for s in sent:
        pos = (s.partition, s.offset)
        tagged, dead_letters = tags_by_pos.get(pos, []), dead_by_pos.get(pos, [])
        if tagged:
            out.tagged += 1
            out.duplicates += len(tagged) - 1
            if not s.good:
                out.bad_tagged += 1
        if dead_letters:
            out.dead_lettered += 1
            reason = dead_letters[0].reason
            reasons[reason] += 1
            if not all(x.reason for x in dead_letters):
                out.dead_without_reason += 1
            if s.good and expected_dead.get(pos) != reason:
                out.good_dead_lettered += 1
        if not tagged and not dead_letters:
            out.lost += 1
            if len(out.lost_sample) < 10:
                out.lost_sample.append(pos)
    out.expected_dead_missing = sum(
        1
        for pos, reason in expected_dead.items()
        if pos in sent_pos and not any(x.reason == reason for x in dead_by_pos.get(pos, []))
    )
    out.dup_diff_id = sum(1 for ids in ids_by_content.values() if len(ids) > 1)
    out.reasons = dict(sorted(reasons.items()))
    return out


def lag(end_offsets: Mapping[int, int], committed: Mapping[int, int | None]) -> int:
    """Produced end offsets minus committed offsets, summed over partitions (never negative)."""
    return sum(max(0, end - (committed.get(p) or 0)) for p, end in end_offsets.items())


def caught_up(target: Mapping[int, int], committed: Mapping[int, int | None]) -> bool:
    """Every partition's committed offset has reached `target` (e.g. the end offsets at fault end)."""
    return all((committed.get(p) or 0) >= end for p, end in target.items())


def committed_unacknowledged(
    sent: Sequence[Sent], committed: Mapping[int, int | None], acknowledged: set[tuple[int, int]]
) -> int:
    """Records below their partition's committed offset with no tag event or dead letter yet:
    the worker committed past work it had not published (lost for good if it stops now)."""
    return sum(
        1 for s in sent if s.offset < (committed.get(s.partition) or 0) and (s.partition, s.offset) not in acknowledged
    )


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points; 0.0 for fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / var
