#!/usr/bin/env python3
"""A small HTTP worker for sqs-poller's `http` target: an unmodified Lambda-style SQS handler.

`handler(event, context)` is exactly what you would deploy to AWS Lambda with
ReportBatchItemFailures on; this file only adds a tiny HTTP server around it.

    python3 examples/worker.py --port 8080 [--fail-word FAIL] [--delay-ms 0]

Messages whose body contains the --fail-word are reported as failed.
"""
import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAIL_WORD = "FAIL"
DELAY_S = 0.0
processed = 0


def handler(event, context):
    """Process a batch of SQS records; report the ones that failed."""
    global processed
    failures = []
    for record in event["Records"]:
        try:
            if FAIL_WORD and FAIL_WORD in record["body"]:
                raise ValueError("this message asked to fail")
            processed += 1
        except Exception:
            failures.append({"itemIdentifier": record["messageId"]})
    if DELAY_S:
        time.sleep(DELAY_S)
    return {"batchItemFailures": failures}


class Server(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        result = handler(json.loads(body), None)
        n = len(json.loads(body)["Records"])
        print(f"worker: batch of {n}, {len(result['batchItemFailures'])} failed, {processed} processed so far",
              file=sys.stderr, flush=True)
        out = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--fail-word", default="FAIL")
    ap.add_argument("--delay-ms", type=int, default=0)
    a = ap.parse_args()
    FAIL_WORD = a.fail_word
    DELAY_S = a.delay_ms / 1000
    ThreadingHTTPServer(("127.0.0.1", a.port), Server).serve_forever()
