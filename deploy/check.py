#!/usr/bin/env python3
"""Checks what can be checked here of deploy/ (no Docker engine, no AWS account):

- every JSON and YAML file parses; Kubernetes documents have apiVersion and kind;
- cfn-lint passes on the CloudFormation template, hadolint on the two image recipes (the
  Dockerfile and deploy/image/Containerfile);
- the task role allows exactly the SQS actions sqs-poller calls (read from src/sqs.rs), on the
  queue only; the dead-letter-only action (SendMessage) is left out because the stack uses the
  queue's redrive policy;
- the sidecar's stopTimeout equals its grace period, in the template and the task definition,
  and both health checks are `sqs-poller healthcheck` (its /healthz, no curl); the Kubernetes ConfigMap's poller.toml passes
  `sqs-poller check`;
- every deploy file turns on JSON logs.

Run by tests/e2e/deploy.rs with the venv that scripts/install-services.sh makes (.local/venv).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/sqs-poller")
problems = []



# the sidecar's health check: `sqs-poller healthcheck` asks its own /healthz (the image has no curl)
HEALTHCHECK = ["CMD", "/usr/local/bin/sqs-poller", "healthcheck"]

def fail(msg):
    problems.append(msg)


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node)
    else:
        value = loader.construct_mapping(node)
    return {suffix: value}


CfnLoader.add_multi_constructor("!", _tag)

# SDK calls in src/sqs.rs → the IAM action that authorizes them
SDK_TO_IAM = {
    "receive_message": "sqs:ReceiveMessage",
    "delete_message_batch": "sqs:DeleteMessage",
    "change_message_visibility_batch": "sqs:ChangeMessageVisibility",
    "get_queue_attributes": "sqs:GetQueueAttributes",
    "send_message": "sqs:SendMessage",
}
DEAD_LETTER_ONLY = {"sqs:SendMessage"}


def code_actions():
    src = open(os.path.join(ROOT, "src/sqs.rs")).read()
    calls = set(re.findall(r"\.client\s*\.(\w+)\(\)", src))
    # the hot calls of src/aws/sqs_json.rs name their operation: self.call("ReceiveMessage", …)
    json_src = open(os.path.join(ROOT, "src/aws/sqs_json.rs")).read()
    for op in re.findall(r'self\s*\.call\(\s*"(\w+)"', json_src):
        calls.add(re.sub(r"(?<!^)([A-Z])", r"_\1", op).lower())
    unknown = calls - SDK_TO_IAM.keys()
    if unknown:
        fail(f"src/sqs.rs calls {sorted(unknown)}: add them to SDK_TO_IAM in deploy/check.py and to the task role")
    return {SDK_TO_IAM[c] for c in calls if c in SDK_TO_IAM}


def main():
    for folder, _, files in os.walk(os.path.join(ROOT, "deploy")):
        for f in files:
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, ROOT)
            try:
                if f.endswith(".json"):
                    json.load(open(path))
                elif f.endswith((".yml", ".yaml")):
                    docs = list(yaml.load_all(open(path), Loader=CfnLoader))
                    if "kubernetes" in rel:
                        for d in docs:
                            if not (d.get("apiVersion") and d.get("kind")):
                                fail(f"{rel}: a document without apiVersion/kind")
            except Exception as e:  # noqa: BLE001 - report any parse error
                fail(f"{rel}: does not parse: {e}")
    json.load(open(os.path.join(ROOT, "dashboards/sqs-poller.json")))

    template_path = os.path.join(ROOT, "deploy/ecs/cloudformation.yml")
    lint = subprocess.run([os.path.join(os.path.dirname(sys.executable), "cfn-lint"), template_path],
                          capture_output=True, text=True)
    if lint.returncode != 0:
        fail(f"cfn-lint: {lint.stdout}{lint.stderr}")
    recipes = [os.path.join(ROOT, "Dockerfile"), os.path.join(ROOT, "deploy/image/Containerfile")]
    lint = subprocess.run([os.path.join(os.path.dirname(sys.executable), "hadolint"), "--no-color", *recipes],
                          capture_output=True, text=True)
    if lint.returncode != 0:
        fail(f"hadolint: {lint.stdout}{lint.stderr}")

    template = yaml.load(open(template_path), Loader=CfnLoader)
    res = template["Resources"]
    statements = [s for p in res["TaskRole"]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
    granted = set()
    for s in statements:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        granted |= set(actions)
        if s["Resource"] != {"GetAtt": "Queue.Arn"}:
            fail(f"task role statement {s.get('Sid')} is not limited to the queue: {s['Resource']}")
        if any("*" in a for a in actions):
            fail(f"task role grants a wildcard action: {actions}")
    needed = code_actions() - DEAD_LETTER_ONLY
    if granted != needed:
        fail(f"task role actions {sorted(granted)} differ from what the code calls {sorted(needed)}")

    containers = {c["Name"]: c for c in res["TaskDefinition"]["Properties"]["ContainerDefinitions"]}
    poller = containers["sqs-poller"]
    env = {e["Name"]: e["Value"] for e in poller["Environment"]}
    if str(poller["StopTimeout"]) != env["GRACE_PERIOD_SECS"]:
        fail("template: sqs-poller StopTimeout differs from GRACE_PERIOD_SECS")
    if poller["HealthCheck"]["Command"] != HEALTHCHECK:
        fail(f"template: the sqs-poller health check is not {HEALTHCHECK} (it probes /healthz without curl)")
    if env.get("SQS_POLLER_LOG_FORMAT") != "json":
        fail("template: the sqs-poller container does not log JSON (SQS_POLLER_LOG_FORMAT=json)")
    if containers["app"]["StopTimeout"] <= poller["StopTimeout"]:
        fail("template: the app must outlive the sidecar's drain (StopTimeout)")

    td = json.load(open(os.path.join(ROOT, "deploy/ecs/task-definition.json")))
    tdc = {c["name"]: c for c in td["containerDefinitions"]}
    tenv = {e["name"]: e["value"] for e in tdc["sqs-poller"]["environment"]}
    if str(tdc["sqs-poller"]["stopTimeout"]) != tenv["GRACE_PERIOD_SECS"]:
        fail("task-definition.json: sqs-poller stopTimeout differs from GRACE_PERIOD_SECS")
    if tenv.get("SQS_POLLER_LOG_FORMAT") != "json":
        fail("task-definition.json: the sqs-poller container does not log JSON (SQS_POLLER_LOG_FORMAT=json)")
    for path in ["deploy/kubernetes/deployment.yaml", "deploy/systemd/sqs-poller.service"]:
        if "--log-format json" not in open(os.path.join(ROOT, path)).read().replace('", "', " "):
            fail(f"{path}: sqs-poller does not log JSON (--log-format json)")
    if tdc["sqs-poller"]["healthCheck"]["command"] != HEALTHCHECK:
        fail(f"task-definition.json: the health check is not {HEALTHCHECK} (it probes /healthz without curl)")

    # the configurations shipped for containers and pods are valid
    env = dict(os.environ, QUEUE_URL="https://sqs.us-east-1.amazonaws.com/123456789012/orders")
    r = subprocess.run([BINARY, "check", "--config", os.path.join(ROOT, "deploy/container.toml")],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        fail(f"deploy/container.toml: {r.stderr}")
    k8s = list(yaml.safe_load_all(open(os.path.join(ROOT, "deploy/kubernetes/deployment.yaml"))))
    config = next(d for d in k8s if d["kind"] == "ConfigMap")["data"]["poller.toml"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(config)
        f.flush()
        r = subprocess.run([BINARY, "check", "--config", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"deploy/kubernetes/deployment.yaml ConfigMap: {r.stderr}")

    for p in problems:
        print("deploy check:", p)
    print(f"deploy check: {'FAILED' if problems else 'ok'} ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
