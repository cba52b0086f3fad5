"""The real runtime: trio + pyzmq + SQLite drivers of the sans-IO cores.

``zsock`` (one task per zmq socket), ``keys`` (CURVE keys and our ZAP handler),
``transport`` (peer transport, client ROUTER, event PUB), ``store`` (SQLite
durable store and blob store), ``clock`` and ``driver`` (the generic driver of
any core). See docs/runtime.md.
"""
