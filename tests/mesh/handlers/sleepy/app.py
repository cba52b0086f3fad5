import time


def handler(event, context):
    time.sleep(float((event or {}).get("seconds", 0)))
    return {"slept": (event or {}).get("seconds", 0), "request_id": context.aws_request_id}
