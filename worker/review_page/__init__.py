"""`tagger review`: a small web page over the review queue (`products.review`) that publishes
reviewers' decisions (`products.tag-feedback`).

- `store.py`: the page's bounded in-memory view (latest item per product, decisions per tag); pure.
- `render.py`: HTML of the page, evidence highlighted in the original text, everything escaped; pure.
- `feedback.py`: a reviewer's request -> a validated `TagFeedback`; publishing it until acknowledged.
- `feed.py`: the thread that reads both topics into the store (the transport seams of `worker/transport.py`).
- `app.py`: the Starlette app (routes only); `main.py`: the composition root and the CLI.
"""
