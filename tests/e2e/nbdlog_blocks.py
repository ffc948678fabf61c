#!/usr/bin/env python3
"""nbdlog_blocks.py LOG BLOCK_SIZE [--ops Read,Cache] [--summary]

Prints, one per line and sorted, the distinct block indexes (offset //
BLOCK_SIZE) that the client requests logged by nbdkit's log filter
(`nbdkit --filter=log ... logfile=LOG`) touched.  Only request lines count
("connection=N Read id=I offset=0x... count=0x..."), not the "...Read id=I
return=..." lines that answer them, so a request is counted once.
--ops picks the actions (default: Read).  --summary prints one line
"requests=N bytes=N blocks=N" instead of the list.
"""
import re
import sys

REQ = re.compile(r" connection=\d+ (\w+) id=\d+ offset=(0x[0-9a-fA-F]+|\d+) count=(0x[0-9a-fA-F]+|\d+)")


def blocks(path, bs, ops):
    seen, requests, nbytes = set(), 0, 0
    with open(path, errors="replace") as f:
        for line in f:
            m = REQ.search(line)
            if not m or m.group(1) not in ops:
                continue
            off, count = int(m.group(2), 0), int(m.group(3), 0)
            requests += 1
            nbytes += count
            if count:
                seen.update(range(off // bs, (off + count - 1) // bs + 1))
    return seen, requests, nbytes


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    ops, summary = {"Read"}, "--summary" in argv
    for i, a in enumerate(argv):
        if a == "--ops" and i + 1 < len(argv):
            ops = set(argv[i + 1].split(","))
            args.remove(argv[i + 1])
    if len(args) != 2 or not args[1].isdigit() or int(args[1]) <= 0:
        sys.exit(__doc__)
    seen, requests, nbytes = blocks(args[0], int(args[1]), ops)
    if summary:
        print(f"requests={requests} bytes={nbytes} blocks={len(seen)}")
    else:
        sys.stdout.write("".join(f"{b}\n" for b in sorted(seen)))


if __name__ == "__main__":
    main(sys.argv[1:])
