#!/usr/bin/env python3
"""s3proxy.py - a transparent HTTP proxy in front of an S3 endpoint (Swift
with s3api) that counts what it forwards and injects throttling and errors.

  s3proxy.py --upstream HOST:PORT --port-file FILE [--log FILE]
             [--slowdown N] [--fail500 N] [--skip N]

Requests go upstream unchanged, the Host header included, so SigV4
signatures made for the proxy's address still verify.  Data requests (keys
outside .imgdedup/) are numbered as they arrive; after the first --skip of
them, the next --slowdown are answered "503 SlowDown" (S3's throttling) and
the --fail500 after those "500 InternalError", without reaching upstream.
--log gets one line per forwarded request: METHOD PATH STATUS BODY_BYTES RANGE
Writes its port (127.0.0.1) to FILE once listening.
"""
import argparse
import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

args = None
lock = threading.Lock()
state = {"data": 0}
local = threading.local()

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection"}


def upstream():
    c = getattr(local, "conn", None)
    if c is None:
        host, port = args.upstream.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        local.conn = c
    return c


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def fault(self):
        path = urlsplit(self.path).path
        if "/.imgdedup/" in path or self.command not in ("GET", "HEAD"):
            return None
        if path.count("/") < 2:  # the bucket itself (a listing)
            return None
        with lock:
            state["data"] += 1
            n = state["data"] - args.skip
        if 0 < n <= args.slowdown:
            return (503, "SlowDown", "Please reduce your request rate.")
        if args.slowdown < n <= args.slowdown + args.fail500:
            return (500, "InternalError", "We encountered an internal error. Please try again.")
        return None

    def answer(self, status, headers, body):
        self.send_response(status)
        length = str(len(body))
        for k, v in headers:
            if k.lower() == "content-length" and self.command == "HEAD":
                length = v  # a HEAD answer says the size of what a GET would send
            elif k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        f = self.fault()
        if f:
            code, name, msg = f
            xml = ("<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>%s</Code>"
                   "<Message>%s</Message></Error>" % (name, msg)).encode()
            self.answer(code, [("Content-Type", "application/xml")], xml)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        for attempt in range(2):
            c = upstream()
            try:
                c.request(self.command, self.path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                break
            except (http.client.HTTPException, OSError):
                c.close()
                local.conn = None
                if attempt:
                    raise
        if args.log:
            with lock, open(args.log, "a") as f:
                f.write("%s %s %d %d %s\n" % (self.command, urlsplit(self.path).path, r.status,
                                              len(data) if self.command != "HEAD" else 0,
                                              self.headers.get("Range", "-").replace(" ", "")))
        self.answer(r.status, r.getheaders(), data)

    do_GET = do_HEAD = do_PUT = do_DELETE = do_POST = forward


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log")
    p.add_argument("--slowdown", type=int, default=0)
    p.add_argument("--fail500", type=int, default=0)
    p.add_argument("--skip", type=int, default=0)
    args = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
