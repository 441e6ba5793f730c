# A worker for scripts/profile/*.sh: answers every batch after DELAY seconds (argv[2]), keeping the connection.
# With IDS_FILE set, it appends the messageId of every record it was given to that file, one per line.
import asyncio, json, os, sys
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 60
IDS_FILE = os.environ.get("IDS_FILE")
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            request = await reader.readexactly(length)
            if IDS_FILE:
                with open(IDS_FILE, "a") as f:
                    f.writelines(r["messageId"] + "\n" for r in json.loads(request)["Records"])
            await asyncio.sleep(DELAY)
            body = b'{"batchItemFailures": []}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
