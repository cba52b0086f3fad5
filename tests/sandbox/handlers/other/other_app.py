SECRET = "other-function-secret-code"


def handler(event, context):
    return SECRET
