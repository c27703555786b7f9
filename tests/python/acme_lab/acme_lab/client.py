from jumpstarter.client import DriverClient


class CounterClient(DriverClient):
    def add(self, n: int) -> int:
        return self.call("add", n)

    def countdown(self, n: int) -> list:
        return list(self.streamingcall("countdown", n))
