"""The pure parts of meshfaas: shared vocabulary, codec and IO-free state machines.

Nothing under ``meshfaas.core`` may import trio, zmq, time, socket, subprocess,
threading, asyncio or sqlite3; an import-linter contract enforces it.
"""
