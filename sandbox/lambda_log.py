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
    line = (f"REPORT RequestId: {request_id}\tDuration: {outcome.duration_ms:.2f} ms\t"
            f"Billed Duration: {outcome.billed_ms} ms\tMemory Size: {memory_size_mb} MB\t"
            f"Max Memory Used: {outcome.max_memory_mb} MB")
    if init_ms is not None:
        line += f"\tInit Duration: {init_ms:.2f} ms"
    if outcome.status in LAMBDA_STATUS:
        line += f"\tStatus: {LAMBDA_STATUS[outcome.status]}"
        error = outcome.error() or {}
        if outcome.status != "timeout" and error.get("errorType"):
            line += f"\tError Type: {error['errorType']}"
    return line


def format_log(*, request_id: str, version: str, outcome: Outcome, memory_size_mb: int,
               init_ms: float | None, tail_bytes: int) -> str:
    """The invocation's log as Lambda shows it, cut to its last ``tail_bytes`` bytes."""
    report = report_line(request_id=request_id, outcome=outcome, memory_size_mb=memory_size_mb,
                         init_ms=init_ms)
    start = f"START RequestId: {request_id} Version: {version}\n"
    end = f"END RequestId: {request_id}\n{report}\n"
    if not outcome.log and not outcome.init_log:  # the usual warm call: nothing printed
        short = start + end
        if len(short) <= tail_bytes and short.isascii():
            return short
    body = outcome.log if not outcome.log or outcome.log.endswith(b"\n") else outcome.log + b"\n"
    text = b"".join([outcome.init_log, start.encode(), body, end.encode()])
    tail = text[-tail_bytes:]
    skip = 0
    while skip < min(3, len(tail)) and 0x80 <= tail[skip] < 0xC0:  # a cut UTF-8 sequence
        skip += 1
    return tail[skip:].decode(errors="replace")
