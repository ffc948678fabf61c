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
import argparse, os, re, socket, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = None
lock = threading.Lock()


def log(line):
    if args.log:
        with lock, open(args.log, "a") as f:
            f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        rel = self.path.split("?")[0].lstrip("/")
        rng = self.headers.get("Range")
        log("GET %s %s" % (rel, rng or "-"))
        path = os.path.realpath(os.path.join(args.root, rel))
        if not path.startswith(os.path.realpath(args.root) + os.sep) or not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
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

    def plain(self, path, rng):
        data = open(path, "rb").read()
        m = re.match(r"bytes=(\d+)-(\d+)", rng or "")
        if m:
            a, b = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
            body = data[a:b + 1]
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (a, b, len(data)))
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def image(self, path, rng):
        data = open(path, "rb").read()
        m = re.match(r"bytes=(\d+)-(\d+)", rng or "")
        if not m:
            return self.plain(path, rng)
        a, b = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
        body = data[a:b + 1]
        cr = "bytes %d-%d/%d" % (a, b, len(data))
        mode = args.mode
        if mode == "hang":
            try:
                while self.connection.recv(4096):
                    pass
            except OSError:
                pass
            self.close_connection = True
            return
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
        self.send_response(206)
        self.send_header("Content-Range", cr)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    global args
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--mode", required=True,
                    choices=["wrong", "truncated", "hang", "huge", "norange", "hugeindex"])
    ap.add_argument("--log")
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
