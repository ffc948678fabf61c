"""httpfiles.py - what the test HTTP servers (badpeer.py, faultserver.py)
share: a file under the served root by request path, the byte range a Range
header asks for, a request log, holding a connection until the client hangs
up, and a server on 127.0.0.1 that writes its port to a file once ready."""
import os, re, socket, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BadRange(ValueError):
    """A Range header that is not "bytes=A-[B]", or starts past the end."""


def byte_range(header, size):
    """(start, end) inclusive of the range header asks for, end clipped to
    the file; None without a header; BadRange when it cannot be served."""
    if not header:
        return None
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
    if not m or int(m.group(1)) >= size:
        raise BadRange(header)
    end = int(m.group(2)) if m.group(2) else size - 1
    return int(m.group(1)), min(end, size - 1)


class Log:
    """Lines appended to a file (none without a path), one writer at a time."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def __call__(self, line):
        if self.path:
            with self.lock, open(self.path, "a") as f:
                f.write(line + "\n")


class FileHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, quiet, headers and body without Nagle's delay."""
    protocol_version = "HTTP/1.1"
    root = None  # the directory served, set by the server's user

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        # headers and body go out in separate writes: without this, Nagle and
        # delayed ACKs cost 40 ms per request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def file_path(self):
        """(path relative to the root, file) of the request; file is None
        unless a regular file under the root."""
        rel = self.path.split("?")[0].lstrip("/")
        path = os.path.realpath(os.path.join(self.root, rel))
        if not path.startswith(os.path.realpath(self.root) + os.sep) or not os.path.isfile(path):
            return rel, None
        return rel, path

    def send_simple(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def hold_until_hangup(self):
        """Answer nothing more: read until the client closes the connection."""
        self.connection.settimeout(None)
        try:
            while self.connection.recv(4096):
                pass
        except OSError:
            pass
        self.close_connection = True


def serve_forever(handler, port_file):
    """Listen on 127.0.0.1 (a free port), write the port to port_file (whole
    or not at all: a temporary renamed), serve until killed."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, port_file)
    srv.serve_forever()
