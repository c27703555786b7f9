"""Drives jmp-exporter's native network drivers (TcpNetwork, UnixNetwork) with the unchanged
upstream Python client (0.9.0). `python network_client.py SCENARIO [ARGS]` against
JUMPSTARTER_HOST; prints one JSON line `{"scenario": ..., "result": ...}`."""

import os
import sys

from hosted_client import run


def echo(stream, data):
    stream.send(data)
    got = b""
    while len(got) < len(data):
        got += stream.receive()
    return got


def network(client):
    """A byte stream through each driver to the test's echo peers, and TcpNetwork's address;
    a target that refuses is an error naming it."""
    seen = {"class": type(client.tcp).__name__, "address": client.tcp.address()}
    payload = os.urandom(1 << 20)
    with client.tcp.stream() as s:
        seen["tcp"] = echo(s, payload) == payload
    with client.unix.stream() as s:
        seen["unix"] = echo(s, b"over unix") == b"over unix"
    try:
        with client.closed.stream() as s:
            s.send(b"x")
            s.receive()
    except BaseException as e:  # the client raises it from a task group
        text = str(e)
        for inner in getattr(e, "exceptions", ()):
            text += " " + str(inner)
        seen["closed"] = text
    return seen


SCENARIOS = {"network": network}

if __name__ == "__main__":
    run(SCENARIOS, sys.argv[1], sys.argv[2:])
