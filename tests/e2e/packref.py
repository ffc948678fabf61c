#!/usr/bin/env python3
"""Independent reader of a pack (docs/formats.md, "Pack"), checked against
python3 hashlib digests of dd slices of the images.  zstd payloads and
frames are decompressed with the zstd command-line tool; frames are cut out
of the data files with dd.

usage: packref.py INDEX_DIR BS ID=IMAGE_PATH...
  Checks: the pack index (manifest, runs merged newest first, frame tables)
  and every view parse; every kept block list is named by its checksum;
  each data file decodes whole
  (zstd -dc) and frame by frame to blocks whose SHA-256 are the digests the
  index gives; the index lists exactly the distinct non-zero blocks of the
  images; each image's view (named by its block list key, from
  'imgdedup info --json') gives, in map order, a frame holding the block.
  Prints a JSON summary; exits 1 on any mismatch."""
import hashlib, json, os, struct, subprocess, sys

ZERO = bytes(32)

def varint(b, p):
    v = s = 0
    while True:
        c = b[p]; p += 1
        v |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return v, p

def container(path, magic, version=1):
    f = open(path, "rb").read()
    assert f[:8] == magic, f"{path}: magic"
    ver, flags, plen, slen = struct.unpack_from("<IIQQ", f, 8)
    assert ver == version and len(f) == 32 + slen + 32, f"{path}: lengths"
    assert hashlib.sha256(f[:32 + slen]).digest() == f[32 + slen:], f"{path}: checksum"
    p = f[32:32 + slen]
    if flags & 1:
        p = subprocess.run(["zstd", "-dc"], input=p, capture_output=True, check=True).stdout
    assert len(p) == plen, f"{path}: payload length"
    return p

def dd_slice(path, off, n):
    return subprocess.run(["dd", f"if={path}", "iflag=skip_bytes,count_bytes", f"skip={off}",
                           f"count={n}", "status=none"], capture_output=True, check=True).stdout

def unzstd(b):
    return subprocess.run(["zstd", "-dc"], input=b, capture_output=True, check=True).stdout

def image_blocks(path, bs):
    out = []
    with open(path, "rb") as f:
        while True:
            b = f.read(bs)
            if not b:
                break
            b = b.ljust(bs, b"\0")
            out.append(ZERO if b.count(0) == bs else hashlib.sha256(b).digest())
    return out

idx, bs = sys.argv[1], int(sys.argv[2])
images = [a.split("=", 1) for a in sys.argv[3:]]
p = container(os.path.join(idx, "pack/index"), b"IDD-PKI\0", 2)
block_size, frame_blocks, level, flags = struct.unpack_from("<IIII", p, 0)
assert block_size == bs and frame_blocks * bs <= max(256 << 10, bs) and flags == 0
written, next_seq, nlive, nfiles = struct.unpack_from("<QQQQ", p, 16); pos = 48
files = []
for _ in range(nfiles):
    name = p[pos:pos + 32].hex()
    size, nfr, nslots, ft_size, ft_ino, ft_mt = struct.unpack_from("<QQQQQq", p, pos + 32); pos += 80
    files.append((name, size, nfr, nslots))
# frames, from each data file's frame table: (file, off, clen, nblocks, first ordinal)
frames, first = [], 0
for fi, (name, size, nfr, nslots) in enumerate(files):
    t = container(os.path.join(idx, "pack/data", name + ".zpf"), b"IDD-PKF\0")
    assert len(t) == 24 * nfr, "frame table length"
    off, base = 32, first
    for j in range(nfr):
        f_first, f_off, clen, nb = struct.unpack_from("<QQII", t, 24 * j)
        assert f_first == first - base and f_off == off and 1 <= nb <= frame_blocks, "frame table"
        frames.append((fi, off, clen, nb, first)); off += clen; first += nb
    assert off == size and first - base == nslots, "frames fill the data file"
# the digest index: runs, oldest first; the newest entry of a digest wins,
# ordinal 2^64-1 says the digest left the pack
nruns, = struct.unpack_from("<Q", p, pos); pos += 8
entries = {}
for _ in range(nruns):
    seq, n, size, ino, mt = struct.unpack_from("<QQQQq", p, pos); pos += 40
    r = container(os.path.join(idx, "pack/runs", "%016x" % seq), b"IDD-PKR\0")
    assert len(r) == 40 * n, "run length"
    prev = b""
    for i in range(n):
        d = r[40 * i:40 * i + 32]; ordinal, = struct.unpack_from("<Q", r, 40 * i + 32)
        assert d > prev, "run not sorted"; prev = d
        if ordinal == (1 << 64) - 1:
            entries.pop(d, None)
        else:
            entries[d] = ordinal
assert len(entries) == nlive, "live entry count"
nlists, = struct.unpack_from("<Q", p, pos); pos += 8
views = set()
for i in range(nlists):
    key = p[pos:pos + 32].hex(); pos += 64
    views.add(key)
    # the block list the view was made from, kept under its key
    kept = open(os.path.join(idx, "pack/lists", key), "rb").read()
    assert kept[:8] == b"IDD-BLK\0" and kept[-32:].hex() == key, f"kept list {key}"
    assert hashlib.sha256(kept[:-32]).hexdigest() == key, f"kept list {key}: checksum"
assert pos == len(p), "trailing bytes"

# every data file: a header, then frames; decoded whole and frame by frame
slot_digest = {}
for fi, (name, size, nfr, nslots) in enumerate(files):
    path = os.path.join(idx, "pack/data", name + ".zpk")
    assert os.path.getsize(path) == size, f"{path}: size"
    head = dd_slice(path, 0, 32)
    assert struct.unpack_from("<II", head, 0) == (0x184D2A5B, 24) and head[8:16] == b"IDD-PKD\0"
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == name, f"{path}: name is not its SHA-256"
    whole = unzstd(open(path, "rb").read())
    assert len(whole) == sum(f[3] for f in frames if f[0] == fi) * bs, f"{path}: zstd -dc length"
    for (ffi, off, clen, nb, first) in frames:
        if ffi != fi:
            continue
        raw = unzstd(dd_slice(path, off, clen))
        assert len(raw) == nb * bs, f"{path}@{off}: frame length"
        for s in range(nb):
            slot_digest[first + s] = hashlib.sha256(raw[s * bs:(s + 1) * bs]).digest()
for d, ordinal in entries.items():
    assert slot_digest[ordinal] == d, "an entry's block does not match its digest"

expected, per_image = set(), {}
for iid, path in images:
    bl = image_blocks(path, bs)
    order, seen = [], set()
    for d in bl:
        if d != ZERO and d not in seen:
            seen.add(d); order.append(d)
    per_image[iid] = order
    expected |= seen
assert set(entries) == expected, f"pack holds {len(entries)} digests, images have {len(expected)}"

# each image's view, in map order
checked_views = 0
for iid, path in images:
    info = json.loads(subprocess.run([os.environ["IMGDEDUP"], "info", "--json", "--index", idx,
                                      os.path.dirname(idx), iid], capture_output=True,
                                     check=True).stdout)
    key = info["block_list"]
    assert key in views, f"{iid}: no view"
    v = container(os.path.join(idx, "pack/views", key), b"IDD-PKV\0")
    assert v[:32].hex() == key
    vbs, res, ndist, vnfiles = struct.unpack_from("<IIQQ", v, 32)
    assert vbs == bs and ndist == len(per_image[iid])
    q = 56
    vfiles = []
    for _ in range(vnfiles):
        vfiles.append((v[q:q + 32].hex(), struct.unpack_from("<Q", v, q + 32)[0])); q += 40
    vnframes, = struct.unpack_from("<Q", v, q); q += 8
    vframes, vfirst, pf, pend = [], 0, 0, 32
    for _ in range(vnframes):
        fi, q = varint(v, q); gap, q = varint(v, q); clen, q = varint(v, q); nb, q = varint(v, q)
        if fi != pf:
            pend = 32
        off = pend + gap
        vframes.append((fi, off, clen, nb, vfirst)); vfirst += nb; pf, pend = fi, off + clen
    prev, decoded = -1, {}
    for k in range(ndist):
        code, q = varint(v, q)
        assert code, f"{iid}: digest {k} not packed"
        zz = code - 1
        slot = prev + 1 + ((zz >> 1) ^ -(zz & 1)); prev = slot
        fr = next(f for f in vframes if f[4] <= slot < f[4] + f[3])
        name = vfiles[fr[0]][0]
        if (name, fr[1]) not in decoded:
            decoded[(name, fr[1])] = unzstd(dd_slice(os.path.join(idx, "pack/data", name + ".zpk"), fr[1], fr[2]))
        raw = decoded[(name, fr[1])]
        s = slot - fr[4]
        assert hashlib.sha256(raw[s * bs:(s + 1) * bs]).digest() == per_image[iid][k], f"{iid}: view slot {k}"
    assert q == len(v), f"{iid}: view trailing bytes"
    checked_views += 1

print(json.dumps({"blocks": len(entries), "files": len(files), "frames": len(frames),
                  "views": checked_views}))
