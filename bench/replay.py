#!/usr/bin/python3
"""replay.py - record a guest's NBD reads and replay them (bench_wait.sh).

    replay.py parse NBDKIT_LOG TRACE
        The Read lines of nbdkit's log filter into a trace, one read a line:
        conn  start  end  offset  length  after  gap
        (start, end: seconds since the first read; after: the index of the
        read on the same connection that completed last before this one
        started, -1 if none; gap: seconds from that completion, or from the
        first read of the trace, to this read's start: the think time).
    replay.py run TRACE NBD_URI [--json OUT] [--think-scale F]
        Replays the trace through libnbd, one handle per recorded connection:
        each read is issued `gap` seconds after its `after` read completed in
        this replay (or after the replay started), so think times and the
        recorded concurrency are kept and only the time spent waiting on the
        server changes.  Prints (and writes to OUT) a JSON object: seconds
        (wall time), virtual_seconds (the replay on a virtual clock: every
        read issued exactly its think time after the one it follows, with the
        latency it had: free of the host's scheduling lateness), reads,
        bytes, p50_ms, p90_ms, p99_ms, max_ms, mean_ms.  --think-scale F
        multiplies every think time by F (0.1: a guest ten times faster than
        the TCG guest recorded, as under KVM).
    replay.py ideal TRACE IMAGE [CACHED_IMAGE...]
        The bytes of the distinct non-zero 4 KiB blocks the trace reads that
        none of CACHED_IMAGE holds: what a node with those images cached
        must fetch at the least.
Needs python3-libnbd (Debian's /usr/bin/python3).
"""
import datetime
import hashlib
import json
import os
import re
import sys
import threading
import time

LINE = re.compile(r"^(\S+ \S+) connection=(\d+) (\.\.\.)?Read id=(\d+)"
                  r"(?: offset=0x([0-9a-f]+) count=0x([0-9a-f]+))?")


def stamp(s):
    # nbdkit prints local wall time with microseconds; seconds since the
    # epoch as a float keep them (a day number times 86400 would not)
    whole, frac = s.split(".")
    return datetime.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + frac)


def parse(log, out):
    begun = {}   # (conn, id) -> (start, offset, count)
    reads = []   # [conn, start, end, offset, count]
    for line in open(log, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        t = stamp(m.group(1))
        key = (int(m.group(2)), int(m.group(4)))
        if m.group(3) is None:
            begun[key] = (t, int(m.group(5), 16), int(m.group(6), 16))
        elif key in begun:
            s, off, cnt = begun.pop(key)
            reads.append([key[0], s, t, off, cnt])
    if not reads:
        sys.exit("replay.py: no reads in %s" % log)
    reads.sort(key=lambda r: (r[1], r[0]))
    t0 = reads[0][1]
    with open(out + ".tmp", "w") as f:
        f.write("# conn\tstart\tend\toffset\tlength\tafter\tgap\n")
        for i, (conn, s, e, off, cnt) in enumerate(reads):
            after, done = -1, None
            for j in range(i):
                r = reads[j]
                if r[0] == conn and r[2] <= s and (done is None or r[2] > done):
                    after, done = j, r[2]
            gap = s - (done if done is not None else t0)
            f.write("%d\t%.6f\t%.6f\t%d\t%d\t%d\t%.6f\n"
                    % (conn, s - t0, e - t0, off, cnt, after, max(gap, 0.0)))
    os.replace(out + ".tmp", out)
    print("trace: %d reads, %d bytes, %d connections, %.2f s recorded"
          % (len(reads), sum(r[4] for r in reads), len({r[0] for r in reads}),
             max(r[2] for r in reads) - t0))


def load(trace):
    out = []
    for line in open(trace):
        if line.startswith("#"):
            continue
        c, s, e, off, cnt, after, gap = line.split("\t")
        out.append((int(c), float(s), float(e), int(off), int(cnt), int(after), float(gap)))
    return out


def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def run(trace, uri, json_out, scale):
    import nbd
    reads = [r[:6] + (r[6] * scale,) for r in load(trace)]
    conns = sorted({r[0] for r in reads})
    issued = [None] * len(reads)
    done = [None] * len(reads)
    errors = []
    t0 = [None]
    barrier = threading.Barrier(len(conns))

    def connection(conn):
        h = nbd.NBD()
        for attempt in range(500):   # a server whose socket just appeared
            try:
                h.connect_uri(uri)
                break
            except nbd.Error:
                if attempt == 499:
                    raise
                h = nbd.NBD()
                time.sleep(0.01)
        mine = [i for i, r in enumerate(reads) if r[0] == conn]
        bufs = {}
        barrier.wait()
        if t0[0] is None:
            t0[0] = time.monotonic()
        start = t0[0]
        nxt = 0
        while nxt < len(mine) or h.aio_in_flight() > 0:
            now = time.monotonic()
            wait_ms = -1
            while nxt < len(mine):
                i = mine[nxt]
                _, _, _, off, cnt, after, gap = reads[i]
                base = start if after < 0 else done[after]
                if base is None:      # waits on a read still in flight
                    break
                due = base + gap
                if due > now:
                    wait_ms = max(1, int((due - now) * 1000))
                    break
                buf = nbd.Buffer(cnt)
                bufs[i] = buf

                def completed(err, i=i):
                    done[i] = time.monotonic()
                    if err.value:
                        errors.append("read %d: error %d" % (i, err.value))
                    return 1
                issued[i] = time.monotonic()
                h.aio_pread(buf, off, completion=completed)
                nxt += 1
            if h.aio_in_flight() > 0 or wait_ms >= 0:
                h.poll(wait_ms if wait_ms >= 0 else -1)
            for k in [k for k in bufs if done[k] is not None]:
                del bufs[k]
        h.shutdown()

    threads = [threading.Thread(target=connection, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors or any(d is None for d in done):
        sys.exit("replay.py: %s" % (errors[:3] or "reads not completed"))
    # The same replay on a virtual clock: each read issued exactly its think
    # time after the read it follows, taking the latency it took.  This drops
    # the host scheduler's lateness in waking the replay (tens of ms under
    # load), which would otherwise swamp the waiting measured.
    vdone = [0.0] * len(reads)
    for i, r in enumerate(reads):
        base = 0.0 if r[5] < 0 else vdone[r[5]]
        vdone[i] = base + r[6] + (done[i] - issued[i])
    lat = sorted((d - s) * 1000.0 for s, d in zip(issued, done))
    res = {
        "seconds": round(max(done) - t0[0], 4),
        "virtual_seconds": round(max(vdone), 4),
        "reads": len(reads),
        "bytes": sum(r[4] for r in reads),
        "p50_ms": round(pct(lat, 50), 3),
        "p90_ms": round(pct(lat, 90), 3),
        "p99_ms": round(pct(lat, 99), 3),
        "max_ms": round(lat[-1], 3),
        "mean_ms": round(sum(lat) / len(lat), 3),
    }
    text = json.dumps(res)
    print(text)
    if json_out:
        with open(json_out, "w") as f:
            f.write(text + "\n")


ZERO = hashlib.sha256(bytes(4096)).digest()


def digests(path, blocks=None):
    out = {}
    with open(path, "rb") as f:
        if blocks is None:
            blk = 0
            while True:
                b = f.read(4096)
                if not b:
                    break
                out[blk] = hashlib.sha256(b.ljust(4096, b"\0")).digest()
                blk += 1
        else:
            for blk in sorted(blocks):
                f.seek(blk * 4096)
                out[blk] = hashlib.sha256(f.read(4096).ljust(4096, b"\0")).digest()
    return out


def ideal(trace, image, cached):
    blocks = set()
    for _, _, _, off, cnt, _, _ in load(trace):
        blocks.update(range(off // 4096, (off + cnt + 4095) // 4096))
    want = set(digests(image, blocks).values()) - {ZERO}
    for c in cached:
        want -= set(digests(c).values())
    print(4096 * len(want))


def main():
    a = sys.argv[1:]
    if len(a) == 3 and a[0] == "parse":
        parse(a[1], a[2])
    elif len(a) >= 3 and a[0] == "run":
        opts = dict(zip(a[3::2], a[4::2]))
        if len(a) % 2 == 0 or set(opts) - {"--json", "--think-scale"}:
            sys.exit(__doc__)
        run(a[1], a[2], opts.get("--json"), float(opts.get("--think-scale", 1)))
    elif len(a) >= 3 and a[0] == "ideal":
        ideal(a[1], a[2], a[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
