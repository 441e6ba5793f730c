// Starts the fauxqs SQS emulator on 127.0.0.1:$FAUXQS_PORT without request logging (its CLI
// logs every request, which costs about a third of its throughput).
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const services = process.env.SERVICES_DIR;
const { startFauxqs } = await import(pathToFileURL(join(services, "node_modules/fauxqs/dist/app.js")).href);
const port = Number(process.env.FAUXQS_PORT ?? "4566");
const server = await startFauxqs({ port, host: "127.0.0.1", logger: false, defaultRegion: "us-east-1" });
console.log(`fauxqs listening on http://127.0.0.1:${server.port}`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    await server.stop();
    process.exit(0);
  });
}
