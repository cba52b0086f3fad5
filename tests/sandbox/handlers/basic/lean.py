"""Handlers that import nothing at module level (what a cold start imports for them)."""

import sys


def modules(event, context):
    """Which heavy stdlib modules the runtime imported on its own."""
    return sorted(name for name in ("json", "logging", "re", "typing", "traceback", "collections",
                                    "enum", "functools") if name in sys.modules)


def log_late(event, context):
    """logging imported only now, inside the handler: still Lambda's format."""
    import logging.handlers  # the package first, through the submodule

    logging.getLogger("late").warning("late warning %s", event)
    return logging.getLogger().level


def roundtrip(event, context):
    return event


def argv0(event, context):
    return sys.argv[0]
