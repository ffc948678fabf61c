#!/usr/bin/env python3
"""floor_bytes.py X Y BLOCK: writes to stdout the distinct blocks of X that
are neither all zero nor in Y, in first-occurrence order (the input of the
floor's compression)."""
import hashlib
import sys

def blocks(path, bs):
    with open(path, 'rb') as f:
        while True:
            b = f.read(bs)
            if not b:
                return
            yield b

def main():
    x, y, bs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    zero = bytes(bs)
    held = {hashlib.sha256(b).digest() for b in blocks(y, bs) if b != zero}
    out = sys.stdout.buffer
    for b in blocks(x, bs):
        if b == zero or len(b) < bs and b == bytes(len(b)):
            continue
        d = hashlib.sha256(b).digest()
        if d in held:
            continue
        held.add(d)
        out.write(b)

main()
