#!/usr/bin/env python3
"""Record what an unchanged grpcio client sends first over a Unix socket.

Usage: capture_grpcio.py OUTPUT_FILE

A bare Unix-socket listener (no HTTP/2 library) accepts one connection, sends an empty
SETTINGS frame at once and a SETTINGS ack once it has seen the client's SETTINGS, and never
answers anything else. Meanwhile the client makes two concurrent unary calls on one
channel, in the same form the Jumpstarter client uses (grpc.aio, "unix://" + path). The
second call's request headers refer to the first call's :authority by dynamic-table index,
which is the case the exporter's HTTP/2 edge must keep in step. Everything the client
sends in the first ~1.5 s is written to OUTPUT_FILE, then the listener hangs up, so the
calls fail; their errors are expected and ignored.

The output holds only HTTP/2 framing, the temporary socket path and grpcio's user agent.
"""

import asyncio
import os
import select
import socket
import sys
import tempfile
import threading
import time

import grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_EMPTY = bytes([0, 0, 0, 0x4, 0x0, 0, 0, 0, 0])
SETTINGS_ACK = bytes([0, 0, 0, 0x4, 0x1, 0, 0, 0, 0])
RECORD_SECONDS = 1.5
METHOD = "/jumpstarter.v1.ExporterService/GetReport"


def client_sent_settings(data: bytes) -> bool:
    """True once `data` holds a complete non-ack SETTINGS frame after the preface."""
    pos = len(PREFACE)
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        if pos + 9 + length > len(data):
            return False
        if kind == 0x4 and not flags & 0x1:
            return True
        pos += 9 + length
    return False


def serve_once(listener: socket.socket, out: bytearray, done: threading.Event) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(SETTINGS_EMPTY)
        acked = False
        deadline = time.monotonic() + RECORD_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([conn], [], [], left)
            if not readable:
                continue
            chunk = conn.recv(65536)
            if not chunk:
                break
            out += chunk
            if not acked and client_sent_settings(bytes(out)):
                conn.sendall(SETTINGS_ACK)
                acked = True
    done.set()


async def two_calls(path: str) -> None:
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=lambda x: x,
            response_deserializer=lambda x: x,
        )
        results = await asyncio.gather(
            call(b"", timeout=3),
            call(b"", timeout=3),
            return_exceptions=True,
        )
        for result in results:
            if not isinstance(result, grpc.RpcError):
                print(f"unexpected result: {result!r}", file=sys.stderr)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    output = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="jmp-") as tmp:
        path = os.path.join(tmp, "exporter.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        recorded = bytearray()
        done = threading.Event()
        server = threading.Thread(target=serve_once, args=(listener, recorded, done))
        server.start()
        asyncio.run(two_calls(path))
        done.wait(timeout=10)
        server.join(timeout=1)
        listener.close()
    if not recorded.startswith(PREFACE):
        print("the client sent no HTTP/2 preface", file=sys.stderr)
        return 1
    with open(output, "wb") as f:
        f.write(recorded)
    print(f"wrote {len(recorded)} bytes to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
