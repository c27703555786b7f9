"""Drives jmp-exporter's native network power switches (HttpPower, EnerGenie) with the
unchanged upstream Python client (0.9.0). `python power_client.py SCENARIO` against
JUMPSTARTER_HOST; prints one JSON line `{"scenario": ..., "result": ...}`."""

import sys

from hosted_client import run


def attempt(f):
    try:
        value = f()
        return {"ok": list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else value}
    except Exception as e:
        text = f"{type(e).__name__}: {e}"
        for inner in getattr(e, "exceptions", ()):
            text += " | " + str(inner)
        return {"error": text}


def power(client):
    seen = {"class": type(client.plug).__name__}
    seen["on"] = attempt(client.plug.on)
    seen["off"] = attempt(client.plug.off)
    seen["read"] = attempt(lambda: [r.model_dump() for r in client.plug.read()])
    seen["broken_on"] = attempt(client.broken.on)
    seen["pdu_on"] = attempt(client.pdu.on)
    seen["pdu_off"] = attempt(client.pdu.off)
    seen["pdu_read"] = attempt(lambda: list(client.pdu.read()))
    seen["locked_on"] = attempt(client.locked.on)
    seen["after"] = attempt(client.plug.on)
    return seen


SCENARIOS = {"power": power}

if __name__ == "__main__":
    run(SCENARIOS, sys.argv[1], sys.argv[2:])
