#!/usr/bin/env python3
"""idxcraft.py - write imgdedup index files by hand (docs/formats.md), for
tests that need well-formed files saying hostile or wrong things.

  idxcraft.py catalog OUT BLOCK_SIZE ENTRY...
      ENTRY is id|file|member|list_key_hex|virtual_size|nblocks|zero|distinct
      (entries are written in the order given: give them sorted by id)
  idxcraft.py map OUT ID LIST_KEY_HEX VIRTUAL_SIZE BLOCK_SIZE BLOCKS_FILE [FLIP]
      BLOCKS_FILE: one hex digest per block (imgdedup info --blocks); FLIP: the
      index of a digest-table entry to alter (a valid map saying wrong things)

Files are written uncompressed (flags 0) with a correct SHA-256 trailer.
"""
import hashlib, struct, sys


def container(magic, version, payload):
    body = magic + struct.pack("<IIQQ", version, 0, len(payload), len(payload)) + payload
    return body + hashlib.sha256(body).digest()


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def s(x):
    b = x.encode()
    return varint(len(b)) + b


def catalog(out, bs, entries):
    p = struct.pack("<IQQQ", int(bs), 1, 0, len(entries))
    for e in entries:
        id_, file_, member, key, vsize, nblocks, zero, distinct = e.split("|")
        p += s(id_) + s(file_) + s(member) + s("raw") + s("")
        p += bytes([0]) + struct.pack("<QQQQQQQQ", 0, 0, 0, 0, 0, 0, 0, int(vsize))
        p += struct.pack("<QQQQ", int(nblocks), int(zero), int(distinct), 0)
        p += bytes.fromhex(key) + varint(0)
    open(out, "wb").write(container(b"IDD-CAT\0", 1, p))


def blockmap(out, id_, key, vsize, bs, blocks_file, flip=None):
    digests = [bytes.fromhex(l.strip()) for l in open(blocks_file) if l.strip()]
    table, index, runs = [], {}, b""
    for d in digests:
        if d == bytes(32):
            runs += varint(1 << 2 | 0)
        elif d in index:
            runs += varint(1 << 2 | 3) + varint(index[d])
        else:
            table.append(d)
            index[d] = len(table)
            runs += varint(1 << 2 | 1)
    if flip is not None:
        t = bytearray(table[flip]); t[0] ^= 0xFF; table[flip] = bytes(t)
    p = struct.pack("<IQQQ", int(bs), int(vsize), len(digests), len(table)) + bytes.fromhex(key)
    p += s(id_) + b"".join(table) + runs
    open(out, "wb").write(container(b"IDD-MAP\0", 1, p))


if __name__ == "__main__":
    if sys.argv[1] == "catalog":
        catalog(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "map":
        a = sys.argv[2:]
        blockmap(a[0], a[1], a[2], a[3], a[4], a[5], int(a[6]) if len(a) > 6 else None)
    else:
        sys.exit(__doc__)
