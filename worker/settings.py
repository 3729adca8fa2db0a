"""The worker's one settings object: env prefix `TAGGER_`, nested sections joined by `__`.

Built once at start-up (`load_settings`) and passed down; nothing else reads the environment.
A bad value fails at start with the field's env name in the message.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.events import MAX_DESCRIPTION_CHARS, MAX_PRODUCT_ID_CHARS, MAX_TITLE_CHARS

ENV_PREFIX = "TAGGER_"
NESTED = "__"
Precision = Literal["fp32", "fp16", "int8"]  # model.onnx, model.fp16.onnx, model.int8.onnx


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("localhost:9092", description="Comma-separated Kafka bootstrap servers.")
    input_topic: str = Field("products.new", description="Topic of product events to tag.")
    output_topic: str = Field("products.tags", description="Topic the tag events are published to.")
    dlq_topic: str = Field("products.dlq", description="Dead-letter topic for malformed product events.")
    feedback_topic: str = Field(
        "products.tag-feedback", description="Reviewers' accept/reject/add decisions, consumed into Redis overrides."
    )
    review_topic: str = Field("products.review", description="Uncertain items for human review (ReviewItem).")
    group_id: str = Field("product-tagger", description="Consumer group; replicas share the input partitions.")
    client_id: str = Field("product-tagger", description="Kafka client id (shows up in broker logs/quotas).")
    client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python",
        description="Kafka client library: kafka-python (pure Python) or confluent (librdkafka, faster; see README).",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (mount from a Secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle for TLS to the brokers.")
    session_timeout_ms: int = Field(10_000, ge=1_000, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="Consumer heartbeat interval.")
    max_poll_interval_ms: int = Field(
        300_000, ge=10_000, description="Max time between polls before the member is evicted."
    )
    max_poll_records: int = Field(
        2_000,
        ge=1,
        le=100_000,
        description="Records returned by one poll (a batch of cache hits takes up to one poll).",
    )
    poll_timeout_ms: int = Field(50, ge=1, le=5_000, description="How long one poll waits for records.")
    fetch_max_bytes: int = Field(52_428_800, ge=1_024, description="Max bytes per fetch response.")
    fetch_max_wait_ms: int = Field(
        100, ge=0, le=5_000, description="Longest a fetch waits for data (bounds latency on a quiet topic)."
    )
    commit_interval_ms: int = Field(
        200,
        ge=0,
        le=60_000,
        description="Commit acknowledged offsets at most this often (0: after every batch); always on drain.",
    )
    produce_timeout_s: float = Field(
        30.0, gt=0, description="Wait for the broker to acknowledge a batch's tag events before retrying."
    )
    linger_ms: int = Field(5, ge=0, description="Producer linger: small batches of tag events per request.")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="Upper bound of the reconnect/retry backoff.")
    bootstrap_timeout_s: float = Field(10.0, gt=0, description="How long one connection attempt may take.")

    def auth_options(self, mechanism: str, username: str, password: str, cafile: str) -> dict[str, str | None]:
        """The SASL and TLS settings that are set, under one client library's option names."""
        out: dict[str, str | None] = {}
        if self.sasl_mechanism:
            out[mechanism] = self.sasl_mechanism
            out[username] = self.sasl_username
            out[password] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile:
            out[cafile] = str(self.ssl_cafile)
        return out

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL_* security_protocol needs sasl_mechanism, sasl_username and sasl_password")
        return self


class RedisSettings(_Section):
    enabled: bool = Field(True, description="Use the Redis result cache (off: every product is inferred).")
    url: str = Field("redis://localhost:6379/0", description="Redis URL (redis:// or rediss:// for TLS).")
    password: SecretStr | None = Field(None, description="Redis password, kept out of the URL (a Secret).")
    key_prefix: str = Field("tagger:", description="Prefix of every cache key (share a Redis safely).")
    ttl_s: int = Field(7 * 24 * 3600, ge=1, description="Lifetime of a cached tag result.")
    timeout_s: float = Field(0.5, gt=0, description="Socket timeout: a slow cache must not stall tagging.")
    retry_interval_s: float = Field(5.0, gt=0, description="After a Redis error, how long to run uncached.")


class ModelSettings(_Section):
    path: Path = Field(Path("/models/current"), description="Model artifact directory (with manifest.json).")
    provider: Literal["cpu", "cuda"] = Field("cpu", description="ONNX Runtime execution provider.")
    allow_cpu_fallback: bool = Field(
        False, description="When provider=cuda is unavailable, run on CPU instead of failing at start."
    )
    int8: bool | None = Field(
        None,
        description="Serve model.int8.onnx (true) or model.onnx (false); unset: int8 on CPU when the artifact has it.",
    )
    precision: Precision | None = Field(
        None,
        description="Graph to serve: fp32, int8 (CPU) or fp16 (GPU); unset: int8 on CPU, fp16 on CUDA when present.",
    )
    io_binding: bool | None = Field(
        None, description="Feed ONNX Runtime through I/O binding; unset: on for CUDA (fewer copies), off for CPU."
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: one per core).")
    intra_op_spinning: bool = Field(
        False,
        description="Let ONNX Runtime's intra-op threads spin between runs (off: the cores go to the other batch "
        "thread and the poll loop; +18% tagged/s with 2 batch threads on 2 cores).",
    )
    verify_hashes: bool = Field(True, description="Check every artifact file's sha256 against the manifest.")
    reload_interval_s: float = Field(
        10.0,
        ge=0,
        description="Check the model path (directory or symlink) for a new artifact this often; 0: no hot reload.",
    )

    @model_validator(mode="after")
    def _one_precision(self) -> ModelSettings:
        if self.int8 is not None and self.precision is not None and self.int8 != (self.precision == "int8"):
            raise ValueError(f"int8={self.int8} contradicts precision={self.precision}: set only precision")
        return self

    def serve_precision(self, artifact_files: Collection[str]) -> Precision:
        """int8 is ~2x faster on CPU at equal accuracy (README); fp16 is the GPU's native fast path.
        An explicit `precision` (or the older `int8` switch) wins; otherwise the best graph the
        artifact has for the provider, else fp32."""
        if self.precision is not None:
            return self.precision
        if self.int8 is not None:
            return "int8" if self.int8 else "fp32"
        if self.provider == "cpu" and "model.int8.onnx" in artifact_files:
            return "int8"
        if self.provider == "cuda" and "model.fp16.onnx" in artifact_files:
            return "fp16"
        return "fp32"

    def serve_int8(self, artifact_has_int8: bool) -> bool:
        return self.serve_precision({"model.int8.onnx"} if artifact_has_int8 else set()) == "int8"


class ShadowSettings(_Section):
    path: Path | None = Field(
        None, description="Candidate model artifact run on the live batches (unset: no shadow model)."
    )
    output_topic: str = Field("products.tags.shadow", description="Topic of the shadow model's tag events only.")
    budget_ms: float = Field(
        200.0,
        ge=0,
        description="Skip shadow inference for a batch that waited longer than this (the worker is behind).",
    )


class EvidenceSettings(_Section):
    enabled: bool = Field(True, description="Add evidence (spans of the title/description) to every tag.")
    max_spans: int = Field(3, ge=1, le=20, description="Evidence spans per tag, strongest first.")


class ReviewSettings(_Section):
    enabled: bool = Field(True, description="Also publish uncertain items to the review topic.")
    margin: float = Field(
        0.1, ge=0.0, le=1.0, description="A tag whose score is within this of its threshold routes the item to review."
    )
    near_misses: bool = Field(
        False,
        description="Also route items with a label within the margin below its threshold (measured: many more "
        "items; see README). Near misses are offered as candidates either way.",
    )
    empty_facet_share: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="A single-valued facet carried by at least this share of training items is expected: "
        "an item without it goes to review (1.0: never).",
    )


class FeedbackSettings(_Section):
    enabled: bool = Field(
        True, description="Consume the feedback topic into Redis overrides and apply them (needs Redis)."
    )
    max_items: int = Field(500, ge=1, le=10_000, description="Feedback records written to Redis per round trip.")
    known_product_ttl_s: int = Field(
        90 * 24 * 3600,
        ge=1,
        description="A tagged product stays known to feedback this long after its last tag event "
        "(later feedback on it is dead-lettered unknown_product); bounds Redis like the cache TTL.",
    )


class BatchingSettings(_Section):
    max_items: int = Field(64, ge=1, le=4_096, description="Close a micro-batch at this many products.")
    max_tokens: int = Field(8_192, ge=16, description="Token budget of one inference call (padded batch x sequence).")
    max_wait_ms: float = Field(20.0, ge=0, description="Close a micro-batch this long after its first item.")
    max_in_flight: int = Field(
        2, ge=1, le=8, description="Batches tagged/published at once, each on its own thread (one graph run at a time)."
    )
    adaptive: bool = Field(
        True, description="Send queued items at once when no batch is running (max_wait_ms applies only when busy)."
    )


class LimitSettings(_Section):
    max_message_bytes: int = Field(1_000_000, ge=256, description="Larger product events are dead-lettered.")
    max_title_chars: int = Field(MAX_TITLE_CHARS, ge=1, description="Longer titles are dead-lettered.")
    max_description_chars: int = Field(
        MAX_DESCRIPTION_CHARS, ge=0, description="Longer descriptions are dead-lettered."
    )
    max_product_id_chars: int = Field(MAX_PRODUCT_ID_CHARS, ge=1, description="Longer product ids are dead-lettered.")
    # A dead letter must always be publishable: base64 of the cap plus its other fields stays well
    # under a default Kafka broker's 1 MB message.max.bytes.
    max_dead_letter_value_bytes: int = Field(
        262_144,
        ge=0,
        le=524_288,
        description="Original value bytes a dead letter carries (longer: a prefix, with size, sha256, truncated).",
    )
    max_dead_letter_key_bytes: int = Field(
        1_024,
        ge=0,
        le=16_384,
        description="Original key bytes a dead letter carries (longer: a prefix, and no record key).",
    )


class HttpSettings(_Section):
    host: str = Field("0.0.0.0", description="Bind address of /livez, /readyz and /metrics.")
    port: int = Field(8080, ge=0, le=65_535, description="Port of the health and metrics server (0: off).")


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per log line (for log shippers).")


class ShutdownSettings(_Section):
    drain_timeout_s: float = Field(
        20.0, gt=0, description="SIGTERM/rebalance budget to finish, publish and commit in-flight batches."
    )


class ReviewPageSettings(_Section):
    host: str = Field(
        "127.0.0.1", description="Bind address of the review page (`tagger review`; it has no login: keep it local)."
    )
    port: int = Field(8090, ge=0, le=65_535, description="Port of the review page (0: any free port).")
    group_id: str = Field(
        "product-tagger-review",
        description="Consumer group of the page; it never commits, so every start replays both topics.",
    )
    reviewer: str | None = Field(None, description="Reviewer name pre-filled on the page (editable there).")
    max_items: int = Field(
        5_000, ge=1, le=1_000_000, description="Products kept in memory by the page (latest item each, oldest dropped)."
    )
    publish_timeout_s: float = Field(
        10.0, gt=0, le=120, description="Wait this long for a decision to be acknowledged before showing an error."
    )


class WorkerSettings(BaseSettings):
    """Everything the `tagger worker` and `tagger review` processes can be told; see the README's
    generated table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED, frozen=True, extra="forbid")

    kafka: KafkaSettings = Field(KafkaSettings(), description="Kafka connection and topics.")
    redis: RedisSettings = Field(RedisSettings(), description="Result cache.")
    model: ModelSettings = Field(ModelSettings(), description="Model artifact and runtime.")
    shadow: ShadowSettings = Field(ShadowSettings(), description="Optional shadow (candidate) model.")
    evidence: EvidenceSettings = Field(EvidenceSettings(), description="Evidence spans on tags.")
    review: ReviewSettings = Field(ReviewSettings(), description="Review queue.")
    feedback: FeedbackSettings = Field(FeedbackSettings(), description="Human corrections (overrides).")
    batching: BatchingSettings = Field(BatchingSettings(), description="Micro-batching.")
    limits: LimitSettings = Field(LimitSettings(), description="Input bounds.")
    http: HttpSettings = Field(HttpSettings(), description="Health and metrics endpoint.")
    log: LogSettings = Field(LogSettings(), description="Logging.")
    shutdown: ShutdownSettings = Field(ShutdownSettings(), description="Graceful drain.")
    review_page: ReviewPageSettings = Field(ReviewPageSettings(), description="The review page (`tagger review`).")

    @model_validator(mode="after")
    def _shadow_topic_apart(self) -> WorkerSettings:
        if self.shadow.path is not None and self.shadow.output_topic in (self.kafka.output_topic, self.kafka.dlq_topic):
            raise ValueError(
                "TAGGER_SHADOW__OUTPUT_TOPIC must differ from TAGGER_KAFKA__OUTPUT_TOPIC and TAGGER_KAFKA__DLQ_TOPIC"
            )
        return self


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable."""


def env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + NESTED.join(str(p) for p in loc).upper()


def load_settings(**overrides: object) -> WorkerSettings:
    """Read `TAGGER_*` from the environment; raise `SettingsError` naming every bad field."""
    try:
        return WorkerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [f"{env_name(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


def _type_name(ann: object) -> str:
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) is Literal:
        return " / ".join(str(a) for a in get_args(ann))
    if args and len(args) < len(get_args(ann)):  # X | None
        return _type_name(args[0] if len(args) == 1 else ann) + " (optional)"
    if ann is SecretStr:
        return "secret"
    return getattr(ann, "__name__", str(ann)).replace("Path", "path")


def _default_text(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def iter_fields() -> list[tuple[str, str, str, str]]:
    """(env var, type, default, description) of every leaf setting, for docs and manifest checks."""
    rows: list[tuple[str, str, str, str]] = []
    for section, field in WorkerSettings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, leaf in model.model_fields.items():
            default = leaf.get_default(call_default_factory=True)
            rows.append(
                (env_name((section, name)), _type_name(leaf.annotation), _default_text(default), leaf.description or "")
            )
    return rows
