"""The review page's HTTP routes (Starlette). Handlers only read the store, render, and hand a
decision to `FeedbackPublisher`; everything they need is passed in (`create_app`)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from worker.review_page.feed import FeedStatus
from worker.review_page.feedback import FeedbackError, FeedbackPublisher, parse_request
from worker.review_page.render import render_page
from worker.review_page.store import ReviewStore

MAX_BODY_BYTES = 16_384


def _csp(nonce: str) -> str:
    # Nothing but our own inline style and script (by nonce) and fetches to this page: even an
    # escaping bug could not run or load anything a product title carries.
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def create_app(
    store: ReviewStore,
    publisher: FeedbackPublisher,
    status: FeedStatus,
    reviewer: str,
    now: Callable[[], datetime],
    new_id: Callable[[], str],
) -> Starlette:
    async def page(request: Request) -> Response:
        items = store.items()
        wanted = request.query_params.get("p")
        selected = store.get(wanted) if wanted is not None else (items[0] if items else None)
        decisions = store.decisions(selected.product_id) if selected is not None else {}
        reviewed = {it.product_id for it in items if store.decisions(it.product_id)}
        nonce = secrets.token_urlsafe(16)
        body = render_page(items, selected, decisions, reviewed, reviewer, nonce)
        code = 404 if wanted is not None and selected is None else 200
        return HTMLResponse(body, code, headers={**HEADERS, "Content-Security-Policy": _csp(nonce)})

    async def items(_request: Request) -> Response:
        out = [
            {
                "product_id": it.product_id,
                "title": it.title,
                "tags": [t.tag for t in it.tags],
                "reasons": [r.kind for r in it.reasons],
                "decisions": {tag: fb.action for tag, fb in store.decisions(it.product_id).items()},
            }
            for it in store.items()
        ]
        return JSONResponse(out, headers=HEADERS)

    async def feedback(request: Request) -> Response:
        try:
            body = await _json_body(request)
            fb = parse_request(body, store, now(), new_id)
            await run_in_threadpool(publisher.publish, fb)
        except FeedbackError as exc:
            return JSONResponse({"ok": False, "error": exc.message}, exc.status, headers=HEADERS)
        store.decide(fb)
        return JSONResponse({"ok": True, "feedback_id": fb.feedback_id, "tag": fb.tag, "action": fb.action})

    async def health(_request: Request) -> Response:
        body = {"connected": status.connected, "items": len(store), "read": status.items, "skipped": status.skipped}
        return JSONResponse(body, headers=HEADERS)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/items", items),
            Route("/api/feedback", feedback, methods=["POST"]),
            Route("/healthz", health),
        ]
    )


async def _json_body(request: Request) -> dict[str, Any]:
    """JSON only, same origin only: a form on another site cannot post a decision (cross-site JSON
    needs a CORS preflight, which this app never grants)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise FeedbackError(415, "send application/json")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise FeedbackError(403, "cross-origin request refused")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise FeedbackError(413, "request too large")
    try:
        body = json.loads(raw)
    except ValueError:
        raise FeedbackError(400, "not JSON") from None
    if not isinstance(body, dict):
        raise FeedbackError(400, "expected a JSON object")
    return body
