"""A plain payments service with no idempotency of its own, on Python's
http.server, for idemproxy's black-box tests.

POST /payments {"amount": int, "currency": str, "delay_ms": int, "fail": bool}
answers 201 with a new payment (or 400, or 500 when "fail"); GET /payments
lists them with the number of executions. Prints "listening on HOST:PORT".
"""
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
payments = []
executions = 0
keys = {}  # Idempotency-Key seen upstream -> count


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, ctype="application/json", extra=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def problem(self, status, title):
        self.send(status, {"type": "about:blank", "title": title, "status": status},
                  "application/problem+json")

    def do_GET(self):
        if self.path == "/payments":
            with lock:
                self.send(200, {"count": len(payments), "executions": executions,
                                "keys": keys, "payments": payments})
        elif self.path == "/healthz":
            self.send(200, "ok")
        else:
            self.problem(404, "Not Found")

    def do_POST(self):
        global executions
        if self.path != "/payments":
            self.problem(404, "Not Found")
            return
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        with lock:
            executions += 1
            key = self.headers.get("Idempotency-Key")
            if key:
                keys[key] = keys.get(key, 0) + 1
        try:
            req = json.loads(raw)
        except ValueError:
            self.problem(400, "Malformed JSON")
            return
        if not isinstance(req, dict) or "amount" not in req or not req.get("currency"):
            self.problem(400, "Missing field")
            return
        if req.get("delay_ms"):
            time.sleep(req["delay_ms"] / 1000)
        if req.get("fail"):
            self.problem(500, "Payment failed")
            return
        p = {"id": "pay_" + secrets.token_hex(12), "amount": req["amount"],
             "currency": req["currency"]}
        with lock:
            payments.append(p)
        self.send(201, p, extra={"Location": "/payments/" + p["id"]})


class Server(ThreadingHTTPServer):
    # The default backlog of 5 refuses connections under a storm of
    # hundreds of concurrent requests.
    request_queue_size = 1024


srv = Server(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
print("listening on %s:%d" % srv.server_address, flush=True)
try:
    srv.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
