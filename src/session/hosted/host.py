# jmp-exporter's Python driver host. The exporter starts it with the lab's own interpreter
# (stock jumpstarter 0.9.0 and its driver packages), before any lease, and talks to it over
# stdin and stdout, one JSON object per line:
#
#   exporter -> host                          host -> exporter
#   {"op":"load","config":TEXT,"roots":[P]}   {"op":"loaded","labels":{P:CLIENT},"errors":{P:TEXT}}
#   {"op":"serve","uuids":{P:UUID}}           {"op":"serving","socket":PATH,"failed":{P:{...}}}
#   {"op":"ping","n":N}                       {"op":"pong","n":N}
#   {"op":"stop"}                             {"op":"stopped"}
#
# P is an entry's dotted name from the top of `export:`. The host builds the entries named in
# "roots" (and everything below them) with upstream's own code, at the same place in a tree of
# its own, and serves that tree's Session on a Unix socket through the lane (below), where the
# exporter forwards its clients' calls and streams: a gRPC server there would cost each call
# more than the driver does, and would add its start to every lease's. Log records go to stderr, one JSON object per line. When stdin closes (the
# exporter is gone, even killed) the host closes its drivers and exits.

import asyncio
import collections
import functools
import json
import logging
import os
import sys
import threading
import traceback
import uuid

from anyio import BrokenResourceError, EndOfStream
from anyio.abc import ObjectStream

_out = threading.Lock()


def send(message):
    line = json.dumps(message) + "\n"
    with _out:
        sys.__stdout__.write(line)
        sys.__stdout__.flush()


class JsonLines(logging.Handler):
    """Log records as JSON lines on stderr, which the exporter logs as its own."""

    def emit(self, record):
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        line = json.dumps({"level": record.levelname, "logger": record.name, "message": text})
        with _out:
            sys.__stderr__.write(line + "\n")
            sys.__stderr__.flush()


def entry_at(export, path):
    """The entry mapping at a dotted path of `export:`, or None."""
    node = {"children": export}
    for name in path.split("."):
        children = node.get("children") if isinstance(node, dict) else None
        if not isinstance(children, dict) or name not in children:
            return None
        node = children[name]
    return node


def classes_in(entry, path, out):
    """Every (dotted path, class path) of a `type:` in an entry's subtree."""
    if not isinstance(entry, dict):
        return
    if isinstance(entry.get("type"), str):
        out.append((path, entry["type"]))
    for name, child in (entry.get("children") or {}).items():
        classes_in(child, f"{path}.{name}", out)


def with_uuids(entry, path, uuids):
    """A copy of the entry whose drivers carry the UUIDs the exporter reports for them."""
    if not isinstance(entry, dict) or "ref" in entry:
        return entry
    entry = dict(entry)
    if path in uuids:
        if "type" not in entry:
            # A bare composite takes no config; the typed form does, and builds the same.
            entry["type"] = "jumpstarter_driver_composite.driver.Composite"
        # A UUID object: upstream's session looks drivers up by UUID, and a string given to the
        # driver would stay a string.
        entry["config"] = dict(entry.get("config") or {}, uuid=uuid.UUID(uuids[path]))
    children = entry.get("children")
    if isinstance(children, dict):
        entry["children"] = {n: with_uuids(c, f"{path}.{n}", uuids) for n, c in children.items()}
    return entry


class Host:
    def __init__(self):
        self.export = {}
        self.roots = []
        self.labels = {}

    def load(self, message):
        """Reads the config, imports every class the hosted entries name, and says which client
        each one reports; nothing is built and no device is touched."""
        import yaml
        from jumpstarter.common.importlib import import_class

        document = yaml.safe_load(message["config"]) or {}
        self.export = document.get("export") or {}
        document = None  # the rest of the file (the token among it) is not kept
        self.roots = list(message["roots"])
        labels, errors = {}, {}
        for root in self.roots:
            found = []
            classes_in(entry_at(self.export, root), root, found)
            for path, class_path in found:
                try:
                    cls = import_class(class_path, [], True)
                except Exception as e:
                    errors[path] = f"{type(e).__name__}: {e}"
                    continue
                try:
                    labels[path] = cls.client()
                except Exception:
                    # A driver whose client label needs an instance; its session report has it.
                    pass
        self.labels = labels
        send({"op": "loaded", "labels": labels, "errors": errors})

    def build(self, uuids):
        """One driver object per root, as upstream builds an entry; a root that raises is left
        out and reported with its error."""
        from jumpstarter.config.exporter import ExporterConfigV1Alpha1DriverInstance

        built, failed = {}, {}
        for root in self.roots:
            entry = with_uuids(entry_at(self.export, root), root, uuids)
            try:
                built[root] = ExporterConfigV1Alpha1DriverInstance.model_validate(entry).instantiate()
            except Exception as e:
                logging.getLogger("jmp_exporter.host").error("building %s failed: %s", root, e)
                failed[root] = f"{type(e).__name__}: {e}"
        return built, failed

    async def serve(self, message, commands):
        from jumpstarter.common import ExporterStatus, TemporarySocket
        from jumpstarter.exporter import Session
        from jumpstarter_driver_composite.driver import Composite

        built, failed = self.build(message["uuids"])
        # The host's tree mirrors the exporter's, so that a `ref:` resolves to the same place;
        # composites that only hold the path get UUIDs the exporter never reports.
        top = {}
        for root, driver in built.items():
            names = root.split(".")
            level = top
            for name in names[:-1]:
                level = level.setdefault(name, {})
            level[names[-1]] = driver

        def composite(children, cls=Composite):
            return cls(children={n: composite(c) if isinstance(c, dict) else c for n, c in children.items()})

        root = composite(top, host_root_class())
        # Reset each root on its own: one that raises is reported, the others serve.
        for path, driver in list(built.items()):
            try:
                driver.reset()
            except Exception as e:
                failed[path] = f"{type(e).__name__}: {e}"
        try:
            session = Session(root_device=root)
        except Exception as e:
            # A ref that does not resolve in the host fails the whole tree in upstream's code.
            for path in built:
                failed.setdefault(path, f"{type(e).__name__}: {e}")
            send({"op": "serving", "socket": None, "failed": self.describe_failed(failed)})
            await self.idle(commands)
            return
        with session, TemporarySocket() as path:
            lane = await serve_lane(session, path)
            session.update_status(ExporterStatus.LEASE_READY)
            send({"op": "serving", "socket": str(path), "failed": self.describe_failed(failed)})
            try:
                await self.idle(commands)
            finally:
                lane.close()

    def describe_failed(self, failed):
        return {p: {"error": e, "client": self.labels.get(p)} for p, e in failed.items()}

    async def idle(self, commands):
        while True:
            message = await commands.get()
            if message is None or message.get("op") == "stop":
                return
            if message.get("op") == "ping":
                send({"op": "pong", "n": message.get("n")})


# The lane: reports, driver calls, and byte and resource streams, without a gRPC server. The
# exporter keeps a pool of connections to the session socket and runs one call at a time on
# each, as frames of [u32 big-endian payload length][u8 kind][payload]:
#
#   exporter -> host                          host -> exporter
#   1 CALL  DriverCallRequest                 1 RESULT  a response message (one per result,
#   2 STREAMING  StreamingDriverCallRequest             a StreamResponse in a stream)
#   3 OPEN  a stream's `request` metadata     2 DONE    a streaming call ended well
#   4 FRAME  a client's StreamRequest         3 ERROR   u32 status code, then the message
#   5 END  the client ended its side          4 HEADERS a stream's headers, JSON [[k, v]]
#   6 REPORT  (empty)                         RESULT with the GetReportResponse
#
# Each runs upstream's own Session.GetReport, DriverCall or StreamingDriverCall, or the
# driver's own Stream as upstream's session does, with a context that does what grpc.aio's
# does for them: the first abort sets the status, an exception no abort caught is UNKNOWN
# "Unexpected <class>: text", a header whose value is None is sent empty. The exporter
# closing the connection cancels the call or stream (the client went away), as the gRPC
# server would; a stream's connection is not used again.

CALL, STREAMING, OPEN, FRAME, END, REPORT = 1, 2, 3, 4, 5, 6
RESULT, DONE, ERROR, HEADERS = 1, 2, 3, 4
HEADER = 5
# A stream's frames queued from the exporter before the socket is read no more, and again.
INBOUND_HIGH, INBOUND_LOW = 16, 4
# Bytes of a stream's frames gathered for one write before it is made.
PENDING_MAX = 256 * 1024


class Aborted(Exception):
    pass


class LaneContext:
    """The part of a grpc.aio servicer context that upstream's driver calls use."""

    __slots__ = ("code", "details", "lane")

    def __init__(self, lane):
        self.code = None
        self.details = ""
        self.lane = lane

    async def abort(self, code, details="", trailing_metadata=()):
        if self.code is None:
            self.code, self.details = code.value[0], details
        raise Aborted(details)

    def invocation_metadata(self):
        return ()

    def done(self):
        return self.lane.closed

    def cancelled(self):
        return self.lane.closed

    def time_remaining(self):
        return None


def frame(kind, payload=b""):
    return len(payload).to_bytes(4, "big") + bytes((kind,)) + payload


def error_frame(code, details):
    return frame(ERROR, code.to_bytes(4, "big") + details.encode("utf-8", "replace"))


class Lane(asyncio.Protocol):
    """One connection from the exporter, as an asyncio protocol: frames in, a task per call."""

    def __init__(self, session, messages, router):
        self.session = session
        self.messages = messages
        self.router = router
        self.buffer = bytearray()
        self.transport = None
        self.task = None
        self.closed = False
        self.writable = None
        self.inbound = None
        self.inbound_waiter = None
        self.reading_paused = False
        self.pending = []
        self.pending_size = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while len(self.buffer) >= HEADER:
            size = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < HEADER + size:
                return
            kind = self.buffer[4]
            payload = bytes(self.buffer[HEADER : HEADER + size])
            del self.buffer[: HEADER + size]
            if self.inbound is not None and kind in (FRAME, END):
                self.inbound.append((kind, payload))
                self.wake_reader()
                if len(self.inbound) >= INBOUND_HIGH and not self.reading_paused:
                    self.reading_paused = True
                    self.transport.pause_reading()
                continue
            if self.task is not None and not self.task.done():
                self.transport.abort()  # one call at a time: the exporter never does this
                return
            if kind == OPEN:
                self.inbound = collections.deque()
            self.task = asyncio.get_running_loop().create_task(self.run(kind, payload))

    def wake_reader(self):
        if self.inbound_waiter is not None and not self.inbound_waiter.done():
            self.inbound_waiter.set_result(None)

    async def next_inbound(self):
        """The client's next stream frame (FRAME or END), or None once the exporter is gone."""
        while not self.inbound:
            if self.closed:
                return None
            self.inbound_waiter = asyncio.get_running_loop().create_future()
            await self.inbound_waiter
        if self.reading_paused and len(self.inbound) <= INBOUND_LOW:
            self.reading_paused = False
            self.transport.resume_reading()
        return self.inbound.popleft()

    def send_soon(self, data):
        """A stream's frame, written with the others made in the same turn of the event loop
        (one write for many small frames), or at once past PENDING_MAX bytes."""
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= PENDING_MAX:
            self.flush()

    def flush(self):
        if self.pending and not self.closed:
            self.transport.write(b"".join(self.pending))
        self.pending.clear()
        self.pending_size = 0

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.wake_reader()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.writable is not None:
            self.writable.set()

    def pause_writing(self):
        self.writable = asyncio.Event()

    def resume_writing(self):
        if self.writable is not None:
            self.writable.set()
            self.writable = None

    async def drained(self):
        while self.writable is not None and not self.closed:
            await self.writable.wait()

    async def run(self, kind, payload):
        context = LaneContext(self)
        try:
            if kind == CALL:
                request = self.messages.DriverCallRequest.FromString(payload)
                response = await self.session.DriverCall(request, context)
                if context.code is None:
                    self.transport.write(frame(RESULT, response.SerializeToString()))
            elif kind == STREAMING:
                request = self.messages.StreamingDriverCallRequest.FromString(payload)
                async for response in self.session.StreamingDriverCall(request, context):
                    self.transport.write(frame(RESULT, response.SerializeToString()))
                    await self.drained()
                    if self.closed:
                        return
                if context.code is None:
                    self.transport.write(frame(DONE))
            elif kind == OPEN:
                await self.stream(payload, context)
            elif kind == REPORT:
                report = await self.session.GetReport(None, context)
                self.transport.write(frame(RESULT, report.SerializeToString()))
            else:
                self.transport.write(error_frame(12, f"unknown lane frame kind {kind}"))
                return
        except Aborted:
            pass
        except Exception as e:
            if context.code is None:
                context.code, context.details = 2, f"Unexpected {type(e)}: {e}"
        if context.code is not None and not self.closed:
            self.flush()  # a stream's last frames go before its status
            self.transport.write(error_frame(context.code, context.details))

    async def stream(self, payload, context):
        from anyio import TypedAttributeLookupError, sleep_forever
        from jumpstarter.common.streams import StreamRequestMetadata
        from jumpstarter.streams.common import forward_stream
        from jumpstarter.streams.metadata import MetadataStreamAttributes

        request = StreamRequestMetadata(request=payload.decode()).request
        async with self.session[request.uuid].Stream(request, context) as stream:
            metadata = []
            try:
                metadata.extend(stream.extra(MetadataStreamAttributes.metadata).items())
            except TypedAttributeLookupError:
                pass
            headers = [[k, "" if v is None else str(v)] for k, v in metadata]
            self.transport.write(frame(HEADERS, json.dumps(headers).encode()))
            async with LaneRouterStream(self, context) as remote:
                async with forward_stream(remote, stream):
                    # As upstream's session: the stream lasts until the client ends the call.
                    await sleep_forever()


class LaneRouterStream(ObjectStream):
    """The client's side of a stream over the lane, as upstream's RouterStream is over gRPC:
    DATA frames are the payload, GOAWAY or the end of the client's side ends input, a PING
    (or a frame of a kind not known) reads as empty bytes."""

    def __init__(self, lane, context):
        self.lane = lane
        self.context = context
        self.router = lane.router

    async def send(self, item):
        if self.lane.closed:
            raise BrokenResourceError
        message = self.router.StreamResponse(payload=item)
        self.lane.send_soon(frame(RESULT, message.SerializeToString()))
        await self.lane.drained()

    async def receive(self):
        got = await self.lane.next_inbound()
        if got is None:
            raise BrokenResourceError
        kind, payload = got
        if kind == END:
            raise EndOfStream
        message = self.router.StreamRequest.FromString(payload)
        if message.frame_type == self.router.FRAME_TYPE_DATA:
            return message.payload
        if message.frame_type == self.router.FRAME_TYPE_GOAWAY:
            raise EndOfStream
        return b""

    async def send_eof(self):
        if not self.lane.closed:
            goaway = self.router.StreamResponse(frame_type=self.router.FRAME_TYPE_GOAWAY)
            self.lane.send_soon(frame(RESULT, goaway.SerializeToString()))

    async def aclose(self):
        from grpc import StatusCode

        await self.send_eof()
        await self.context.abort(StatusCode.ABORTED, "RouterStream: aclose")


async def serve_lane(session, path):
    """Listens for the exporter's lane connections at `path`; returns the server."""
    from jumpstarter_protocol import jumpstarter_pb2, router_pb2

    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(
        lambda: Lane(session, jumpstarter_pb2, router_pb2), path=str(path)
    )


@functools.cache
def host_root_class():
    """The host tree's root: a composite whose session-start reset does nothing, because each
    root was reset on its own (so one that raises does not stop the others). Made once, while
    warm: a pydantic class costs milliseconds to make."""
    from jumpstarter_driver_composite.driver import Composite
    from pydantic.dataclasses import dataclass

    @dataclass(kw_only=True)
    class HostRoot(Composite):
        def reset(self):
            pass

    return HostRoot


async def warm(entries):
    """What a lease's start would otherwise do the first time, done before any lease: the
    imports a session needs, the root class, the entries' config validated (no driver is
    built), and an empty session's report."""
    from jumpstarter.common import TemporarySocket  # noqa: F401
    from jumpstarter.common.streams import StreamRequestMetadata  # noqa: F401
    from jumpstarter.config.exporter import ExporterConfigV1Alpha1DriverInstance
    from jumpstarter.exporter import Session
    from jumpstarter.streams.common import forward_stream  # noqa: F401
    from jumpstarter.streams.metadata import MetadataStreamAttributes  # noqa: F401
    from jumpstarter_protocol import jumpstarter_pb2, router_pb2  # noqa: F401

    for entry in entries:
        try:
            ExporterConfigV1Alpha1DriverInstance.model_validate(entry)
        except Exception:
            pass  # the lease's build reports it
    session = Session(root_device=host_root_class()(children={}))
    (await session.GetReport(None, None)).SerializeToString()


def read_commands(loop, queue):
    """Feeds stdin's lines to the event loop; at end of input, a final None."""
    for line in sys.stdin:
        line = line.strip()
        if line:
            loop.call_soon_threadsafe(queue.put_nowait, json.loads(line))
    loop.call_soon_threadsafe(queue.put_nowait, None)
    # If the loop cannot shut down in time (a driver stuck in close), leave anyway.
    threading.Timer(10.0, lambda: os._exit(0)).start()


async def main():
    commands = asyncio.Queue()
    threading.Thread(
        target=read_commands, args=(asyncio.get_running_loop(), commands), daemon=True
    ).start()
    host = Host()
    while True:
        message = await commands.get()
        if message is None:
            return
        op = message.get("op")
        if op == "load":
            host.load(message)
            await warm([entry_at(host.export, root) for root in host.roots])
        elif op == "ping":
            send({"op": "pong", "n": message.get("n")})
        elif op == "serve":
            await host.serve(message, commands)
            send({"op": "stopped"})
            return
        elif op == "stop":
            send({"op": "stopped"})
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, handlers=[JsonLines()], force=True)
    # Upstream's session announces its own start and stop; the exporter says what matters.
    logging.getLogger("jumpstarter.exporter.session").setLevel(logging.WARNING)
    sys.stdout = sys.stderr  # a driver's print() must not corrupt the protocol
    import anyio

    anyio.run(main)
    sys.__stdout__.flush()
    os._exit(0)
