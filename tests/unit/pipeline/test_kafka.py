"""Kafka errors are recognised by their KafkaError code, not by their message text."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from pipeline.kafka import error_code, has_code


def test_a_kafka_exception_is_known_by_its_code() -> None:
    exc = KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS, "any text at all"))
    assert error_code(exc) == KafkaError.TOPIC_ALREADY_EXISTS
    assert has_code(exc, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_ALREADY_EXISTS)
    assert not has_code(exc, KafkaError.GROUP_ID_NOT_FOUND)


def test_a_message_that_names_a_code_is_not_that_error() -> None:
    exc = RuntimeError("TOPIC_ALREADY_EXISTS")
    assert error_code(exc) is None
    assert not has_code(exc, KafkaError.TOPIC_ALREADY_EXISTS)
    assert error_code(RuntimeError()) is None
