import time


def handler(event, context):
    """Return the event; with {"sleep_ms": N}, first wait N ms (a function whose time
    goes to waiting, not CPU: the skew benchmark's hot function)."""
    if isinstance(event, dict) and event.get("sleep_ms"):
        time.sleep(event["sleep_ms"] / 1000)
    return event
