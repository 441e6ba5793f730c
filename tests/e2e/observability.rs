//! Metrics, alerts and the dashboard, checked by the real tools: promtool on the alert rules and
//! on our `/metrics`, and a real Prometheus scraping a working sqs-poller that answers every
//! query of `dashboards/sqs-poller.json`.
//!
//! Prometheus comes from Debian's package, unpacked by `scripts/install-services.sh` into
//! `.local/prometheus` (or `PROMETHEUS_BIN_DIR`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn prometheus_bin(name: &str) -> PathBuf {
    let dir = std::env::var("PROMETHEUS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".local/prometheus/usr/bin"));
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/install-services.sh (it unpacks Debian's prometheus package into .local/prometheus), \
         or set PROMETHEUS_BIN_DIR",
        bin.display()
    );
    bin
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("dashboards/sqs-poller.json")).unwrap())
        .expect("dashboard is JSON")
}

/// Every (panel title, expr) of the dashboard.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// Runs promtool; whether it succeeded, and what it printed (stdout then stderr).
fn promtool(args: &[&str], file: &str) -> (bool, String) {
    let out = Command::new(prometheus_bin("promtool")).args(args).arg(root().join(file)).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The alerts `deploy/prometheus/alerts.yml` defines.
fn alert_count() -> usize {
    std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap().matches("- alert: ").count()
}

#[test]
fn alert_rules_pass_promtool() {
    let (ok, text) = promtool(&["check", "rules"], "deploy/prometheus/alerts.yml");
    assert!(ok, "{text}");
    assert!(text.contains(&format!("SUCCESS: {} rules found", alert_count())), "{text}");
}

#[test]
fn alert_rules_fire_as_intended() {
    let (ok, text) = promtool(&["test", "rules"], "deploy/prometheus/alerts_test.yml");
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_dashboard_has_the_expected_structure() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "a current schema");
    assert_eq!(d["uid"], "sqs-poller");
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["job", "instance"] {
        let v = vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("a {name} variable"));
        assert_eq!((&v["type"], &v["multi"], &v["includeAll"]), (&"query".into(), &true.into(), &true.into()), "{v}");
    }
    let pipeline = vars.iter().find(|v| v["name"] == "pipeline").expect("a pipeline variable");
    assert_eq!(pipeline["type"], "query");
    assert!(pipeline["definition"].as_str().unwrap().contains("label_values("));

    // the latency panels open their time range's batches in Tempo (the [telemetry] spans)
    let traces = vars.iter().find(|v| v["name"] == "traces").expect("a traces variable");
    assert_eq!((&traces["type"], &traces["query"]), (&serde_json::json!("datasource"), &serde_json::json!("tempo")));
    for id in [9, 10, 12] {
        let panel = d["panels"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap();
        let url = panel["links"][0]["url"].as_str().unwrap_or_default();
        assert!(url.starts_with("/explore?") && url.contains("${traces}") && url.contains("${__from}"), "{url}");
        assert!(url.contains("sqs_poller.pipeline"), "the link keeps the pipeline filter: {url}");
    }

    let panels = d["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels.iter().filter(|p| p["type"] == "row").map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(
        rows,
        vec![
            "Throughput",
            "Queue",
            "Latency",
            "Scaling",
            "Worker protection",
            "Fair share",
            "Leases",
            "Errors",
            "SQS requests and cost",
            "Fleet"
        ]
    );
    let mut ids = HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel ids are unique");
        let g = &p["gridPos"];
        assert!(g["w"].as_u64().unwrap() <= 24 && g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["type"], "timeseries");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            for variable in ["job", "instance", "pipeline"] {
                assert!(
                    expr.contains(&format!("{variable}=~\"${variable}\"")),
                    "{}: {expr} ignores the {variable} variable",
                    p["title"]
                );
            }
            // every task samples the same queue: their samples are one figure, not a sum
            if expr.contains("sqs_poller_queue_messages") || expr.contains("sqs_poller_oldest_message_age") {
                assert!(
                    expr.starts_with("max by (pipeline"),
                    "{}: {expr} adds the tasks' samples of one queue",
                    p["title"]
                );
            }
            assert!(t["refId"].is_string());
        }
    }
    // every metric of the contract appears in some panel
    let all: String = dashboard_queries(&d).into_iter().map(|(_, e)| e).collect();
    for m in [
        "messages_received_total",
        "messages_filtered_total",
        "messages_succeeded_total",
        "messages_failed_total",
        "messages_dead_lettered_total",
        "messages_dispatched_total",
        "batches_total",
        "batch_size",
        "dispatch_duration_seconds",
        "message_age_seconds",
        "end_to_end_seconds",
        "pollers",
        "pollers_desired",
        "in_flight_messages",
        "queue_messages",
        "sqs_requests_total",
        "sqs_errors_total",
        "worker_output_overflows_total",
        "concurrency_limit",
        "breaker_state",
        "breaker_transitions_total",
        "groups_in_flight",
        "group_capped_messages",
        "group_cap_returned_total",
        "group_cap_wait_seconds",
        "slot_wait_seconds",
        "messages_hopped_total",
        "fleet_shared",
        "fleet_slots_held",
        "fleet_slot_wait_seconds",
        "fleet_rate_limited_batches_total",
        "fleet_redis_errors_total",
        "idempotent_skips_total",
        "idempotent_waits_total",
    ] {
        assert!(all.contains(&format!("sqs_poller_{m}")), "no panel shows sqs_poller_{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_working_poller_and_answers_every_dashboard_query() {
    let sqs = sqs().await;
    let queue = sqs.queue("observed", &[]).await;
    let dlq = sqs.queue("observed-dlq", &[]).await;
    // one message in five fails for good and ends in the dead-letter queue; the others take 20 ms
    let worker = worker(|event| {
        let failed: Vec<&str> = event["Records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["body"].as_str().unwrap().ends_with('0') || r["body"].as_str().unwrap().ends_with('5'))
            .map(|r| r["messageId"].as_str().unwrap())
            .collect();
        let mut reply = Reply::failures(&failed);
        reply.delay = Duration::from_millis(20);
        reply
    })
    .await;
    let extra = format!(
        "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = 10\nwindow_ms = 50\n\
         [pipelines.retry]\ninitial_backoff_secs = 0\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 2\n"
    );
    // with the fleet's budgets and idempotency window, so that the Fleet row has data
    let redis = redis_url().await;
    let extra = format!("{extra}[pipelines.idempotency]\n");
    let pipeline = http_pipeline("observed", &queue, &worker.url, &extra)
        .replace("[pipelines.target]", "depth_interval_secs = 1\n[pipelines.target]")
        .replace("type = \"http\"\n", "type = \"http\"\nfleet_max_concurrency = 50\nfleet_rate_per_sec = 100000\n");
    let pipeline = format!("[fleet]\nredis_url = \"{redis}\"\n{pipeline}");
    let poller = start_poller(&sqs, 10, &pipeline).await;

    // promtool accepts our exposition format
    let metrics = poller.metrics_text().await;
    let mut check = Command::new(prometheus_bin("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // the process-wide series: the build, the configuration file (reloads are not a pipeline's),
    // the admin API's refusals
    let process_wide = [
        "sqs_poller_build_info",
        "sqs_poller_config_reloads_total",
        "sqs_poller_config_info",
        "sqs_poller_admin_refused_total",
        // the instance's link to the fleet's Redis
        "sqs_poller_fleet_shared",
        "sqs_poller_fleet_redis_errors_total",
    ];
    for line in
        metrics.lines().filter(|l| l.starts_with("sqs_poller_") && !process_wide.iter().any(|p| l.starts_with(p)))
    {
        assert!(line.contains("pipeline=\"observed\""), "a series without the pipeline label: {line}");
    }

    // a real Prometheus scraping every second
    let mut prometheus = Prometheus::start(&[&poller.listen]);
    let (api, dir) = (prometheus.api.clone(), prometheus.dir.path().to_path_buf());

    // traffic while Prometheus watches
    let sender = {
        let client = sqs.client.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                let entries = (0..10)
                    .map(|i| {
                        aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(format!("m{}", round * 10 + i))
                            .build()
                            .unwrap()
                    })
                    .collect();
                client.send_message_batch().queue_url(&queue).set_entries(Some(entries)).send().await.unwrap();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let d = dashboard();
    let queries = dashboard_queries(&d);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut pending: Vec<(String, String)> = queries.clone();
    let mut last_answer = String::new();
    while !pending.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut still = Vec::new();
        for (title, expr) in pending {
            let q = as_grafana_sends(&expr, "observed");
            match http_get(&format!("{api}/api/v1/query?query={}", percent_encode(&q))).await {
                Some((200, body)) => {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["status"], "success", "{title}: {q}: {body}");
                    let has_number =
                        v["data"]["result"].as_array().unwrap().iter().any(|r| {
                            r["value"][1].as_str().is_some_and(|s| s.parse::<f64>().is_ok_and(f64::is_finite))
                        });
                    if !has_number {
                        last_answer = format!("{title}: {q} -> {body}");
                        still.push((title, expr));
                    }
                }
                Some((status, body)) if status == 400 || status == 422 => {
                    panic!("{title}: {q} is not valid PromQL: {body}")
                }
                other => {
                    last_answer = format!("{title}: {q} -> {other:?}");
                    still.push((title, expr));
                }
            }
        }
        pending = still;
    }
    sender.abort();
    assert!(
        pending.is_empty(),
        "{} of {} dashboard queries returned no data ({:?}), e.g. {last_answer}\nprometheus log:\n{}",
        pending.len(),
        queries.len(),
        pending.iter().map(|(title, _)| title.as_str()).collect::<Vec<_>>(),
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );
    println!("all {} dashboard queries returned data", queries.len());

    // the rules loaded and evaluate
    let (_, rules) = http_get(&format!("{api}/api/v1/rules")).await.unwrap();
    let v: Value = serde_json::from_str(&rules).unwrap();
    let loaded: usize =
        v["data"]["groups"].as_array().unwrap().iter().map(|g| g["rules"].as_array().unwrap().len()).sum();
    assert_eq!(loaded, alert_count(), "{rules}");
    for g in v["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "rule {} does not evaluate: {}", r["name"], r["lastError"]);
        }
    }
    let _ = prometheus.child.kill().await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// A real Prometheus scraping sqs-poller services every second, as one job, with the alert rules.
struct Prometheus {
    child: tokio::process::Child,
    api: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(listens: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = listens.iter().map(|l| format!("'{}'", l.trim_start_matches("http://"))).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: orders-service\n    static_configs:\n      - targets: [{}]\n",
                root().join("deploy/prometheus/alerts.yml").display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let child = tokio::process::Command::new(prometheus_bin("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, api: format!("http://127.0.0.1:{port}"), dir }
    }

    /// The instant query's result series: their labels and values (none while there is no data).
    async fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let Some((200, body)) = http_get(&format!("{}/api/v1/query?query={}", self.api, percent_encode(q))).await
        else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
        results.into_iter().map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap())).collect()
    }
}

/// Two tasks of one service on one queue, both scraped under one job: the dashboard's depth panel
/// shows the queue's depth (the tasks' samples are one figure), the pollers panel both tasks'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_on_one_queue_show_the_queue_once_on_the_dashboard() {
    let sqs = sqs().await;
    let queue = sqs.queue("fleet-depth", &[]).await;
    // the worker holds every batch: all 40 messages in flight, a depth that stays put
    let worker = worker(|_| {
        let mut reply = Reply::ok("");
        reply.delay = Duration::from_secs(120);
        reply
    })
    .await;
    let extra = "[pipelines.pollers]\nmin = 1\nmax = 1\nwait_time_secs = 1\n[pipelines.batch]\nsize = 10\n";
    let pipeline = http_pipeline("orders", &queue, &worker.url, extra)
        .replace("[pipelines.target]", "depth_interval_secs = 1\n[pipelines.target]\nmax_concurrency = 4");
    let tasks = [start_poller(&sqs, 2, &pipeline).await, start_poller(&sqs, 2, &pipeline).await];
    let bodies: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    eventually("the two tasks hold all 40 messages", Duration::from_secs(30), || async {
        sqs.counts(&queue).await == (0, 40)
    })
    .await;

    let prometheus = Prometheus::start(&[&tasks[0].listen, &tasks[1].listen]);
    let d = dashboard();
    let depth = dashboard_queries(&d).into_iter().find(|(title, _)| title == "Source queue depth").unwrap().1;
    let depth = as_grafana_sends(&depth, "orders");
    let pollers = dashboard_queries(&d).into_iter().find(|(title, _)| title == "Pollers").unwrap().1;
    let pollers = as_grafana_sends(&pollers, "orders");
    let in_flight = |series: &[(Value, f64)]| {
        series.iter().filter(|(m, _)| m["state"] == "in_flight").map(|(_, v)| *v).collect::<Vec<_>>()
    };
    eventually("Prometheus has both tasks' depth samples", Duration::from_secs(30), || async {
        let per_task = prometheus.query("sqs_poller_queue_messages{queue=\"source\",state=\"in_flight\"}").await;
        per_task.len() == 2 && per_task.iter().all(|(_, v)| *v == 40.0)
    })
    .await;
    assert_eq!(in_flight(&prometheus.query(&depth).await), vec![40.0], "{depth}");
    // what the panel showed before: the sum over tasks, twice the queue
    let summed = depth.replacen("max by", "sum by", 1);
    assert_eq!(in_flight(&prometheus.query(&summed).await), vec![80.0], "{summed}");
    // the pollers add up over tasks (one each)
    let fleet = prometheus.query(&pollers).await;
    assert_eq!(fleet.iter().map(|(_, v)| *v).next(), Some(2.0), "{pollers}: {fleet:?}");
    drop(tasks);
}

/// A dashboard query as Grafana sends it: the variables at "All" (`.*`) but the pipeline.
fn as_grafana_sends(expr: &str, pipeline: &str) -> String {
    expr.replace("$pipeline", pipeline)
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "10s")
}

/// Percent-encodes a query parameter value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
