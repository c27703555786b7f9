"""Drives a jmp-exporter's serial console with the unchanged upstream Python client (0.9.0).

Run as `python serial_client.py SCENARIO [ARGS...]` with JUMPSTARTER_HOST set. The exporter
exports `serial` (a pseudo-terminal whose master side a Rust test plays as the board, see
tests/integration/support/pty.rs) and `loop` (loop://). Each scenario prints JSON lines; the
last one is its result. Scenarios that need the test to act in between print a line
{"wait": WHAT} and read one line from stdin before going on. Any failure exits non-zero with
the traceback.
"""

import json
import sys
import time

import anyio
from anyio import BrokenResourceError, EndOfStream
from jumpstarter.utils.env import env


def say(value):
    print(json.dumps(value), flush=True)


def wait_for_test(what):
    say({"wait": what})
    line = sys.stdin.readline()
    assert line.strip() == "go", f"the test said {line!r}"


def pattern(n):
    return b"".join(i.to_bytes(8, "little") for i in range((n + 7) // 8))[:n]


async def receive_until(stream, needle, limit=30.0):
    got = b""
    with anyio.fail_after(limit):
        while needle not in got:
            got += await stream.receive()
    return got


def failure(e):
    """What a failed stream call looks like to a client script."""
    cause = e.__cause__ if isinstance(e, BrokenResourceError) else e
    code = cause.code().name if hasattr(cause, "code") else None
    details = cause.details() if hasattr(cause, "details") else str(cause)
    return {"raised": type(e).__name__, "code": code, "message": details}


def login(client):
    with client.serial.pexpect() as p:
        p.sendline("")
        p.expect("board login: ", timeout=10)
        p.sendline("root")
        p.expect("Password: ", timeout=10)
        p.sendline("secret")
        p.expect("root@board:~# ", timeout=10)
        p.sendline("uname -a")
        p.expect(r"Linux board \S+", timeout=10)
        kernel = p.after.decode()
        p.expect("root@board:~# ", timeout=10)
        p.sendline("echo hello from pexpect")
        p.expect("hello from pexpect\r\n", timeout=10)
    return {"kernel": kernel}


def rx(client, n):
    """The board sends n bytes; one stream receives them, byte-exact."""
    n = int(n)

    async def run():
        async with client.serial.stream_async("connect") as s:
            await s.send(f"!send {n}\n".encode())
            got = bytearray()
            start = None
            with anyio.fail_after(120):
                while len(got) < n:
                    chunk = await s.receive()
                    if start is None:
                        start = time.monotonic()
                    got += chunk
            return bytes(got), time.monotonic() - start

    got, seconds = client.portal.call(run)
    return {"bytes": len(got), "exact": got == pattern(n), "seconds": seconds}


def tx(client, n):
    """One stream sends n bytes; the board checks them and answers."""
    n = int(n)
    data = pattern(n)

    async def run():
        async with client.serial.stream_async("connect") as s:
            await s.send(f"!recv {n}\n".encode())
            start = time.monotonic()
            view = memoryview(data)
            for i in range(0, n, 65536):
                await s.send(bytes(view[i : i + 65536]))
            reply = await receive_until(s, b"\n", limit=120)
            return reply, time.monotonic() - start

    reply, seconds = client.portal.call(run)
    return {"reply": reply.decode().strip(), "seconds": seconds}


def loop(client, n):
    """Bytes through loop://, sent and received at once."""
    n = int(n)
    data = pattern(n)

    async def run():
        async with client.loop.stream_async("connect") as s:
            got = bytearray()
            start = time.monotonic()

            async def send():
                view = memoryview(data)
                for i in range(0, n, 65536):
                    await s.send(bytes(view[i : i + 65536]))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                with anyio.fail_after(120):
                    while len(got) < n:
                        got += await s.receive()
            return bytes(got), time.monotonic() - start

    got, seconds = client.portal.call(run)
    return {"bytes": len(got), "exact": got == data, "seconds": seconds}


def two(client):
    """Two streams at once: both see everything the board prints, both reach the board."""
    expected = b"".join(f"line {i:04}\n".encode() for i in range(500)) + b"!end\n"

    async def run():
        async with client.serial.stream_async("connect") as a, client.serial.stream_async("connect") as b:
            await a.send(b"!note from stream a\n")
            await b.send(b"!note from stream b\n")
            await a.send(b"!lines 500\n")
            got_a, got_b = await receive_until(a, b"!end\n"), await receive_until(b, b"!end\n")
            return got_a, got_b

    got_a, got_b = client.portal.call(run)
    return {"a": got_a == expected, "b": got_b == expected, "a_len": len(got_a), "b_len": len(got_b)}


def unplug(client):
    """A stream open across an unplug ends cleanly; while unplugged, connect is UNAVAILABLE;
    after the replug, connect works again (same exporter, same client)."""
    result = {}

    async def attached():
        async with client.serial.stream_async("connect") as s:
            await s.send(b"!hello\n")
            await receive_until(s, b"hello from v1\n")
            say({"wait": "unplug"})
            try:
                with anyio.fail_after(20):
                    while True:
                        await s.receive()
            except EndOfStream:
                return "EndOfStream"
            except BrokenResourceError as e:
                return f"BrokenResourceError: {failure(e)}"

    result["ended"] = client.portal.call(attached)
    assert sys.stdin.readline().strip() == "go"

    try:
        result["while_unplugged"] = client.portal.call(refused, client)
    except Exception as e:  # noqa: BLE001 - the test checks which one
        result["while_unplugged"] = failure(e)

    async def exchange():
        async with client.serial.stream_async("connect") as s:
            await s.send(b"!hello\n")
            return (await receive_until(s, b"\n", limit=10)).decode()

    wait_for_test("replug")
    result["after_replug"] = client.portal.call(exchange).strip()
    return result


def write_unplug(client, n):
    """Sends n bytes in 64 KiB chunks without waiting for any answer; the test unplugs the board
    once 1 MiB is sent. Reports how many bytes send() accepted, how sending ended, and how the
    receive side ended; then, after the replug, one exchange on a new stream."""
    n = int(n)
    data = pattern(n)
    result = {}

    async def writing():
        sent = 0
        told = False
        ends = {}
        async with client.serial.stream_async("connect") as s:
            await s.send(f"!recv {n}\n".encode())

            async def receive():
                try:
                    with anyio.fail_after(60):
                        while True:
                            await s.receive()
                except EndOfStream:
                    ends["receive"] = "EndOfStream"
                except BrokenResourceError as e:
                    ends["receive"] = failure(e)
                except TimeoutError:
                    ends["receive"] = "timeout"

            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                try:
                    with anyio.fail_after(60):
                        view = memoryview(data)
                        for i in range(0, n, 65536):
                            await s.send(bytes(view[i : i + 65536]))
                            sent = i + len(view[i : i + 65536])
                            if not told and sent >= 1 << 20:
                                say({"wait": "unplug", "sent": sent})
                                told = True
                    ends["send"] = "completed"
                except BrokenResourceError as e:
                    ends["send"] = failure(e)
                except TimeoutError:
                    ends["send"] = "timeout"
                except Exception as e:  # noqa: BLE001 - the test checks which one
                    ends["send"] = {"raised": type(e).__name__, "message": str(e)}
        ends["sent"] = sent
        return ends

    try:
        result.update(client.portal.call(writing))
    except Exception as e:  # noqa: BLE001 - the test checks which one
        result["stream"] = failure(e)
    assert sys.stdin.readline().strip() == "go"

    async def exchange():
        async with client.serial.stream_async("connect") as s:
            await s.send(b"!hello\n")
            return (await receive_until(s, b"\n", limit=10)).decode()

    wait_for_test("replug")
    result["after_replug"] = client.portal.call(exchange).strip()
    return result


async def refused(client):
    """Opens a stream that should be refused. A call that fails before its headers shows its
    status on the first receive (a send would only raise InvalidStateError); if the stream
    were accepted, nothing would come, and the time limit would say so."""
    async with client.serial.stream_async("connect") as s:
        with anyio.fail_after(5):
            await s.receive()
    return {"connected": True}


def absent(client):
    """Connecting to a device that is not there."""
    try:
        return client.portal.call(refused, client)
    except Exception as e:  # noqa: BLE001 - the test checks which one
        return failure(e)


def hello(client):
    """One exchange with the board (blocking stream API)."""
    with client.serial.stream() as s:
        s.send(b"!hello\n")
        got = b""
        while b"\n" not in got:
            got += s.receive()
    return {"reply": got.decode().strip()}


def lines(client):
    """set_dtr/set_rts act on the open port (a pseudo-terminal has no modem lines); close."""
    out = {}
    for method in ("set_dtr", "set_rts"):
        try:
            client.serial.call(method, True)
            out[method] = "ok"
        except Exception as e:  # noqa: BLE001
            out[method] = f"{type(e).__name__}: {e}"
    client.loop.call("set_dtr", False)
    client.serial.call("close")
    return out


SCENARIOS = {f.__name__: f for f in (login, rx, tx, loop, two, unplug, write_unplug, absent, hello, lines)}


def main():
    scenario, args = sys.argv[1], sys.argv[2:]
    with env() as client:
        result = SCENARIOS[scenario](client, *args)
    say({"scenario": scenario, "result": result})


if __name__ == "__main__":
    main()
