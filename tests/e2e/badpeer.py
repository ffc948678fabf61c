#!/usr/bin/env python3
"""badpeer.py - a malicious peer: serves a real node cache directory over
HTTP/1.1 (GET with Range, as nginx would) and misbehaves on its images.

  badpeer.py --root CACHE_DIR --port-file FILE --mode MODE [--log FILE]

MODE (the cache index is served faithfully unless said otherwise):
  wrong      206 answers of the right length whose bytes are changed
  truncated  206 answers whose Content-Length and body are half the range
  hang       image requests are read and never answered (until the client
             hangs up)
  huge       206 answers with the right start, no Content-Length and an
             endless body (the connection is closed when the client goes)
  norange    200 answers: the whole file, Range ignored, then more
  hugeindex  the index is an endless stream claiming 4 GiB
Logs "GET PATH RANGE" per request, and "SENT BYTES" when an endless body ends.  Writes its port once ready.
"""
import argparse
from httpfiles import BadRange, FileHandler, Log, byte_range, serve_forever

args = None
log = None


class Handler(FileHandler):
    def do_GET(self):
        rel, path = self.file_path()
        rng = self.headers.get("Range")
        log("GET %s %s" % (rel, rng or "-"))
        if path is None:
            return self.send_simple(404)
        try:
            if rel == "index" and args.mode == "hugeindex":
                self.endless(200, {"Content-Length": str(4 << 30)})
            elif rel.startswith("images/") and args.mode != "hugeindex":
                self.image(path, rng)
            else:
                self.plain(path, rng)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def endless(self, status, headers, first=b""):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        junk = bytes(range(256)) * 256
        sent = 0
        try:
            self.wfile.write(first)
            sent += len(first)
            while True:
                self.wfile.write(junk)
                sent += len(junk)
        finally:
            log("SENT %d" % sent)

    @staticmethod
    def read(path, rng):
        """the file's bytes and the range asked (None: the whole file)"""
        data = open(path, "rb").read()
        try:
            return data, byte_range(rng, len(data))
        except BadRange:
            return data, None

    def plain(self, path, rng):
        data, r = self.read(path, rng)
        if r is None:
            return self.send_simple(200, data)
        a, b = r
        self.send_simple(206, data[a:b + 1], [("Content-Range", "bytes %d-%d/%d" % (a, b, len(data)))])

    def image(self, path, rng):
        data, r = self.read(path, rng)
        if r is None:
            return self.plain(path, rng)
        a, b = r
        body = data[a:b + 1]
        cr = "bytes %d-%d/%d" % (a, b, len(data))
        mode = args.mode
        if mode == "hang":
            return self.hold_until_hangup()
        if mode == "huge":
            return self.endless(206, {"Content-Range": cr}, body)
        if mode == "norange":
            return self.endless(200, {}, data)
        if mode == "wrong":
            body = bytearray(body)
            for i in range(100, len(body), 4096):
                body[i] ^= 0x5A
            body = bytes(body)
        if mode == "truncated":
            body = body[:max(1, len(body) // 2)]
        self.send_simple(206, body, [("Content-Range", cr)])


def main():
    global args, log
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--mode", required=True,
                    choices=["wrong", "truncated", "hang", "huge", "norange", "hugeindex"])
    ap.add_argument("--log")
    args = ap.parse_args()
    log = Log(args.log)
    Handler.root = args.root
    serve_forever(Handler, args.port_file)


if __name__ == "__main__":
    main()
