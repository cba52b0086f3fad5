"""The invocation log as AWS Lambda shows it: START, the output, END, REPORT.

The bootstrap sends the REPORT figures in its result frame and the host writes
the lines around the handler's output (see docs/sandbox.md "Logs"), cut to the
last ``tail_bytes`` bytes at a UTF-8 boundary.
"""

from __future__ import annotations

from sandbox.process import Outcome

LAMBDA_STATUS = {"timeout": "timeout", "oom": "error", "crash": "error"}


def report_line(*, request_id: str, outcome: Outcome, memory_size_mb: int, init_ms: float | None) -> str:
    """AWS Lambda's REPORT line (tab-separated), with Status for abnormal ends."""
    parts = [f"REPORT RequestId: {request_id}", f"Duration: {outcome.duration_ms:.2f} ms",
             f"Billed Duration: {outcome.billed_ms} ms", f"Memory Size: {memory_size_mb} MB",
             f"Max Memory Used: {outcome.max_memory_mb} MB"]
    if init_ms is not None:
        parts.append(f"Init Duration: {init_ms:.2f} ms")
    if outcome.status in LAMBDA_STATUS:
        parts.append(f"Status: {LAMBDA_STATUS[outcome.status]}")
        error = outcome.error() or {}
        if outcome.status != "timeout" and error.get("errorType"):
            parts.append(f"Error Type: {error['errorType']}")
    return "\t".join(parts)


def format_log(*, request_id: str, version: str, outcome: Outcome, memory_size_mb: int,
               init_ms: float | None, tail_bytes: int) -> str:
    """The invocation's log as Lambda shows it, cut to its last ``tail_bytes`` bytes."""
    body = outcome.log if not outcome.log or outcome.log.endswith(b"\n") else outcome.log + b"\n"
    report = report_line(request_id=request_id, outcome=outcome, memory_size_mb=memory_size_mb,
                         init_ms=init_ms)
    text = b"".join([
        outcome.init_log,
        f"START RequestId: {request_id} Version: {version}\n".encode(),
        body,
        f"END RequestId: {request_id}\n{report}\n".encode(),
    ])
    tail = text[-tail_bytes:]
    skip = 0
    while skip < min(3, len(tail)) and 0x80 <= tail[skip] < 0xC0:  # a cut UTF-8 sequence
        skip += 1
    return tail[skip:].decode(errors="replace")
