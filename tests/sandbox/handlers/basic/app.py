"""Well-behaved handlers for the sandbox tests."""

import logging
import os
import sys
import time

INIT_COUNT = 0
INIT_COUNT += 1
CALLS = 0
print("module init ran")


def handler(event, context):
    global CALLS
    CALLS += 1
    print("hello from handler", event)
    return {"event": event, "calls": CALLS, "init_count": INIT_COUNT}


def context_info(event, context):
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "python": list(sys.version_info[:3]),
        "env_greeting": os.environ.get("GREETING"),
        "handler_env": os.environ.get("_HANDLER"),
    }


def logs(event, context):
    print("to stdout")
    print("to stderr", file=sys.stderr)
    logging.getLogger().warning("a warning")
    logging.getLogger().info("an info that the default level hides")
    return "logged"


def fail(event, context):
    raise ValueError("something bad: " + str(event))


def exit_now(event, context):
    os._exit(3)


def sleep(event, context):
    time.sleep(event["seconds"])
    return "slept"


def not_json(event, context):
    return {1, 2, 3}


def echo(event, context):
    return event


def uses_layer(event, context):
    import six  # from the dependency layer

    return six.__file__


def allocate(event, context):
    data = b"x" * (event["mb"] << 20)  # written, so resident
    return len(data) >> 20
