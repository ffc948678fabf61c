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
import argparse, os, threading, time
from httpfiles import BadRange, FileHandler, Log, byte_range, serve_forever

args = None
log = None
lock = threading.Lock()
counters = {"fail500": 0, "drop": 0, "trickle": 0, "stall": 0}


class Handler(FileHandler):
    def do_HEAD(self):
        self.serve(head=True)

    def do_GET(self):
        self.serve(head=False)

    def serve(self, head):
        rel, path = self.file_path()
        if path is None:
            self.send_simple(404, b"not found\n")
            log("404 %s" % rel)
            return
        data_file = not rel.startswith(".imgdedup/")
        if not data_file and args.index_delay:
            time.sleep(args.index_delay)
        if data_file and args.redirect:
            self.send_simple(302, headers=[("Location", args.redirect)])
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
            self.send_simple(500, b"injected failure\n")
            log("500 %s" % rel)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        try:
            r = byte_range(rng, size)
        except BadRange:
            return self.send_simple(416, headers=[("Content-Range", "bytes */%d" % size)])
        if r is not None:
            (start, end), status = r, 206
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
            return self.hold_until_hangup()
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
    global args, log
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
    log = Log(args.log)
    Handler.root = args.root
    serve_forever(Handler, args.port_file)


if __name__ == "__main__":
    main()
