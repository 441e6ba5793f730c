# Fills a queue for scripts/profile/*.sh: ENDPOINT NAME MESSAGES [BODY_BYTES]; prints its URL.
# MAX_MESSAGE_SIZE sets the queue's MaximumMessageSize (the byte budget reserves ten of them per receive).
import os, sys, boto3, concurrent.futures
endpoint, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = int(sys.argv[4]) if len(sys.argv) > 4 else 200
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "120", "MaximumMessageSize": os.environ.get("MAX_MESSAGE_SIZE", "1048576")})["QueueUrl"]
body = "x" * size
# SendMessageBatch carries at most 1 MiB in all: large bodies go fewer to a call
per_call = max(1, min(10, (1 << 20) // (size + 64)))
def batch(i):
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(k), "MessageBody": f"{i}-{k}-{body}"} for k in range(per_call)])
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(batch, range(n // per_call)))
print(url)
