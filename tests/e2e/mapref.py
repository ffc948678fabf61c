#!/usr/bin/env python3
"""Independent decoder of a block map (docs/formats-map.md), checked against
python3 hashlib digests of the image.  The zstd payload is decompressed with
the zstd command-line tool.

usage: mapref.py MAPFILE IMAGE BS   prints 'distinct=N bytes=N'; exits 1 on any mismatch"""
import hashlib, struct, subprocess, sys

def varint(b, p):
    v = s = 0
    while True:
        c = b[p]; p += 1
        v |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return v, p

path, image, bs = sys.argv[1], sys.argv[2], int(sys.argv[3])
f = open(path, "rb").read()
assert f[:8] == b"IDD-MAP\0", "magic"
ver, flags, plen, slen = struct.unpack_from("<IIQQ", f, 8)
assert ver == 1 and len(f) == 32 + slen + 32
assert hashlib.sha256(f[:32 + slen]).digest() == f[32 + slen:], "checksum"
p = f[32:32 + slen]
if flags & 1:
    p = subprocess.run(["zstd", "-dc"], input=p, capture_output=True, check=True).stdout
assert len(p) == plen
blk_size, img_size, nblocks, ndistinct = struct.unpack_from("<IQQQ", p, 0)
pos = 28 + 32
idlen, pos = varint(p, pos); pos += idlen
table = [p[pos + 32 * i: pos + 32 * i + 32] for i in range(ndistinct)]; pos += 32 * ndistinct
refs, nxt = [], 1
while pos < len(p):
    tag, pos = varint(p, pos); n, kind = tag >> 2, tag & 3
    if kind == 0: refs += [0] * n
    elif kind == 1: refs += range(nxt, nxt + n); nxt += n
    else:
        r, pos = varint(p, pos)
        refs += [r + k for k in range(n)] if kind == 2 else [r] * n
assert blk_size == bs and len(refs) == nblocks and nxt == ndistinct + 1
want = []
with open(image, "rb") as fh:
    while True:
        b = fh.read(bs)
        if not b: break
        b = b.ljust(bs, b"\0")
        want.append(None if b.count(0) == bs else hashlib.sha256(b).digest())
assert img_size == __import__("os").path.getsize(image) and len(want) == nblocks
for i, (r, w) in enumerate(zip(refs, want)):
    got = None if r == 0 else table[r - 1]
    assert got == w, "block %d differs" % i
print("distinct=%d bytes=%d" % (ndistinct, len(f)))
