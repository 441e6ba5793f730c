#!/usr/bin/env python3
"""The demo: a burst of messages through sqs-poller to a small Lambda-style worker.

Run by scripts/demo.sh, which installs and starts the local SQS emulator and builds the
release binary. Uses only the Python standard library; talks to the emulator with the SQS
JSON protocol.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENDPOINT = os.environ["DEMO_ENDPOINT"]
TOTAL = int(os.environ.get("DEMO_MESSAGES", "5000"))
FAIL_EVERY = 250  # one message in 250 asks the worker to fail: retried, then dead-lettered


def sqs(action, payload):
    req = urllib.request.Request(
        ENDPOINT + "/",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


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
    env = dict(os.environ, DEMO_QUEUE_URL=queue, DEMO_DLQ_URL=dlq, DEMO_WORKER_PORT=str(worker_port),
               DEMO_METRICS_PORT=str(metrics_port), DEMO_ADMIN_PORT=str(admin_port), AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
               RUST_LOG=os.environ.get("RUST_LOG", "error,sqs_poller::poller=info"))
    worker = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples/worker.py"), "--port", str(worker_port),
                               "--delay-ms", "20"], stderr=subprocess.DEVNULL)
    poller = subprocess.Popen([os.path.join(ROOT, "target/release/sqs-poller"), "run", "--config",
                               os.path.join(ROOT, "config/demo.toml")], env=env)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        print(f"demo: sqs-poller is ready (metrics on http://127.0.0.1:{metrics_port}/metrics)")
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
        deadline = time.time() + 120
        while time.time() < deadline:
            m = metrics(metrics_port)
            get = lambda name: int(m.get(f"sqs_poller_{name}{label}", 0))
            print(f"{time.time() - t0:5.1f} {get('pollers'):>7} {get('messages_received_total'):>9} "
                  f"{get('messages_succeeded_total'):>9} {get('messages_failed_total'):>7} "
                  f"{get('messages_dead_lettered_total'):>10} {get('messages_deleted_total'):>8}")
            if get("messages_deleted_total") >= TOTAL and get("messages_dead_lettered_total") >= failing:
                break
            time.sleep(1)
        elapsed = time.time() - t0
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
        ok = code == 0 and dlq_count == failing and left["ApproximateNumberOfMessages"] == "0"
        print("demo: OK" if ok else "demo: something is off (see above)")
        return 0 if ok else 1
    finally:
        if poller.poll() is None:
            poller.kill()
        worker.kill()


if __name__ == "__main__":
    sys.exit(main())
