"""The naive alternative the worker is compared with: one message at a time, torch, auto-commit.

What a first version of a tagging consumer usually looks like: a kafka-python consumer with
`enable_auto_commit=True`; per message json-decode, tokenize (transformers AutoTokenizer), run the
torch model on that single item, sigmoid + thresholds, `producer.send` one tag event. No batching,
no cache, no ONNX Runtime.

An HF `pipeline("text-classification")` cannot load our model: the tagger is a custom module
(encoder + mean pooling + linear multi-label head, `exporter.model.Tagger`), not an
`AutoModelForSequenceClassification`. The per-message `Tagger` forward below is the same compute a
pipeline would run per item (tokenize one text, one forward pass, sigmoid).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.contract import compose_text


@dataclass
class TorchTagger:
    """The trained torch model with its tokenizer, labels and thresholds (from a `tagger train` run)."""

    model: Any
    tokenizer: Any
    labels: list[str]
    thresholds: Any  # torch.Tensor [labels], on the CPU
    max_seq_len: int
    device: str = "cpu"

    @classmethod
    def load(cls, run_dir: Path, threads: int | None = None, device: str = "cpu") -> TorchTagger:
        import torch
        from transformers import AutoTokenizer

        from exporter.model import Tagger

        torch.set_num_threads(threads or os.cpu_count() or 1)
        model, meta = Tagger.load(run_dir)
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
        # The naive competitor: the encoder's own tags over threshold (no lexical channel, no decisions).
        thresholds = torch.tensor(meta.decisions.thresholds, dtype=torch.float32)
        model.to(device)
        return cls(model, tokenizer, meta.decisions.labels, thresholds, meta.max_seq_len, device)

    def tag(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """Tags over threshold per text, highest first; texts are padded to the longest in the list."""
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_len, return_tensors="pt")
        with torch.inference_mode():
            out = self.model(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            # A model with an extractive head also returns span logits (the ONNX graph computes them too).
            logits = out[0] if isinstance(out, tuple) else out
            scores = torch.sigmoid(logits).cpu()
        out = []
        for row in scores:
            hits = torch.nonzero(row >= self.thresholds).flatten().tolist()
            hits.sort(key=lambda i: -float(row[i]))
            out.append([(self.labels[i], round(float(row[i]), 4)) for i in hits])
        return out


@dataclass(frozen=True)
class Competitor:
    """Where a competitor consumer reads and writes, and its group's timeouts."""

    bootstrap: str
    input_topic: str
    output_topic: str
    group_id: str
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000

    def consumer(self, **config: Any) -> Any:
        """A kafka-python consumer of `input_topic` in `group_id`, from the earliest offset."""
        from kafka import KafkaConsumer

        return KafkaConsumer(
            self.input_topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            **config,
        )

    def timing(self, name: str, done: int, started: float | None, timeout_s: float) -> dict[str, float]:
        """Events, seconds from the first message and their rate; raises when nothing arrived."""
        if started is None or done == 0:
            raise RuntimeError(f"{name} consumer received no messages from {self.input_topic} within {timeout_s:.0f} s")
        elapsed = time.perf_counter() - started
        return {"events": float(done), "elapsed_s": elapsed, "eps": done / elapsed}


def run_naive(c: Competitor, tagger: TorchTagger, n_messages: int, timeout_s: float = 300) -> dict[str, float]:
    """Consume `n_messages` (already in `input_topic`) one by one; return timing.

    The clock starts at the first message received (group join excluded) and stops after the
    producer's final flush, so `eps = n / elapsed` is the steady per-message rate.
    """
    from kafka import KafkaProducer

    consumer = c.consumer(enable_auto_commit=True, consumer_timeout_ms=int(timeout_s * 1000))
    producer = KafkaProducer(bootstrap_servers=c.bootstrap)
    done, started = 0, None
    try:
        for msg in consumer:
            if started is None:
                started = time.perf_counter()
            event = json.loads(msg.value)
            text = compose_text(event["title"], event.get("description"))
            tags = tagger.tag([text])[0]
            value = {"product_id": event["product_id"], "tags": [{"tag": t, "score": s} for t, s in tags]}
            producer.send(c.output_topic, key=event["product_id"].encode(), value=json.dumps(value).encode())
            done += 1
            if done >= n_messages:
                break
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
        consumer.close()
    return c.timing("naive", done, started, timeout_s)
