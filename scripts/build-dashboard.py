#!/usr/bin/env python3
"""Writes dashboards/sqs-poller.json, the Grafana dashboard, from the panel list below.

Edit here, run `python3 scripts/build-dashboard.py`, commit both. tests/e2e/observability.rs
evaluates every query of the JSON through a real Prometheus.
"""
import json
import os

SEL = 'pipeline=~"$pipeline"'
R = "$__rate_interval"

ROWS = [
    ("Throughput", [
        ("Messages per second", "ops", [
            (f'sum by (pipeline) (rate(sqs_poller_messages_received_total{{{SEL}}}[{R}]))', "received {{pipeline}}"),
            (f'sum by (pipeline) (rate(sqs_poller_messages_succeeded_total{{{SEL}}}[{R}]))', "succeeded {{pipeline}}"),
            (f'sum by (pipeline) (rate(sqs_poller_messages_failed_total{{{SEL}}}[{R}]))', "failed {{pipeline}}"),
            (f'sum by (pipeline) (rate(sqs_poller_messages_filtered_total{{{SEL}}}[{R}]))', "filtered {{pipeline}}"),
            (f'sum by (pipeline) (rate(sqs_poller_messages_dead_lettered_total{{{SEL}}}[{R}]))', "dead-lettered {{pipeline}}"),
        ], "Messages received from SQS and what became of them, per second."),
        ("Batches by outcome", "ops", [
            (f'sum by (outcome) (rate(sqs_poller_batches_total{{{SEL}}}[{R}]))', "{{outcome}}"),
        ], "success: all processed; partial: some in batchItemFailures; failure: the whole batch failed; throttled: the target answered 429/503."),
        ("Failure ratio", "percentunit", [
            (f'sum by (pipeline) (rate(sqs_poller_messages_failed_total{{{SEL}}}[{R}])) / clamp_min(sum by (pipeline) (rate(sqs_poller_messages_dispatched_total{{{SEL}}}[{R}])), 1e-9)', "{{pipeline}}"),
        ], "Failed / dispatched messages. Alert SqsPollerFailureRatioHigh fires above 10%."),
    ]),
    ("Queue", [
        ("Source queue depth", "short", [
            (f'sum by (pipeline, state) (sqs_poller_queue_messages{{{SEL}, queue="source"}})', "{{pipeline}} {{state}}"),
        ], "ApproximateNumberOfMessages (visible), …NotVisible (in flight), …Delayed, sampled every depth_interval_secs."),
        ("Dead-letter queue depth", "short", [
            (f'sum by (pipeline, state) (sqs_poller_queue_messages{{{SEL}, queue="dead_letter"}})', "{{pipeline}} {{state}}"),
        ], "Messages waiting in the dead-letter queue: each needs a look, then a redrive."),
        ("Oldest message age", "s", [
            (f'max by (pipeline) (sqs_poller_oldest_message_age_seconds{{{SEL}}})', "{{pipeline}}"),
        ], "Age of the oldest message received since the previous depth sample."),
    ]),
    ("Latency", [
        ("Message age at receive (time in queue)", "s", [
            (f'histogram_quantile(0.5, sum by (le) (rate(sqs_poller_message_age_seconds_bucket{{{SEL}}}[{R}])))', "p50"),
            (f'histogram_quantile(0.9, sum by (le) (rate(sqs_poller_message_age_seconds_bucket{{{SEL}}}[{R}])))', "p90"),
            (f'histogram_quantile(0.99, sum by (le) (rate(sqs_poller_message_age_seconds_bucket{{{SEL}}}[{R}])))', "p99"),
        ], "Receive time minus SentTimestamp."),
        ("End to end (sent → deleted)", "s", [
            (f'histogram_quantile(0.5, sum by (le) (rate(sqs_poller_end_to_end_seconds_bucket{{{SEL}}}[{R}])))', "p50"),
            (f'histogram_quantile(0.99, sum by (le) (rate(sqs_poller_end_to_end_seconds_bucket{{{SEL}}}[{R}])))', "p99"),
        ], "Deletion time minus SentTimestamp, for messages the target processed."),
        ("Dispatch duration (target call per batch)", "s", [
            (f'histogram_quantile(0.5, sum by (le) (rate(sqs_poller_dispatch_duration_seconds_bucket{{{SEL}}}[{R}])))', "p50"),
            (f'histogram_quantile(0.99, sum by (le) (rate(sqs_poller_dispatch_duration_seconds_bucket{{{SEL}}}[{R}])))', "p99"),
        ], "How long the worker takes per batch."),
        ("Average batch size", "short", [
            (f'sum by (pipeline) (rate(sqs_poller_batch_size_sum{{{SEL}}}[{R}])) / clamp_min(sum by (pipeline) (rate(sqs_poller_batch_size_count{{{SEL}}}[{R}])), 1e-9)', "{{pipeline}}"),
        ], "Messages per dispatched batch."),
    ]),
    ("Scaling", [
        ("Pollers", "short", [
            (f'sum by (pipeline) (sqs_poller_pollers{{{SEL}}})', "alive {{pipeline}}"),
            (f'sum by (pipeline) (sqs_poller_pollers_desired{{{SEL}}})', "desired {{pipeline}}"),
            (f'sum by (pipeline) (sqs_poller_pollers_min{{{SEL}}})', "min {{pipeline}}"),
            (f'sum by (pipeline) (sqs_poller_pollers_max{{{SEL}}})', "max {{pipeline}}"),
        ], "Pollers alive (polling or paused) against the autoscaler's target and the configured bounds."),
        ("In flight", "short", [
            (f'sum by (pipeline) (sqs_poller_in_flight_batches{{{SEL}}})', "batches {{pipeline}}"),
            (f'sum by (pipeline) (sqs_poller_max_concurrency{{{SEL}}})', "max_concurrency {{pipeline}}"),
            (f'sum by (pipeline) (sqs_poller_in_flight_messages{{{SEL}}})', "messages {{pipeline}}"),
            (f'sum by (pipeline) (sqs_poller_max_outstanding_messages{{{SEL}}})', "max_outstanding {{pipeline}}"),
        ], "Batches being dispatched against max_concurrency, and leased messages against lease.max_outstanding: pollers receive only when there is room."),
        ("Memory", "bytes", [
            (f'max by (instance) (process_resident_memory_bytes and on (instance, job) max by (instance, job) (sqs_poller_in_flight_bytes{{{SEL}}}))', "resident {{instance}}"),
            (f'sum by (pipeline) (sqs_poller_in_flight_bytes{{{SEL}}})', "budget taken {{pipeline}}"),
            (f'sum by (pipeline) (sqs_poller_max_outstanding_bytes{{{SEL}}})', "max_outstanding_bytes {{pipeline}}"),
        ], "The process's resident memory against each pipeline's byte budget: leased messages and receives in flight, bounded by lease.max_outstanding_bytes. Resident memory far above the budgets taken = copies and buffers the budget does not count."),
    ]),
    ("Leases", [
        ("Visibility extensions", "ops", [
            (f'sum by (pipeline, outcome) (rate(sqs_poller_lease_extensions_total{{{SEL}}}[{R}]))', "{{outcome}} {{pipeline}}"),
        ], "ChangeMessageVisibilityBatch entries sent by the lease keeper to keep received messages invisible; errors mean messages may come back while they wait or run."),
        ("Leases released at max lease, duplicates, throttle releases", "ops", [
            (f'sum by (pipeline) (rate(sqs_poller_leases_expired_total{{{SEL}}}[{R}]))', "max lease reached {{pipeline}}"),
            (f'sum by (pipeline) (rate(sqs_poller_duplicate_receives_total{{{SEL}}}[{R}]))', "received again while leased {{pipeline}}"),
            (f'sum by (pipeline) (rate(sqs_poller_throttle_released_messages_total{{{SEL}}}[{R}]))', "throttled too long {{pipeline}}"),
        ], "Messages whose lease reached lease.max_lease_secs; copies SQS delivered again while the first was leased (merged, not dispatched); messages of batches the target throttled longer than max_throttled_secs."),
    ]),
    ("Errors", [
        ("SQS errors by operation and kind", "ops", [
            (f'sum by (operation, kind) (rate(sqs_poller_sqs_errors_total{{{SEL}}}[{R}]))', "{{operation}} {{kind}}"),
        ], "Failed SQS calls by kind (throttled, server_error, timeout, connection, bad_response: retried with backoff; rejected: not retried). The log carries the error."),
        ("Target throttles and oversized answers", "ops", [
            (f'sum by (pipeline) (rate(sqs_poller_batches_total{{{SEL}, outcome="throttled"}}[{R}]))', "throttled {{pipeline}}"),
            (f'sum by (pipeline) (rate(sqs_poller_worker_output_overflows_total{{{SEL}}}[{R}]))', "answer over 6 MiB {{pipeline}}"),
        ], "Batches the target answered with 429/503; batches failed because the worker's answer (a command's stdout, a response body) passed 6 MiB."),
        ("Released messages", "ops", [
            (f'sum by (pipeline) (rate(sqs_poller_messages_released_total{{{SEL}}}[{R}]))', "{{pipeline}}"),
        ], "Messages given back unprocessed (visibility 0), e.g. at shutdown."),
    ]),
    ("SQS requests and cost", [
        ("SQS requests per second", "reqps", [
            (f'sum by (operation) (rate(sqs_poller_sqs_requests_total{{{SEL}}}[{R}]))', "{{operation}}"),
        ], "Every SQS API call, by operation."),
        ("SQS cost per day (at $0.40 per million requests)", "currencyUSD", [
            (f'sum(rate(sqs_poller_sqs_requests_total{{{SEL}}}[{R}])) * 86400 * 0.40 / 1e6', "USD/day"),
        ], "Standard-queue request pricing after the free tier; FIFO requests cost $0.50 per million."),
        ("SQS requests per message", "short", [
            (f'sum(rate(sqs_poller_sqs_requests_total{{{SEL}}}[{R}])) / clamp_min(sum(rate(sqs_poller_messages_received_total{{{SEL}}}[{R}])), 1e-9)', "requests/message"),
        ], "0.2 is the floor: one receive and one delete per ten messages."),
    ]),
]


def build():
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        width = 24 // min(len(row), 3)
        for i, (ptitle, unit, targets, desc) in enumerate(row):
            panels.append({
                "type": "timeseries", "title": ptitle, "id": pid, "description": desc,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": width, "x": (i % 3) * width, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}},
                "targets": [{"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for k, (expr, legend) in enumerate(targets)],
            })
            pid += 1
        y += 8 * ((len(row) + 2) // 3)
    return {
        "title": "sqs-poller",
        "uid": "sqs-poller",
        "description": "Pipelines of sqs-poller: throughput, queue depth, latency, scaling, errors and SQS cost.",
        "tags": ["sqs", "sqs-poller"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "pipeline", "label": "Pipeline", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(sqs_poller_messages_received_total, pipeline)", "refId": "pipelines"},
             "definition": "label_values(sqs_poller_messages_received_total, pipeline)",
             "refresh": 2, "multi": True, "includeAll": True, "current": {}, "sort": 1, "hide": 0},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "dashboards/sqs-poller.json"), "w") as f:
        json.dump(build(), f, indent=2)
        f.write("\n")
