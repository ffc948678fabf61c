#!/usr/bin/env python3
"""Independent reference: per-block SHA-256 of a file, as imgdedup defines it.

usage: blockhash.py FILE [BLOCK_SIZE]      one hex digest per block (zero block: 64 zeros)
       blockhash.py --summary BS FILE...   JSON: blocks, zero_blocks, unique_blocks over all files
"""
import hashlib, json, sys

ZERO = "0" * 64

def blocks(path, bs):
    out = []
    with open(path, "rb") as f:
        while True:
            b = f.read(bs)
            if not b:
                break
            b = b.ljust(bs, b"\0")
            out.append(ZERO if b.count(0) == bs else hashlib.sha256(b).hexdigest())
    return out

if __name__ != "__main__":
    pass
elif sys.argv[1] == "--summary":
    bs = int(sys.argv[2]); total = zero = 0; uniq = set()
    for p in sys.argv[3:]:
        for d in blocks(p, bs):
            total += 1
            if d == ZERO: zero += 1
            else: uniq.add(d)
    print(json.dumps({"blocks": total, "zero_blocks": zero, "unique_blocks": len(uniq)}))
else:
    bs = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    digests = blocks(sys.argv[1], bs)
    if digests:
        print("\n".join(digests))
