"""A Lambda-style example function for meshfaas.

Deploy and invoke it::

    meshfaas deploy hello examples/hello --handler app.handler
    meshfaas invoke hello '{"name": "mesh"}'
"""

import json
import os


def handler(event, context):
    """Greet ``event["name"]``; raise ValueError when asked to fail."""
    event = event or {}
    if event.get("fail"):
        raise ValueError("asked to fail")
    name = event.get("name", "world")
    print(f"greeting {name}")  # goes to the invocation's log tail and the event stream
    return {
        "greeting": f"Hello, {name}!",
        "function": getattr(context, "function_name", os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")),
        "request_id": getattr(context, "aws_request_id", ""),
        "body": json.dumps(event, sort_keys=True),
    }
