#!/usr/bin/env node
// A small HTTP worker for sqs-poller's `http` target, in Node.js: `handler` is exactly what you
// would deploy to AWS Lambda with ReportBatchItemFailures on (an SQSEvent in, an
// SQSBatchResponse out); the rest is a tiny HTTP server around it. No dependencies.
//
//   node examples/worker.mjs --port 8080 [--fail-word FAIL]
//
// Messages whose body contains the fail word are reported as failed: sqs-poller retries them
// and, after max_receive_count, moves them to the dead-letter queue.
import http from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { port: { type: "string", default: "8080" }, "fail-word": { type: "string", default: "FAIL" } },
});
const failWord = values["fail-word"];
let processed = 0;

/** The Lambda handler: https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html */
export const handler = async (event, _context) => {
  const batchItemFailures = [];
  for (const record of event.Records) {
    try {
      if (failWord && record.body.includes(failWord)) throw new Error("this message asked to fail");
      processed += 1;
    } catch {
      batchItemFailures.push({ itemIdentifier: record.messageId });
    }
  }
  return { batchItemFailures };
};

const MAX_EVENT = 6 * 1024 * 1024; // Lambda's payload limit: sqs-poller never sends more

http
  .createServer((req, res) => {
    if (req.method !== "POST") {
      res.writeHead(405).end();
      return;
    }
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_EVENT) req.destroy();
      else chunks.push(chunk);
    });
    req.on("end", async () => {
      try {
        const event = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        const result = await handler(event, {});
        const out = JSON.stringify(result);
        console.error(
          `worker: batch of ${event.Records.length}, ${result.batchItemFailures.length} failed, ${processed} processed so far`,
        );
        res.writeHead(200, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(out) }).end(out);
      } catch (e) {
        // an event it cannot read fails the whole batch (any non-2xx does)
        res.writeHead(500, { "Content-Type": "text/plain" }).end(String(e));
      }
    });
  })
  .listen(Number(values.port), "127.0.0.1", () => console.error(`worker: listening on 127.0.0.1:${values.port}`));
