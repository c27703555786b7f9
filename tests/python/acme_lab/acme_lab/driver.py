"""A lab's own driver: a counter with a plain call, a streaming call and a byte stream, calls
that fail in each way upstream's driver base maps to a status, and a driver that fails when
it is built."""

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import field

from anyio import create_memory_object_stream, sleep
from anyio.streams.stapled import StapledObjectStream
from pydantic.dataclasses import dataclass

from jumpstarter.driver import Driver, export, exportstream


@dataclass(kw_only=True)
class Counter(Driver):
    start: int = 0
    count: int = field(init=False, default=0)

    @classmethod
    def client(cls) -> str:
        return "acme_lab.client.CounterClient"

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        self.count = self.start

    @export
    def add(self, n: int) -> int:
        if n < 0:
            raise ValueError(f"cannot add {n}: only forward")
        self.count += n
        self.logger.info("counter at %d", self.count)
        return self.count

    @export
    async def countdown(self, n: int) -> AsyncGenerator[int, None]:
        for i in range(int(n), 0, -1):
            yield i

    @export
    def unready(self):
        raise NotImplementedError("acme counters cannot do that yet")

    @export
    async def late(self):
        raise TimeoutError("the counter did not answer in 2s")

    @export
    def fails(self):
        raise RuntimeError("counter jammed at %d" % self.count)

    @export
    async def fails_after(self, n: int) -> AsyncGenerator[int, None]:
        for i in range(int(n)):
            yield i
        raise RuntimeError(f"jammed after {n}")

    @export
    async def refuses(self, n: int) -> AsyncGenerator[int, None]:
        if n >= 0:
            raise ValueError(f"no countdown from {n}")
        yield n

    @export
    async def ticks(self) -> AsyncGenerator[int, None]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                await sleep(0.05)
        finally:
            self.logger.info("ticks stopped after %d", i)

    @export
    async def hang(self):
        try:
            await sleep(3600)
        finally:
            self.logger.info("hang given up")

    def helper(self):
        """Not exported: a client must not reach it."""
        return self.count

    @exportstream
    @asynccontextmanager
    async def connect(self):
        tx, rx = create_memory_object_stream[bytes](32)
        async with StapledObjectStream(tx, rx) as stream:
            yield stream


@dataclass(kw_only=True)
class Broken(Driver):
    """Raises in its constructor, as a driver does whose device is missing."""

    @classmethod
    def client(cls) -> str:
        return "acme_lab.client.CounterClient"

    def __post_init__(self):
        raise RuntimeError("no acme board on /dev/acme0")
