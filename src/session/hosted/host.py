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
# its own, serves that tree's Session on a Unix socket, and the exporter forwards its clients'
# calls to it. Log records go to stderr, one JSON object per line. When stdin closes (the
# exporter is gone, even killed) the host closes its drivers and exits.

import json
import logging
import os
import sys
import threading
import traceback
import uuid

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
        from jumpstarter.common import ExporterStatus
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

        root = host_root(top, composite)
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
        with session:
            async with session.serve_unix_async() as path:
                session.update_status(ExporterStatus.LEASE_READY)
                send({"op": "serving", "socket": str(path), "failed": self.describe_failed(failed)})
                await self.idle(commands)

    def describe_failed(self, failed):
        return {p: {"error": e, "client": self.labels.get(p)} for p, e in failed.items()}

    async def idle(self, commands):
        while True:
            message = await commands.get()
            if message is None or message.get("op") == "stop":
                return
            if message.get("op") == "ping":
                send({"op": "pong", "n": message.get("n")})


def host_root(children, composite):
    """The host tree's root: a composite whose session-start reset does nothing, because each
    root was reset on its own (so one that raises does not stop the others)."""
    from jumpstarter_driver_composite.driver import Composite
    from pydantic.dataclasses import dataclass

    @dataclass(kw_only=True)
    class HostRoot(Composite):
        def reset(self):
            pass

    return composite(children, HostRoot)


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
    import asyncio

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
