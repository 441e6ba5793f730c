#!/usr/bin/env python3
"""The demo: a burst of messages through sqs-poller to a small Lambda-style worker.

Run by scripts/demo.sh, which installs and starts the local SQS emulator and builds the
binary. Uses only the Python standard library; talks to the emulator with the SQS JSON protocol.

The service reaches the emulator through a small proxy that holds each call for a real SQS
round trip (ROUND_TRIP, ~25 ms in a region): on loopback one poller would drain any burst alone,
in a region a poller takes about 10 messages per round trip, and the fleet has to grow.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENDPOINT = os.environ["DEMO_ENDPOINT"]
TOTAL = int(os.environ.get("DEMO_MESSAGES", "5000"))
FAIL_EVERY = 250  # one message in 250 asks the worker to fail: retried, then dead-lettered
ROUND_TRIP = float(os.environ.get("DEMO_ROUND_TRIP_MS", "25")) / 1000
BINARY = os.environ.get("DEMO_BINARY", os.path.join(ROOT, "target/debug/sqs-poller"))
CSV = os.environ.get("DEMO_CSV")  # where to write the fleet over time (seconds, pollers, deleted)


def sqs(action, payload):
    req = urllib.request.Request(
        ENDPOINT + "/",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


class RoundTrip(BaseHTTPRequestHandler):
    """Forwards a call to the emulator after ROUND_TRIP, as the network to SQS would hold it."""
    protocol_version = "HTTP/1.1"
    upstream = urllib.parse.urlsplit(ENDPOINT)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(ROUND_TRIP)
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request("POST", self.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def round_trip_proxy():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RoundTrip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def main():
    suffix = str(int(time.time()))
    queue = sqs("CreateQueue", {"QueueName": f"demo-{suffix}"})["QueueUrl"]
    dlq = sqs("CreateQueue", {"QueueName": f"demo-{suffix}-dlq"})["QueueUrl"]
    worker_port, metrics_port, admin_port = free_port(), free_port(), free_port()
    env = dict(os.environ, DEMO_ENDPOINT=round_trip_proxy(), DEMO_QUEUE_URL=queue, DEMO_DLQ_URL=dlq, DEMO_WORKER_PORT=str(worker_port),
               DEMO_METRICS_PORT=str(metrics_port), DEMO_ADMIN_PORT=str(admin_port), AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
               RUST_LOG=os.environ.get("RUST_LOG", "error,sqs_poller::poller=info"))
    worker = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples/worker.py"), "--port", str(worker_port),
                               "--delay-ms", "20"], stderr=subprocess.DEVNULL)
    poller = subprocess.Popen([BINARY, "run", "--config",
                               os.path.join(ROOT, "config/demo.toml")], env=env)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        print(f"demo: sqs-poller is ready (metrics on http://127.0.0.1:{metrics_port}/metrics); every call to SQS "
              f"takes {ROUND_TRIP * 1000:.0f} ms, as in a region")
        pollers = int(metrics(metrics_port).get('sqs_poller_pollers{pipeline="demo"}', 0))
        print(f"demo: {pollers} poller(s) running (min 1, max 16); the queue is empty")
        print(f"demo: sending a burst of {TOTAL} messages (1 in {FAIL_EVERY} will fail and end in the dead-letter queue)")
        t0 = time.time()
        for start in range(0, TOTAL, 10):
            entries = []
            for i in range(start, min(start + 10, TOTAL)):
                body = {"order": i, "amount": i % 97}
                if i % FAIL_EVERY == 0:
                    body["note"] = "FAIL"
                entries.append({"Id": str(i - start), "MessageBody": json.dumps(body)})
            sqs("SendMessageBatch", {"QueueUrl": queue, "Entries": entries})
        print(f"demo: burst sent in {time.time() - t0:.1f} s")
        failing = len(range(0, TOTAL, FAIL_EVERY))
        label = '{pipeline="demo"}'
        print(f"{'t':>5} {'pollers':>7} {'received':>9} {'succeeded':>9} {'failed':>7} {'dead-lett.':>10} {'deleted':>8}")
        deadline, drained, peak, last_row, samples = time.time() + 240, None, 0, 0, [(0.0, pollers, 0)]
        while time.time() < deadline:
            m = metrics(metrics_port)
            get = lambda name: int(m.get(f"sqs_poller_{name}{label}", 0))
            peak = max(peak, get("pollers"))
            samples.append((time.time() - t0, get("pollers"), get("messages_deleted_total")))
            # a row a second while the burst drains, one in five while the fleet comes back to min
            if time.time() - last_row >= (1 if drained is None else 5):
                last_row = time.time()
                print(f"{time.time() - t0:5.1f} {get('pollers'):>7} {get('messages_received_total'):>9} "
                      f"{get('messages_succeeded_total'):>9} {get('messages_failed_total'):>7} "
                      f"{get('messages_dead_lettered_total'):>10} {get('messages_deleted_total'):>8}")
            if drained is None and get("messages_deleted_total") >= TOTAL and get("messages_dead_lettered_total") >= failing:
                drained = time.time() - t0
                print(f"demo: drained in {drained:.1f} s on up to {peak} pollers; idle now, the fleet comes back "
                      f"to min = 1")
            if drained is not None and get("pollers") <= 1:
                print(f"{time.time() - t0:5.1f} {get('pollers'):>7}   (back at min, {time.time() - t0 - drained:.0f} s "
                      f"after the queue drained)")
                break
            time.sleep(0.25)
        if CSV:
            with open(CSV, "w") as f:
                f.write("seconds,pollers,deleted\n")
                f.writelines(f"{t:.2f},{p},{d}\n" for t, p, d in samples)
        elapsed = drained or time.time() - t0
        poller.send_signal(signal.SIGTERM)
        code = poller.wait(timeout=30)
        m = metrics(metrics_port) or m
        dlq_count = int(sqs("GetQueueAttributes", {"QueueUrl": dlq, "AttributeNames": ["ApproximateNumberOfMessages"]})
                        ["Attributes"]["ApproximateNumberOfMessages"])
        left = sqs("GetQueueAttributes", {"QueueUrl": queue, "AttributeNames": ["All"]})["Attributes"]
        print()
        print(f"demo: {TOTAL} messages in {elapsed:.1f} s: {TOTAL - failing} processed and deleted, "
              f"{failing} failed {3} times each and moved to the dead-letter queue ({dlq_count} there now)")
        print(f"demo: source queue now holds {left['ApproximateNumberOfMessages']} visible, "
              f"{left['ApproximateNumberOfMessagesNotVisible']} in flight; sqs-poller exited with {code} after SIGTERM")
        print(f"demo: the fleet grew from 1 to {peak} pollers (max 16) and came back to "
              f"{int(m.get(f'sqs_poller_pollers{label}', 0))}")
        ok = code == 0 and dlq_count == failing and left["ApproximateNumberOfMessages"] == "0" and peak > 1
        print("demo: OK" if ok else "demo: something is off (see above)")
        return 0 if ok else 1
    finally:
        if poller.poll() is None:
            poller.kill()
        worker.kill()


if __name__ == "__main__":
    sys.exit(main())
