"""Drives jmp-exporter's native TasmotaPower (MQTT plug) with the unchanged upstream Python
client (0.9.0). `python tasmota_client.py SCENARIO` against JUMPSTARTER_HOST; prints one JSON
line `{"scenario": ..., "result": ...}`."""

import sys

from hosted_client import run


def failure(call):
    """What `call()` raises, as `Class: message`, or None if it does not raise."""
    try:
        call()
    except Exception as e:  # the test asserts on the class and the text
        return f"{type(e).__name__}: {e}"
    return None


def tasmota(client):
    """on and off over each transport; read as upstream exports it; a plug that never answers
    and a refused password are errors; the plug still switches after them."""
    seen = {"class": type(client.plug).__name__}
    seen["on"] = client.plug.on()
    seen["off"] = client.plug.off()
    seen["read"] = failure(lambda: list(client.plug.read()))
    client.ws.on()
    client.usock.on()
    seen["silent"] = failure(client.silent.on)
    seen["badpass"] = failure(client.badpass.on)
    client.plug.on()
    return seen


SCENARIOS = {"tasmota": tasmota}

if __name__ == "__main__":
    run(SCENARIOS, sys.argv[1], sys.argv[2:])
