"""A Lambda handler for tests/e2e/trace.rs: appends the trace id the runtime interface client set
(`_X_AMZN_TRACE_ID`, from the Runtime API's Lambda-Runtime-Trace-Id) to the file in TRACE_OUT."""
import os


def handler(event, context):
    with open(os.environ["TRACE_OUT"], "a") as out:
        out.write(os.environ.get("_X_AMZN_TRACE_ID", "") + "\n")
    return {"batchItemFailures": []}
