// The peer benchmark: drain a queue with sqs-consumer (npm), the most used SQS consumer library,
// with CONSUMERS consumers of batchSize 10 and a no-op batch handler. Prints one JSON line.
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.env.SERVICES_DIR, "package.json"));
const { Consumer } = require("sqs-consumer");
const { SQSClient, GetQueueAttributesCommand } = require("@aws-sdk/client-sqs");

const endpoint = process.env.ENDPOINT;
const queueUrl = process.env.QUEUE_URL;
const total = Number(process.env.TOTAL);
const consumers = Number(process.env.CONSUMERS);
const sqs = new SQSClient({ endpoint, region: "us-east-1", credentials: { accessKeyId: "x", secretAccessKey: "x" } });
// SQS requests of the drain itself (the final emptiness checks below are the benchmark's, not counted)
let requests = 0;
sqs.middlewareStack.add(
  (next, context) => async (args) => {
    if (context.commandName !== "GetQueueAttributesCommand") requests++;
    return next(args);
  },
  { step: "initialize" },
);

const cpu0 = process.cpuUsage();
const t0 = performance.now();
let handled = 0;
const all = [];
await new Promise((resolve) => {
  for (let i = 0; i < consumers; i++) {
    const c = Consumer.create({
      queueUrl,
      sqs,
      batchSize: 10,
      waitTimeSeconds: 1,
      pollingWaitTimeMs: 0,
      alwaysAcknowledge: true,
      handleMessageBatch: async (messages) => {
        handled += messages.length;
        if (handled >= total) resolve();
        return messages;
      },
    });
    c.on("error", (e) => console.error(e.message));
    c.start();
    all.push(c);
  }
});
// handled is counted before the delete; wait until the queue is really empty
for (;;) {
  const a = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ["All"] }));
  if (a.Attributes.ApproximateNumberOfMessages === "0" && a.Attributes.ApproximateNumberOfMessagesNotVisible === "0") break;
  await new Promise((r) => setTimeout(r, 20));
}
const elapsed = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
all.forEach((c) => c.stop());
console.log(JSON.stringify({ elapsed_s: elapsed, cpu_s: (cpu.user + cpu.system) / 1e6, max_rss_kb: process.resourceUsage().maxRSS, handled, requests }));
process.exit(0);
