"""An unmodified AWS Lambda SQS handler (ReportBatchItemFailures on), for the `runtime-api` target.

Run by sqs-poller through the official runtime interface client, exactly as on Lambda:

    [pipelines.target]
    type = "runtime-api"
    program = ".local/venv/bin/python"        # a Python with `pip install awslambdaric`
    args = ["-m", "awslambdaric", "examples.lambda_handler.handler"]
    workers = 2

Bodies containing FAIL are reported as failed; RAISE raises, CRASH exits the process and SLEEP
sleeps for a minute on a message's first delivery (to show that errors fail the batch, crashed
workers restart, and a batch over its timeout has its worker killed); NAP takes half a second
and SLOW three seconds, on every delivery.
"""
import os
import time


def handler(event, context):
    failures = []
    for record in event["Records"]:
        body = record["body"]
        first = record["attributes"]["ApproximateReceiveCount"] == "1"
        if "CRASH" in body and first:
            os._exit(3)
        if "SLEEP" in body and first:
            time.sleep(60)
        if "NAP" in body:
            time.sleep(0.5)
        if "SLOW" in body:
            time.sleep(3)
        if "RAISE" in body and first:
            raise ValueError("this message asked to raise")
        if "FAIL" in body:
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
