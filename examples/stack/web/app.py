"""The stack example's web service: GET /version answers the VERSION file
baked into the image; POST /visits adds a row in PostgreSQL and answers how
many rows there are. Python's standard library and Debian's psycopg2, no
framework. The database is found by libpq's own variables (PGHOST, PGUSER,
PGDATABASE); its password is the secret file POSTGRES_PASSWORD_FILE names."""

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION"), "rb") as f:
    VERSION = f.read()


def password():
    path = os.environ.get("POSTGRES_PASSWORD_FILE")
    if path:
        with open(path) as f:
            return f.read().strip()
    return os.environ.get("POSTGRES_PASSWORD", "")


def count_a_visit():
    conn = psycopg2.connect(password=password(), connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:  # one transaction, committed on success
            # Two web containers may start at once: one creates the table.
            cur.execute("SELECT pg_advisory_xact_lock(4242)")
            cur.execute(
                "CREATE TABLE IF NOT EXISTS visits "
                "(id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("INSERT INTO visits DEFAULT VALUES")
            cur.execute("SELECT count(*) FROM visits")
            (count,) = cur.fetchone()
        return count
    finally:
        conn.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy's pool expects
    # The head and the body go out in two writes. On a kept-alive
    # connection, Nagle's algorithm holds the body back until the head is
    # acknowledged, which the reader delays by up to 40 ms: each answer
    # through the proxy's pool would wait that long.
    disable_nagle_algorithm = True

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/version":
            self.answer(200, VERSION)
        elif self.path == "/healthz":
            self.answer(200, b"ok\n")
        else:
            self.answer(404, b"not found\n")

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= 65536:
            self.close_connection = True
            self.answer(400, b"a body of at most 64 KiB, with its Content-Length\n")
            return
        self.rfile.read(length)  # the body says nothing; read so the next request starts clean
        if self.path != "/visits":
            self.answer(404, b"not found\n")
            return
        try:
            self.answer(200, b"%d\n" % count_a_visit())
        except psycopg2.Error as e:
            print(f"POST /visits: {e}".strip(), file=sys.stderr, flush=True)
            self.answer(503, b"the database is not answering\n")

    def log_message(self, format, *args):
        pass  # one line a request would drown the service's logs


def main():
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler)
    # PID 1 in a container ignores SIGTERM unless it handles it.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"web {VERSION.decode().strip()} listening on {server.server_address[1]}", flush=True)
    # shutdown() waits for the loop to look at its flag, which it does every
    # poll_interval (0.5 s by default) when no request comes: an instance
    # the proxy no longer sends requests to would take that long to stop.
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    main()
