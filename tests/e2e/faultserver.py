#!/usr/bin/env python3
"""faultserver.py - a small HTTP/1.1 file server with Range support and faults.

  faultserver.py --root DIR --port-file FILE [--fail500 N] [--drop N]
                 [--redirect URL] [--log FILE]

--fail500 N   the first N GET requests for files outside .imgdedup/ answer 500
--drop N      the next N such requests (after the 500s) send half the body and
              close the connection
--delay S     sleep S seconds before answering each request for a data file
--trickle N   the first N GET requests for data files (after the 500s and
              drops) send their body at 2 bytes per second
--redirect U  every request for a file outside .imgdedup/ answers 302 to U
--rate B      every data body is sent at B bytes per second (in tenths)
--stall N     the first N GET requests for data files send their headers and
              then nothing, until the client hangs up
--index-delay S  sleep S seconds before answering each request for an index
              file (under .imgdedup/)
Logs "done STATUS FILE RANGE LENGTH" once a data body was sent in full.
Writes the port it listens on (127.0.0.1) to FILE once it is ready.
"""
import argparse, os, re, socket, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = None
lock = threading.Lock()
counters = {"fail500": 0, "drop": 0, "trickle": 0, "stall": 0}


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
        # headers and body go out in separate writes: without this, Nagle and
        # delayed ACKs cost 40 ms per request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_HEAD(self):
        self.serve(head=True)

    def do_GET(self):
        self.serve(head=False)

    def serve(self, head):
        rel = self.path.split("?")[0].lstrip("/")
        path = os.path.realpath(os.path.join(args.root, rel))
        if not path.startswith(os.path.realpath(args.root) + os.sep) or not os.path.isfile(path):
            body = b"not found\n"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            log("404 %s" % rel)
            return
        data_file = not rel.startswith(".imgdedup/")
        if not data_file and args.index_delay:
            time.sleep(args.index_delay)
        if data_file and args.redirect:
            self.send_response(302)
            self.send_header("Location", args.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            log("302 %s" % rel)
            return
        fault = None
        if data_file and args.delay:
            time.sleep(args.delay)
        if data_file and not head:
            with lock:
                if counters["fail500"] < args.fail500:
                    counters["fail500"] += 1
                    fault = "500"
                elif counters["drop"] < args.drop:
                    counters["drop"] += 1
                    fault = "drop"
                elif counters["trickle"] < args.trickle:
                    counters["trickle"] += 1
                    fault = "trickle"
                elif counters["stall"] < args.stall:
                    counters["stall"] += 1
                    fault = "stall"
        if fault == "500":
            body = b"injected failure\n"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            log("500 %s" % rel)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= size:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        log("%d %s %s %d%s" % (status, rel, rng or "-", length, " " + fault.upper() if fault else ""))
        if head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(length)
        if fault == "stall":
            self.connection.settimeout(None)
            try:  # until the client hangs up
                while self.connection.recv(4096):
                    pass
            except OSError:
                pass
            self.close_connection = True
            return
        if args.rate and data_file:
            step = max(1, int(args.rate / 10))
            try:
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up
                self.close_connection = True
                return
            log("done %d %s %s %d" % (status, rel, rng or "-", length))
            return
        if fault == "trickle":
            try:
                for i in range(0, len(body), 2):
                    self.wfile.write(body[i:i + 2])
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:  # the client gave up
                self.close_connection = True
            return
        if fault == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        self.wfile.write(body)
        if data_file:
            log("done %d %s %s %d" % (status, rel, rng or "-", length))


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--fail500", type=int, default=0)
    p.add_argument("--drop", type=int, default=0)
    p.add_argument("--redirect")
    p.add_argument("--delay", type=float, default=0)
    p.add_argument("--trickle", type=int, default=0)
    p.add_argument("--rate", type=int, default=0)
    p.add_argument("--stall", type=int, default=0)
    p.add_argument("--index-delay", type=float, default=0)
    p.add_argument("--log")
    args = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
