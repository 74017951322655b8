"""Credentials in URLs are masked wherever text is written (pipeline.redaction)."""

from __future__ import annotations

import logging

import pytest

from pipeline.redaction import redact, redact_log_records, redacted


@pytest.mark.parametrize("text, expected", [
    ("https://user:s3cret@example.org:8443/a.zip", "https://example.org:8443/a.zip"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://h/x.zip?v=2", "http://h/x.zip?v=2"),
    ("data.url=https://u:p@h/x.zip?token=abc&v=2", "data.url=https://h/x.zip?token=***&v=2"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Signature=beef&X-Amz-Date=1",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1"),
    ("see http://h/a?sig=1&api_key=2 and https://x:y@z/w", "see http://h/a?sig=***&api_key=*** and https://z/w"),
    ("https://h/p#access_token=zz&x=1", "https://h/p#access_token=***&x=1"),
    ("failed: token=abc, lr=fast", "failed: token=***, lr=fast"),
    ("- data.url=\"http://u:pw@h/x?key=k\"", "- data.url=\"http://h/x?key=***\""),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_redacted_walks_containers():
    assert redacted({"a": ["http://u:p@h/x", 3], "b": {"c": "x?token=1"}}) == \
        {"a": ["http://h/x", 3], "b": {"c": "x?token=***"}}


def test_log_records_are_redacted(caplog):
    redact_log_records()
    with caplog.at_level(logging.INFO):
        logging.getLogger("any.library").info("GET %s failed", "https://u:hunter2@h/x?token=t0k")
    assert "hunter2" not in caplog.text and "t0k" not in caplog.text and "https://h/x?token=***" in caplog.text
