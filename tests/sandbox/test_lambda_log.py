"""Table tests for the Lambda-style log lines the host writes."""

from __future__ import annotations

import json

import pytest

from sandbox.lambda_log import format_log, report_line
from sandbox.process import Outcome


def outcome(status: str = "ok", log: bytes = b"hi\n", error_type: str = "") -> Outcome:
    body = json.dumps({"errorType": error_type, "errorMessage": "m"}).encode() if error_type else b"1"
    return Outcome(status=status, body=body, duration_ms=1.234, billed_ms=2,  # type: ignore[arg-type]
                   max_memory_mb=13, log=log)


@pytest.mark.parametrize(
    ("status", "error_type", "init_ms", "suffix"),
    [
        ("ok", "", None, "Max Memory Used: 13 MB"),
        ("ok", "", 5.0, "Init Duration: 5.00 ms"),
        ("error", "ValueError", None, "Max Memory Used: 13 MB"),
        ("timeout", "Sandbox.Timedout", None, "Status: timeout"),
        ("oom", "Runtime.OutOfMemory", None, "Status: error\tError Type: Runtime.OutOfMemory"),
        ("crash", "Runtime.ExitError", 7.5, "Status: error\tError Type: Runtime.ExitError"),
    ],
)
def test_report_line(status: str, error_type: str, init_ms: float | None, suffix: str) -> None:
    line = report_line(request_id="r", outcome=outcome(status, error_type=error_type),
                       memory_size_mb=128, init_ms=init_ms)
    assert line.startswith("REPORT RequestId: r\tDuration: 1.23 ms\tBilled Duration: 2 ms\t"
                           "Memory Size: 128 MB\tMax Memory Used: 13 MB")
    assert line.endswith(suffix)


def test_format_log_order_and_missing_newline() -> None:
    text = format_log(request_id="r", version="3", outcome=outcome(log=b"no newline"),
                      memory_size_mb=128, init_ms=None, tail_bytes=4096)
    assert text.splitlines()[:3] == ["START RequestId: r Version: 3", "no newline", "END RequestId: r"]


def test_format_log_keeps_the_end_and_cuts_at_a_character() -> None:
    log = ("é" * 5000).encode()  # 2 bytes each: a cut may land inside one
    for tail in (4096, 4097):
        text = format_log(request_id="r", version="1", outcome=outcome(log=log), memory_size_mb=128,
                          init_ms=None, tail_bytes=tail)
        assert len(text.encode()) <= tail
        assert "\ufffd" not in text
        assert text.rstrip().splitlines()[-1].startswith("REPORT RequestId: r")
