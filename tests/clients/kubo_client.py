"""Conformance check: drive a Bulwark node with ipfshttpclient, an existing Kubo RPC client, unchanged.

Usage: python kubo_client.py /ip4/127.0.0.1/tcp/PORT/http
Exits non-zero with a message on the first mismatch.
"""
import io
import sys
import warnings

warnings.simplefilter("ignore")
import ipfshttpclient  # noqa: E402

c = ipfshttpclient.Client(addr=sys.argv[1])

v = c.version()
assert "Version" in v, v
assert c.id()["ID"].startswith("12D3KooW")

h = c.add_bytes(b"hello world\n")
assert h == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o", h
assert c.cat(h) == b"hello world\n"
assert c.cat(h, offset=6, length=5) == b"world"

# ipfshttpclient's own fixture: "dsadsad\n" -> this CID with Size "16".
r = c.add(io.BytesIO(b"dsadsad\n"))
assert r["Hash"] == "QmQcCtMgLVwvMQGu6mvsRYLjwqrZJcYtH4mboM9urWW9vX", r
assert r["Size"] == "16", r
# The client sends raw-leaves=False unless told otherwise, which Kubo honours even with CIDv1.
r1 = c.add(io.BytesIO(b"dsadsad\n"), cid_version=1, raw_leaves=True)
assert r1["Hash"] == "bafkreiatrjkbyc7fz4ain4lpdv7els2cr7h55bjzrg6pg2oo2sf47hmmum", r1
r2 = c.add(io.BytesIO(b"dsadsad\n"), cid_version=1)
assert r2["Hash"].startswith("bafybei"), r2

keys = c.pin.ls(type="recursive")["Keys"]
assert r["Hash"] in keys and keys[r["Hash"]]["Type"] == "recursive", keys
assert c.block.stat(h)["Size"] == 20
assert c.block.get(h)[:2] == b"\x0a\x12"
k = c.block.put(io.BytesIO(b"some raw bytes"))["Key"]
assert c.block.get(k) == b"some raw bytes"

assert c.pin.rm(r["Hash"])["Pins"] == [r["Hash"]]
try:
    c.pin.rm(r["Hash"])
    raise AssertionError("second pin rm succeeded")
except ipfshttpclient.exceptions.ErrorResponse as e:
    assert str(e) == "not pinned or pinned indirectly", e
c.pin.add(r["Hash"])
assert r["Hash"] in c.pin.ls(type="recursive")["Keys"]

try:
    c.cat("QmInvalid")
    raise AssertionError("cat of an invalid CID succeeded")
except ipfshttpclient.exceptions.ErrorResponse as e:
    assert "invalid" in str(e), e
print("ok: ipfshttpclient", ipfshttpclient.__version__)
