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


def boundaries(client):
    """UDP datagrams and websocket messages keep their boundaries both ways; a TCP half-close
    reaches the peer, and the peer's close ends the client's stream; the private D-Bus daemon
    answers the client's authentication."""
    seen = {}
    sizes = [1, 100, 1400, 9000, 30000]
    for entry in ("udp", "ws"):
        got = []
        with getattr(client, entry).stream() as s:
            for n in sizes:
                s.send(bytes([n % 251]) * n)
            for n in sizes:
                data = s.receive()
                got.append([len(data), data == bytes([n % 251]) * n])
        seen[entry] = got
    seen["udp_address"] = client.udp.address()
    seen["ws_address"] = client.ws.address()
    with client.halfclose.stream() as s:
        s.send(b"x" * 1000)
        s.portal.call(s.stream.send_eof)
        back = b""
        try:
            while True:
                back += s.receive()
        except Exception as e:  # the stream's end
            seen["halfclose_end"] = type(e).__name__
        seen["halfclose"] = back.decode()
    seen["bus_class"] = type(client.bus).__name__
    seen["bus_kind"] = client.bus.kind
    with client.bus.stream() as s:
        s.send(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        seen["bus"] = s.receive().decode()
    return seen


SCENARIOS = {"network": network, "boundaries": boundaries}

if __name__ == "__main__":
    run(SCENARIOS, sys.argv[1], sys.argv[2:])
