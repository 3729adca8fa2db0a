"""A review item whose evidence offsets were counted by hand (code points), for the review page's tests."""

from __future__ import annotations

from typing import Any

# index:  N=0 i=1 k=2 e=3 ' '=4 跑=5 步=6 鞋=7 ' '=8 男=9 款=10 ' '=11 🏃=12 ' '=13 r=14 ... (running shoe = 14..26)
TITLE = "Nike 跑步鞋 男款 🏃 running shoe"
# index: B=0 .. "mesh"=11..15 (end exclusive); "\n"=15; 耐=16 磨=17 ... 常=26 慢=27 跑=28 。=29
DESCRIPTION = "Breathable mesh\n耐磨橡胶大底，适合日常慢跑。"


def span(field: str, start: int, end: int, text: str) -> dict[str, Any]:
    return {"field": field, "start": start, "end": end, "text": text}


def review_item(product_id: str = "p-1", title: str = TITLE, description: str | None = DESCRIPTION) -> dict[str, Any]:
    return {
        "event_id": f"e-{product_id}",
        "product_id": product_id,
        "model_version": "m-abc123",
        "content_hash": "h1",
        "tagged_at": "2026-12-01T09:30:00Z",
        "cached": False,
        "source_topic": "products.new",
        "source_partition": 0,
        "source_offset": 7,
        "title": title,
        "description": description,
        "tags": [
            {"tag": "brand:Nike", "score": 0.93, "evidence": [span("title", 0, 4, "Nike")]},
            {
                "tag": "category:Shoes",
                "score": 0.62,
                "evidence": [
                    span("title", 5, 8, "跑步鞋"),
                    span("title", 14, 26, "running shoe"),
                    span("description", 27, 29, "慢跑"),
                ],
            },
            {"tag": "color:Black", "score": 0.58},
        ],
        "reasons": [
            {"kind": "near_threshold", "facet": "category", "tag": "category:Shoes", "score": 0.62, "threshold": 0.6},
            {"kind": "empty_facet", "facet": "gender"},
        ],
        "candidates": [
            {"tag": "gender:Men", "score": 0.41, "evidence": [span("title", 9, 11, "男款")]},
            {"tag": "material:Mesh", "score": 0.33, "evidence": [span("description", 11, 15, "mesh")]},
        ],
    }
