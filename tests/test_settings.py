import pytest

from worker.settings import SettingsError, iter_fields, load_settings


def test_defaults_and_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGER_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("TAGGER_BATCHING__MAX_ITEMS", "32")
    monkeypatch.setenv("TAGGER_REDIS__PASSWORD", "s3cret")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.kafka.input_topic == "products.new" and s.kafka.output_topic == "products.tags"
    assert s.kafka.dlq_topic == "products.dlq"
    assert s.batching.max_items == 32
    assert s.redis.password is not None and "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TAGGER_BATCHING__MAX_ITEMS", "0"),
        ("TAGGER_BATCHING__MAX_WAIT_MS", "soon"),
        ("TAGGER_MODEL__PROVIDER", "tpu"),
        ("TAGGER_HTTP__PORT", "70000"),
    ],
)
def test_bad_setting_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_unknown_nested_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGER_BATCHING__MAX_ITEMZ", "3")
    with pytest.raises(SettingsError, match="TAGGER_BATCHING__MAX_ITEMZ"):
        load_settings()


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGER_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="sasl"):
        load_settings()


def test_every_field_is_documented() -> None:
    fields = iter_fields()
    assert len(fields) > 30
    assert all(desc for _, _, _, desc in fields)


def test_int8_defaults_to_on_for_cpu_when_the_artifact_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_settings().model
    assert model.serve_int8(artifact_has_int8=True) is True
    assert model.serve_int8(artifact_has_int8=False) is False
    monkeypatch.setenv("TAGGER_MODEL__PROVIDER", "cuda")
    assert load_settings().model.serve_int8(artifact_has_int8=True) is False
    monkeypatch.setenv("TAGGER_MODEL__INT8", "false")
    monkeypatch.setenv("TAGGER_MODEL__PROVIDER", "cpu")
    assert load_settings().model.serve_int8(artifact_has_int8=True) is False


def test_precision_follows_provider_and_artifact_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    both = {"model.onnx", "model.int8.onnx", "model.fp16.onnx"}
    assert load_settings().model.serve_precision(both) == "int8"
    assert load_settings().model.serve_precision({"model.onnx", "model.fp16.onnx"}) == "fp32"  # no fp16 on CPU
    monkeypatch.setenv("TAGGER_MODEL__PROVIDER", "cuda")
    assert load_settings().model.serve_precision(both) == "fp16"
    assert load_settings().model.serve_precision({"model.onnx", "model.int8.onnx"}) == "fp32"
    monkeypatch.setenv("TAGGER_MODEL__PRECISION", "fp32")
    assert load_settings().model.serve_precision(both) == "fp32"
    monkeypatch.setenv("TAGGER_MODEL__INT8", "true")  # the older switch contradicting the new one
    with pytest.raises(SettingsError, match="TAGGER_MODEL"):
        load_settings()
