"""An unmodified Toxiproxy client (toxiproxy-python 0.1.1 from PyPI) against the sidecar's
Toxiproxy-compatible API. Usage: toxiproxy_client.py API_HOST API_PORT UPSTREAM_HOST:PORT.
Prints "ok" when every step behaved as against a real Toxiproxy."""
import socket
import sys
import time
import urllib.request

from toxiproxy import Toxiproxy
from toxiproxy.exceptions import ProxyExists

host, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = Toxiproxy()
t.update_api_consumer(host, port)
assert t.running(), "API not reachable"
assert b"version" in t.version()


def get(listen):
    with urllib.request.urlopen(f"http://{listen}/ok?bytes=10", timeout=10) as r:
        assert r.status == 200, r.status
        return r.read()


p = t.create(upstream=upstream, name="fixture")
assert not p.listen.endswith(":0"), p.listen  # port 0 comes back as the real port
assert len(get(p.listen)) == 10
assert "fixture" in t.proxies()
try:
    t.create(upstream=upstream, name="fixture")
    raise AssertionError("a duplicate proxy must be refused")
except ProxyExists:
    pass

p.add_toxic(type="latency", attributes={"latency": 300})
assert "latency_downstream" in p.toxics(), p.toxics()
start = time.monotonic()
get(p.listen)
assert time.monotonic() - start >= 0.3, "latency toxic not applied"
p.destroy_toxic("latency_downstream")
assert p.toxics() == {}, p.toxics()

p.disable()
try:
    socket.create_connection(tuple(p.listen.rsplit(":", 1)), timeout=5).close()
    raise AssertionError("a disabled proxy must refuse connections")
except ConnectionRefusedError:
    pass
p.enable()
assert len(get(p.listen)) == 10

p.add_toxic(type="timeout", attributes={"timeout": 0})
t.reset()
assert t.get_proxy("fixture").toxics() == {}
assert len(get(p.listen)) == 10
p.destroy()
assert t.get_proxy("fixture") is None
print("ok")
