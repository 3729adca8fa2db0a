"""The review page's HTML, built here in Python (no template engine): every piece of product data
(titles, descriptions, ids, tags, reviewer names) is untrusted and goes through `html.escape`.

Evidence is highlighted on the server: its offsets are Python str indices (code points) and Python
slices the text by them directly; JavaScript strings count UTF-16 units, which would shift every
span after an emoji or another character outside the BMP."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from string import Template
from urllib.parse import quote

from schemas.events import Evidence, ReviewItem, TagFeedback, TagScore

STATE_TEXT = {"accept": "accepted", "reject": "rejected", "add": "added"}
MAX_LIST_TITLE = 120  # characters of a title shown in the queue list
MAX_LISTED = 200  # items listed in the queue (the store may hold thousands; a page stays small)


@dataclass(frozen=True)
class Span:
    """A piece of evidence checked against the text it points into: [start, end) of tag `index`."""

    start: int
    end: int
    index: int


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def valid(ev: Evidence, text: str | None) -> bool:
    """The contract: 0 <= start < end <= len(text) and text[start:end] == ev.text."""
    return text is not None and 0 <= ev.start < ev.end <= len(text) and text[ev.start : ev.end] == ev.text


def spans(field: str, text: str | None, tags: Sequence[TagScore]) -> list[Span]:
    """The valid evidence of `tags` in one field; evidence that does not match is left out (never
    highlight the wrong characters)."""
    return [
        Span(ev.start, ev.end, i)
        for i, t in enumerate(tags)
        for ev in t.evidence or ()
        if ev.field == field and valid(ev, text)
    ]


def highlight(text: str, marks: Iterable[Span], labels: Sequence[str]) -> str:
    """Escaped `text` with each stretch covered by evidence in a `<mark>` naming its tags
    (`data-tags="t0 t2"`, the indexes the page's script uses to light up the focused tag's marks).
    Overlapping spans are cut at every boundary, so marks never nest."""
    marks = list(marks)
    cuts = sorted({0, len(text)} | {m.start for m in marks} | {m.end for m in marks})
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        piece = esc(text[a:b])
        covering = sorted({m.index for m in marks if m.start <= a and b <= m.end})
        if covering:
            ids = " ".join(f"t{i}" for i in covering)
            names = ", ".join(labels[i] for i in covering)
            out.append(f'<mark class="ev" data-tags="{ids}" title="{esc(names)}">{piece}</mark>')
        else:
            out.append(piece)
    return "".join(out)


def item_href(product_id: str) -> str:
    return "/?p=" + quote(product_id, safe="")


def _reason_text(item: ReviewItem, tag: str) -> str:
    parts = []
    for r in item.reasons:
        if r.kind == "near_threshold" and r.tag == tag:
            parts.append("near threshold" + (f" {r.threshold:.2f}" if r.threshold is not None else ""))
    return "; ".join(parts)


def _evidence_text(tag: TagScore, item: ReviewItem) -> str:
    shown = []
    for ev in tag.evidence or ():
        where = f"in {ev.field}" if valid(ev, getattr(item, ev.field)) else f"in {ev.field}, offsets do not match"
        shown.append(f"“{esc(ev.text)}” {where}")
    return "; ".join(shown)


@dataclass(frozen=True)
class Row:
    """One line of the detail view: a published tag, a candidate, or a tag a reviewer added."""

    tag: str
    score: float | None
    kind: str  # "tag" | "candidate" | "added"
    source: str | None
    reason: str
    evidence: str


def rows(item: ReviewItem, decisions: dict[str, TagFeedback]) -> list[Row]:
    out = [Row(t.tag, t.score, "tag", t.source, _reason_text(item, t.tag), _evidence_text(t, item)) for t in item.tags]
    shown = {t.tag for t in item.tags}
    out += [
        Row(t.tag, t.score, "candidate", t.source, "below threshold", _evidence_text(t, item))
        for t in item.candidates
        if t.tag not in shown
    ]
    shown |= {t.tag for t in item.candidates}
    out += [
        Row(tag, None, "added", "human", "", "")
        for tag, fb in decisions.items()
        if fb.action == "add" and tag not in shown
    ]
    return out


def render_row(i: int, row: Row, decision: TagFeedback | None) -> str:
    state = decision.action if decision is not None else ""
    state_text = f"{STATE_TEXT[state]} by {esc(decision.reviewer)}" if decision is not None else ""
    score = "" if row.score is None else f"{row.score:.2f}"
    meter = f'<meter min="0" max="1" value="{score}" aria-hidden="true"></meter>' if row.score is not None else ""
    kind_label = {"tag": "", "candidate": "candidate", "added": "added by a reviewer"}[row.kind]
    label = ", ".join(p for p in (row.tag, kind_label, f"score {score}" if score else "", row.reason, state_text) if p)
    action = "add" if row.kind == "candidate" else "accept"
    badges = (f' <span class="badge">{esc(kind_label)}</span>' if kind_label else "") + (
        ' <span class="badge human">human</span>' if row.source == "human" and row.kind != "added" else ""
    )
    return (
        f'<li class="row {row.kind}" id="row-{i}" tabindex="-1" data-i="{i}" data-tag="{esc(row.tag)}"'
        f' data-kind="{row.kind}" data-state="{state}" aria-label="{esc(label)}">'
        f'<span class="head"><span class="name">{esc(row.tag)}</span>{badges}</span>'
        f'{meter}<span class="score">{score}</span>'
        + (f'<span class="reason">{esc(row.reason)}</span>' if row.reason else "")
        + f'<span class="state">{state_text}</span>'
        + (f'<span class="evidence">{row.evidence}</span>' if row.evidence else "")
        + '<span class="actions">'
        f'<button type="button" data-action="{action}" aria-label="{action.capitalize()} {esc(row.tag)}">'
        f"{action.capitalize()} <kbd>a</kbd></button>"
        f'<button type="button" data-action="reject" aria-label="Reject {esc(row.tag)}">Reject <kbd>r</kbd></button>'
        "</span></li>"
    )


def render_detail(item: ReviewItem, decisions: dict[str, TagFeedback]) -> str:
    lines = rows(item, decisions)
    labels = [r.tag for r in lines]
    scored = [*item.tags, *(t for t in item.candidates if t.tag not in {x.tag for x in item.tags})]
    title = highlight(item.title, spans("title", item.title, scored), labels)
    desc = (
        highlight(item.description, spans("description", item.description, scored), labels)
        if item.description
        else '<span class="none">(no description)</span>'
    )
    empty = [r for r in item.reasons if r.kind == "empty_facet"]
    empty_html = (
        '<p class="empty">No tag for facet '
        + ", ".join(f"<b>{esc(r.facet)}</b>" for r in empty)
        + " (usually tagged).</p>"
        if empty
        else ""
    )
    options = "".join(f'<option value="{esc(t.tag)}"></option>' for t in item.candidates)
    return (
        f'<article id="detail" data-product="{esc(item.product_id)}" aria-labelledby="item-title">'
        f'<h2 id="item-title" class="text">{title}</h2>'
        f'<p class="meta">product <code>{esc(item.product_id)}</code> · model <code>{esc(item.model_version)}</code>'
        f" · tagged {esc(_when(item.tagged_at))}</p>"
        f'<h3 id="desc-h">Description</h3><p class="text desc" aria-labelledby="desc-h">{desc}</p>'
        f"{empty_html}"
        f'<h3 id="tags-h">Tags</h3><ol id="rows" class="rows" aria-labelledby="tags-h">'
        + "".join(render_row(i, r, decisions.get(r.tag)) for i, r in enumerate(lines))
        + "</ol>"
        '<form id="add-form" autocomplete="off">'
        '<label for="add-tag">Add a tag <kbd>i</kbd></label>'
        '<input id="add-tag" name="tag" list="candidates" placeholder="facet:value" required'
        ' pattern="[^:]+:.+" title="facet:value, e.g. brand:Acme">'
        f'<datalist id="candidates">{options}</datalist>'
        '<button type="submit">Add</button></form>'
        "</article>"
    )


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def render_queue(items: Sequence[ReviewItem], selected: str | None, reviewed: set[str]) -> str:
    if not items:
        return '<p class="none">The review queue is empty (waiting for items).</p>'
    out = []
    for it in items[:MAX_LISTED]:
        title = it.title if len(it.title) <= MAX_LIST_TITLE else it.title[: MAX_LIST_TITLE - 1] + "…"
        why = ", ".join(sorted({r.kind.replace("_", " ") for r in it.reasons}))
        current = ' aria-current="page"' if it.product_id == selected else ""
        done = '<span class="badge">reviewed</span>' if it.product_id in reviewed else ""
        out.append(
            f'<li><a href="{esc(item_href(it.product_id))}"{current}><span class="t">{esc(title)}</span>'
            f'<span class="why">{len(it.tags)} tags · {esc(why)}</span>{done}</a></li>'
        )
    more = len(items) - MAX_LISTED
    tail = f'<p class="none">and {more} older items not listed</p>' if more > 0 else ""
    return f'<ol id="queue" class="queue">{"".join(out)}</ol>{tail}'


@cache
def _asset(name: str) -> str:
    return resources.files("worker.review_page").joinpath("static", name).read_text(encoding="utf-8")


def render_page(
    items: Sequence[ReviewItem],
    selected: ReviewItem | None,
    decisions: dict[str, TagFeedback],
    reviewed: set[str],
    reviewer: str,
    nonce: str,
) -> str:
    """The whole page; CSS and script inline (nothing is fetched from anywhere), allowed by `nonce`."""
    detail = (
        render_detail(selected, decisions)
        if selected is not None
        else '<p class="none">Select an item (<kbd>n</kbd> / <kbd>p</kbd>, or click one).</p>'
    )
    return Template(_asset("page.html")).substitute(
        nonce=esc(nonce),
        css=_asset("review.css"),
        js=_asset("review.js"),
        count=len(items),
        queue=render_queue(items, selected.product_id if selected else None, reviewed),
        detail=detail,
        reviewer=esc(reviewer),
    )
