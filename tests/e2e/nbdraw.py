#!/usr/bin/env python3
"""nbdraw.py - a minimal NBD client (fixed newstyle, NBD_OPT_GO, simple
replies) for tests that need what the ordinary clients refuse to do: a
request larger than the server's advertised maximum, many reads on one
connection with each one's error code, a read whose answer is timed against
the server's log.

  from nbdraw import Client
  c = Client("/path/to.sock", "export")     # c.size: the export's size
  err, data = c.read(off, length)          # err: 0 or the errno the server sent
  c.close()

As a command:
  nbdraw.py SOCKET EXPORT OFF LEN [OFF LEN]...
prints one line per read: "ok SHA256" or "error ERRNO".
"""
import hashlib, socket, struct, sys

NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_INFO_EXPORT = 0
NBD_CMD_READ = 0
NBD_CMD_DISC = 2
OPT_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698


class Client:
    def __init__(self, path, export=""):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        magic, opt, _flags = struct.unpack(">8s8sH", self._recv(18))
        if magic != b"NBDMAGIC" or opt != b"IHAVEOPT":
            raise IOError("not a newstyle NBD server")
        self.s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.s.sendall(struct.pack(">QII", OPT_MAGIC, NBD_OPT_GO, len(data)) + data)
        self.size = None
        while True:
            rmagic, _o, rtype, rlen = struct.unpack(">QIII", self._recv(20))
            body = self._recv(rlen)
            if rmagic != REP_MAGIC:
                raise IOError("bad option reply")
            if rtype & 0x80000000:
                raise IOError("export refused (%#x): %s" % (rtype, body[4:].decode(errors="replace")))
            if rtype == NBD_REP_INFO and struct.unpack(">H", body[:2])[0] == NBD_INFO_EXPORT:
                self.size = struct.unpack(">Q", body[2:10])[0]
            if rtype == NBD_REP_ACK:
                break
        self.handle = 0

    def _recv(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise IOError("the server closed the connection")
            out += chunk
        return bytes(out)

    def read(self, off, length):
        self.handle += 1
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, NBD_CMD_READ, self.handle, off, length))
        magic, err, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self.handle:
            raise IOError("bad reply")
        if err:
            return err, b""
        return 0, self._recv(length)

    def close(self):
        try:
            self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, NBD_CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        self.s.close()


if __name__ == "__main__":
    c = Client(sys.argv[1], sys.argv[2])
    args = [int(a) for a in sys.argv[3:]]
    for i in range(0, len(args), 2):
        e, d = c.read(args[i], args[i + 1])
        print("error %d" % e if e else "ok " + hashlib.sha256(d).hexdigest(), flush=True)
    c.close()
