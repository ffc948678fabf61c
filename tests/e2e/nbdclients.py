#!/usr/bin/python3
"""nbdclients.py - NBD clients for the hostile serve tests, built on
python3-libnbd (and, to hang up in the middle of a request, on raw sockets:
no client library lets go of a request it sent).  Every byte a read returns
is compared with REF, the raw image read here (an independent copy).

  nbdclients.py readers URI REF N [--chunk BYTES] [--seed S] [--rounds R]
      N threads, one connection each, read the whole export (R times) in
      chunks, each thread in its own random order.  Prints one JSON object:
      {"ok": chunks read exact, "eio": chunks the server refused with an
      error, "wrong": chunks whose bytes differ from REF, "dead":
      connections lost (the server went away), "bytes_ok": ...}.
      Exit status 1 when any chunk was wrong, 0 otherwise.

  nbdclients.py many SOCKET EXPORT REF --clients N [--hangups K] [--pid PID] [--seed S]
      N clients connected at once (K of them hang up in the middle of a
      request, in several ways), each reading a few small pieces at random
      offsets.  With --pid, the fd count of PID while all are connected is
      reported ("fds_connected").  Prints one JSON object: "ok", "eio",
      "wrong", "dead", "hangups" (requests abandoned), "fds_connected".
      Exit status 1 when any read was wrong.
"""
import json, os, random, socket, struct, sys, threading

import nbd

NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_CMD_READ = 0
OPT_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {"ok": 0, "eio": 0, "wrong": 0, "dead": 0, "bytes_ok": 0, "hangups": 0, "errors": []}

    def add(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def error(self, msg):
        with self.lock:
            if len(self.c["errors"]) < 10:
                self.c["errors"].append(msg)


def checked_read(h, ref, off, length, t):
    """One pread, its bytes compared with ref; False once the connection is dead."""
    try:
        data = h.pread(length, off)
    except nbd.Error as e:
        if h.aio_is_dead() or h.aio_is_closed():
            t.add("dead")
            return False
        t.add("eio")
        t.error("read %d+%d: %s" % (off, length, e))
        return True
    if data == ref[off:off + length]:
        t.add("ok")
        t.add("bytes_ok", length)
    else:
        t.add("wrong")
        t.error("read %d+%d: wrong bytes" % (off, length))
    return True


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def readers(args):
    uri, ref_path, n = args[0], args[1], int(args[2])
    opts = dict(zip(args[3::2], args[4::2]))
    chunk = int(opts.get("--chunk", 65536))
    seed = int(opts.get("--seed", 1))
    rounds = int(opts.get("--rounds", 1))
    ref = open(ref_path, "rb").read()
    t = Tally()

    def one(i):
        r = random.Random(seed * 1000 + i)
        try:
            h = connect(uri)
        except nbd.Error as e:
            t.add("dead")
            t.error("connect: %s" % e)
            return
        size = h.get_size()
        if size != len(ref):
            t.add("wrong")
            t.error("size %d, not %d" % (size, len(ref)))
            return
        for _ in range(rounds):
            offs = list(range(0, size, chunk))
            r.shuffle(offs)
            for off in offs:
                if not checked_read(h, ref, off, min(chunk, size - off), t):
                    return
        try:
            h.shutdown()
        except nbd.Error:
            pass

    ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    print(json.dumps(t.c))
    return 1 if t.c["wrong"] else 0


def raw_handshake(path, export):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    hdr = recv_exact(s, 18)
    if hdr[:16] != b"NBDMAGICIHAVEOPT":
        raise IOError("not a newstyle NBD server")
    s.sendall(struct.pack(">I", 3))
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", OPT_MAGIC, NBD_OPT_GO, len(data)) + data)
    while True:
        magic, _o, rtype, rlen = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, rlen)
        if magic != REP_MAGIC or rtype & 0x80000000:
            raise IOError("export refused")
        if rtype == NBD_REP_ACK:
            return s


def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        c = s.recv(n - len(out))
        if not c:
            raise IOError("closed")
        out += c
    return bytes(out)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def many(args):
    sock, export, ref_path = args[0], args[1], args[2]
    opts = dict(zip(args[3::2], args[4::2]))
    n = int(opts["--clients"])
    hangups = int(opts.get("--hangups", 0))
    pid = int(opts.get("--pid", 0))
    r0 = random.Random(int(opts.get("--seed", 1)))
    ref = open(ref_path, "rb").read()
    size = len(ref)
    uri = "nbd+unix:///%s?socket=%s" % (export, sock)
    t = Tally()
    # every client connected before any reads: the server holds all n at once
    conns = []
    for i in range(n):
        try:
            if i < hangups:
                conns.append(("raw", raw_handshake(sock, export)))
            else:
                conns.append(("nbd", connect(uri)))
        except (nbd.Error, OSError) as e:
            t.add("dead")
            t.error("connect %d: %s" % (i, e))
    fds = fd_count(pid) if pid else -1
    barrier = threading.Barrier(len(conns))

    def one(i, kind, c):
        r = random.Random(r0.random())
        barrier.wait()
        if kind == "nbd":
            for _ in range(4):
                length = r.choice((512, 4096, 12288, 65536))
                off = r.randrange(0, size - length) & ~511
                if not checked_read(c, ref, off, length, t):
                    return
            try:
                c.shutdown()
            except nbd.Error:
                pass
            return
        # hang up in the middle: right after sending a read (the server is
        # fetching it), after part of the reply, or half-way through sending
        # the request
        way = i % 3
        length = r.choice((1 << 20, 2 << 20)) if way != 2 else 65536
        off = r.randrange(0, size - length) & ~4095
        req = struct.pack(">IHHQQI", REQ_MAGIC, 0, NBD_CMD_READ, 1, off, length)
        try:
            if way == 0:
                c.sendall(req)
            elif way == 1:
                c.sendall(req)
                c.recv(16 + 1000)
            else:
                c.sendall(req[:13])
        except OSError:
            pass
        t.add("hangups")
        c.close()

    ths = [threading.Thread(target=one, args=(i, k, c)) for i, (k, c) in enumerate(conns)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    t.c["fds_connected"] = fds
    print(json.dumps(t.c))
    return 1 if t.c["wrong"] else 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    sys.exit({"readers": readers, "many": many}[cmd](sys.argv[2:]))
