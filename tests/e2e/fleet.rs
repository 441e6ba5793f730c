//! One budget for a whole fleet (issue 37): instances of the service on one queue share
//! `target.fleet_max_concurrency` through one Redis (the real `redis-server`). The worker counts
//! the batches it works on at once, whichever instance sent them.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

/// A slow worker (150 ms a batch) behind three instances, each allowed 4 batches at once, the
/// fleet 2.
async fn fleet_of_three(name: &str, queue: &str, redis: &str, worker: &Worker, ttl: u64) -> Vec<Poller> {
    let sqs = sqs().await;
    let text = format!(
        "[fleet]\nredis_url = \"{redis}\"\nslot_ttl_secs = {ttl}\n{}",
        http_pipeline_with_target(
            name,
            queue,
            &worker.url,
            "max_concurrency = 4\nfleet_max_concurrency = 2",
            "[pipelines.batch]\nsize = 1\n[pipelines.pollers]\nwait_time_secs = 1\n"
        )
    );
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(start_poller(&sqs, 5, &text).await);
    }
    fleet
}

fn slow_worker(load: Arc<Load>) -> impl std::future::Future<Output = Worker> {
    counted_worker(load, |_, _| Reply { delay: Duration::from_millis(150), ..Reply::ok("") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_never_run_more_batches_at_once_than_the_fleet_budget() {
    let redis = redis_url().await;
    let sqs = sqs().await;
    let queue = sqs.queue("fleet", &[]).await;
    let bodies: Vec<String> = (0..60).map(|i| format!("m-{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let load = Arc::new(Load::default());
    let worker = slow_worker(load.clone()).await;
    let name = unique("fleet");
    let fleet = fleet_of_three(&name, &queue, &redis, &worker, 30).await;
    eventually("every message processed", Duration::from_secs(90), || async {
        let mut done = 0.0;
        for p in &fleet {
            done += p.metric(&format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}")).await;
        }
        done >= 60.0
    })
    .await;
    let mut sent_by = Vec::new();
    for p in &fleet {
        sent_by.push(p.metric(&format!("sqs_poller_messages_succeeded_total{{pipeline=\"{name}\"}}")).await);
        assert_eq!(p.metric("sqs_poller_fleet_shared").await, 1.0, "on the shared budget throughout");
    }
    for p in fleet {
        let (status, _, log) = p.stop().await;
        assert!(status.success(), "{log}");
    }
    // 3 × 4 batches could run at once; the fleet allows 2, and used them
    assert_eq!(load.peak(), 2, "at most fleet_max_concurrency at the worker at once, and that many");
    assert!(sent_by.iter().filter(|&&n| n > 0.0).count() >= 2, "the budget is shared, not one instance's: {sent_by:?}");
}

/// An instance killed while it holds fleet slots cannot give them back; they expire after
/// `fleet.slot_ttl_secs` and the other instances take them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_slots_come_back_after_their_time_to_live() {
    let redis = redis_url().await;
    let sqs = sqs().await;
    let queue = sqs.queue("fleet-kill", &[]).await;
    let bodies: Vec<String> = (0..40).map(|i| format!("m-{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let load = Arc::new(Load::default());
    // batches of a second: the victim still holds its slot when it is killed
    let worker = counted_worker(load.clone(), |_, _| Reply { delay: Duration::from_secs(1), ..Reply::ok("") }).await;
    let name = unique("fleet-kill");
    let mut fleet = fleet_of_three(&name, &queue, &redis, &worker, 4).await;
    let mut c = redis::Client::open(redis.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("sqs-poller:{name}:slots");
    // the instance of a slot in Redis (members are named HOST-PID-N:K) is killed with it
    let (mut victim, prefix) = loop {
        let members: Vec<String> = redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut c).await.unwrap();
        let found =
            members.iter().find_map(|m| fleet.iter().position(|p| m.contains(&format!("-{}-", p.child.id().unwrap()))));
        if let Some(i) = found {
            let victim = fleet.remove(i);
            let prefix = format!("-{}-", victim.child.id().unwrap());
            break (victim, prefix);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    victim.child.start_kill().unwrap();
    let _ = victim.child.wait().await;
    let members: Vec<String> = redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut c).await.unwrap();
    assert!(members.iter().any(|m| m.contains(&prefix)), "the killed instance held a slot: {members:?}");
    eventually("the rest processed by the two left", Duration::from_secs(120), || async {
        sqs.counts(&queue).await == (0, 0)
    })
    .await;
    // the killed instance's slots expired (the others' acquisitions dropped them): none is left
    let members: Vec<String> = redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut c).await.unwrap();
    assert!(!members.iter().any(|m| m.contains(&prefix)), "the killed instance's slots are still there: {members:?}");
    for p in fleet {
        let (status, _, log) = p.stop().await;
        assert!(status.success(), "{log}");
    }
    assert!(load.peak() <= 2, "peak {} over the fleet budget", load.peak());
}

/// A Redis of the test's own on a free port, to stop and start again.
fn own_redis(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server: {e}; {HOW_TO_START_REDIS}"))
}

async fn wait_pong(url: &str) {
    eventually("redis-server answers", Duration::from_secs(10), || async {
        let Ok(client) = redis::Client::open(url) else { return false };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else { return false };
        redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
    })
    .await;
}

/// Redis stops in the middle of a run: the instances go on with their local share (the budget
/// divided by the instances last seen), say so, and take the shared budget again once it is back.
/// Nothing stalls, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_the_fleet_goes_on_with_local_shares_and_comes_back() {
    redis_url().await; // redis-server is installed
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = format!("redis://127.0.0.1:{port}");
    let mut server = own_redis(port, dir.path());
    wait_pong(&redis).await;
    let sqs = sqs().await;
    let queue = sqs.queue("fleet-outage", &[]).await;
    let load = Arc::new(Load::default());
    let worker = slow_worker(load.clone()).await;
    let name = unique("fleet-outage");
    let fleet = fleet_of_three(&name, &queue, &redis, &worker, 6).await;
    let deleted = || async {
        let mut n = 0.0;
        for p in &fleet {
            n += p.metric(&format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}")).await;
        }
        n
    };
    let send = |from: usize| {
        let bodies: Vec<String> = (from..from + 20).map(|i| format!("m-{i}")).collect();
        let (sqs, queue) = (&sqs, &queue);
        async move { sqs.send_bodies(queue, &bodies).await }
    };
    send(0).await;
    eventually("the first 20 processed on the shared budget", Duration::from_secs(60), || async {
        deleted().await >= 20.0
    })
    .await;
    // Redis goes away; the next 20 are processed all the same
    server.start_kill().unwrap();
    let _ = server.wait().await;
    send(20).await;
    eventually("20 more processed with Redis gone", Duration::from_secs(60), || async { deleted().await >= 40.0 })
        .await;
    for p in &fleet {
        assert_eq!(p.metric("sqs_poller_fleet_shared").await, 0.0, "says it runs on its local share");
        assert!(p.metric("sqs_poller_fleet_redis_errors_total").await > 0.0);
    }
    // back: the shared budget again
    let mut server = own_redis(port, dir.path());
    wait_pong(&redis).await;
    send(40).await;
    eventually("the last 20 processed", Duration::from_secs(60), || async { deleted().await >= 60.0 }).await;
    eventually("every instance back on the shared budget", Duration::from_secs(30), || async {
        let mut all = true;
        for p in &fleet {
            all &= p.metric("sqs_poller_fleet_shared").await == 1.0;
        }
        all
    })
    .await;
    let mut logs = String::new();
    for p in fleet {
        let (status, _, log) = p.stop().await;
        assert!(status.success(), "{log}");
        logs.push_str(&log);
    }
    assert!(logs.contains("local share of the fleet budget"), "the log says why");
    assert!(logs.contains("back on the fleet's shared budget"));
    assert_eq!(sqs.counts(&queue).await, (0, 0), "nothing left, nothing lost");
    let _ = server.start_kill();
}

/// `target.fleet_rate_per_sec` across three instances: the messages reaching the worker, whichever
/// instance sent them, never come faster than the fleet's rate. GCRA in Redis admits at most
/// `rate × L + burst` messages in any stretch of length L (the burst here: a batch of 1); the
/// check allows 50 ms of network between admission and arrival. Slowness can only lower the rate,
/// so the bound holds however loaded the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_keep_to_the_fleets_rate() {
    let redis = redis_url().await;
    let sqs = sqs().await;
    let queue = sqs.queue("fleet-rate", &[]).await;
    let bodies: Vec<String> = (0..80).map(|i| format!("m-{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let worker = worker(|_| Reply::ok("")).await;
    let name = unique("fleet-rate");
    let text = format!(
        "[fleet]\nredis_url = \"{redis}\"\n{}",
        http_pipeline_with_target(
            &name,
            &queue,
            &worker.url,
            "max_concurrency = 4\nfleet_rate_per_sec = 20",
            "[pipelines.batch]\nsize = 1\n[pipelines.pollers]\nwait_time_secs = 1\n"
        )
    );
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(start_poller(&sqs, 5, &text).await);
    }
    eventually("every message processed", Duration::from_secs(90), || async { worker.deliveries().len() >= 80 }).await;
    let mut waited = 0.0;
    for p in &fleet {
        waited += p.metric(&format!("sqs_poller_fleet_rate_limited_batches_total{{pipeline=\"{name}\"}}")).await;
    }
    for p in fleet {
        let (status, _, log) = p.stop().await;
        assert!(status.success(), "{log}");
    }
    let mut at: Vec<std::time::Instant> = worker.deliveries().iter().map(|d| d.at).collect();
    at.sort();
    let rate = 20.0;
    for i in 0..at.len() {
        for j in i + 1..at.len() {
            let span = (at[j] - at[i]).as_secs_f64() + 0.05;
            let count = (j - i + 1) as f64;
            assert!(count <= rate * span + 1.0 + 1.0, "{count} messages within {span:.3} s: faster than 20/s");
        }
    }
    let measured = (at.len() - 1) as f64 / (at[at.len() - 1] - at[0]).as_secs_f64();
    println!("80 messages through three instances at fleet_rate_per_sec = 20: {measured:.1}/s");
    assert!(measured <= rate * 1.1, "{measured:.1}/s, more than 10% over the fleet's rate");
    assert!(waited > 0.0, "the instances waited for the fleet's rate");
}

/// `[pipelines.idempotency]` with a JSON pointer: ten orders sent three times each, interleaved,
/// to three instances. Each order reaches the worker once; its other copies are deleted without
/// reaching it (or wait while the first copy runs, then are deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_sends_of_one_key_reach_the_worker_once_across_the_fleet() {
    let redis = redis_url().await;
    let sqs = sqs().await;
    let queue = sqs.queue("fleet-idem", &[]).await;
    let bodies: Vec<String> =
        (0..30).map(|i| format!(r#"{{"order": {{"id": "o-{}"}}, "copy": {}}}"#, i % 10, i / 10)).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let load = Arc::new(Load::default());
    let worker = slow_worker(load).await;
    let name = unique("fleet-idem");
    let text = format!(
        "[fleet]\nredis_url = \"{redis}\"\nslot_ttl_secs = 3\n{}",
        http_pipeline(
            &name,
            &queue,
            &worker.url,
            "[pipelines.batch]\nsize = 3\nwindow_ms = 50\n[pipelines.pollers]\nwait_time_secs = 1\n\
             [pipelines.idempotency]\nkey = \"/order/id\"\nttl_secs = 600\n"
        )
    );
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(start_poller(&sqs, 5, &text).await);
    }
    eventually("every copy settled", Duration::from_secs(90), || async { sqs.counts(&queue).await == (0, 0) }).await;
    let (mut skips, mut waits) = (0.0, 0.0);
    for p in &fleet {
        skips += p.metric(&format!("sqs_poller_idempotent_skips_total{{pipeline=\"{name}\"}}")).await;
        waits += p.metric(&format!("sqs_poller_idempotent_waits_total{{pipeline=\"{name}\"}}")).await;
    }
    for p in fleet {
        let (status, _, log) = p.stop().await;
        assert!(status.success(), "{log}");
    }
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for d in worker.deliveries() {
        for r in d.records() {
            let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            *seen.entry(body["order"]["id"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 10, "every order reached the worker: {seen:?}");
    assert!(seen.values().all(|&n| n == 1), "an order reached the worker twice: {seen:?}");
    assert_eq!(skips, 20.0, "the other 20 copies deleted without reaching the worker (waits on the way: {waits})");
}

/// `key = "message_id"` catches a redelivery after a lost delete: instance A's worker succeeds,
/// then A loses SQS (its delete and its lease extensions fail), the message comes back, and
/// instance B deletes it without sending it to the worker again: the key was completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_lost_delete_does_not_reach_the_worker_again() {
    use crate::common::proxy::{Fault, FaultProxy};
    use aws_sdk_sqs::types::QueueAttributeName;
    let redis = redis_url().await;
    let sqs = sqs().await;
    let queue = sqs.queue("fleet-lost-delete", &[(QueueAttributeName::VisibilityTimeout, "4")]).await;
    let proxy = Arc::new(FaultProxy::start(&sqs.endpoint).await);
    let cut = proxy.clone();
    // the first time the worker sees a message, A's way to SQS is cut before it answers
    let worker = worker(move |_| {
        cut.set(Fault::Cut);
        Reply::ok("")
    })
    .await;
    let name = unique("fleet-lost-delete");
    let text = format!(
        "[fleet]\nredis_url = \"{redis}\"\nslot_ttl_secs = 3\n{}",
        http_pipeline(&name, &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.idempotency]\n")
    );
    let mut a = spawn_poller(&proxy.url, 2, &text);
    a.wait_listening().await;
    sqs.send_bodies(&queue, &["once".to_string()]).await;
    eventually("A's worker processed it", Duration::from_secs(30), || async { !worker.deliveries().is_empty() }).await;
    let b = start_poller(&sqs, 5, &text).await;
    eventually("B deleted the redelivery", Duration::from_secs(60), || async { sqs.counts(&queue).await == (0, 0) })
        .await;
    let skips = b.metric(&format!("sqs_poller_idempotent_skips_total{{pipeline=\"{name}\"}}")).await;
    let (status, _, log) = b.stop().await;
    assert!(status.success(), "{log}");
    a.sigterm();
    let _ = a.child.wait().await;
    assert_eq!(worker.deliveries().len(), 1, "the worker saw it once");
    assert_eq!(skips, 1.0, "B deleted it without dispatching it");
}

/// The simulation runs the fleet on `MemoryStore`; this runs one sequence of calls on it and on
/// Redis (`RedisStore`, the Lua scripts) and asks for the same answers: slots up to a limit,
/// given back, expired; the rate's admissions and waits; idempotency claims, their owners,
/// completion and release.
#[tokio::test]
async fn the_memory_store_answers_as_redis_does() {
    use sqs_poller::fleet::memory::MemoryStore;
    use sqs_poller::fleet::store::{FleetStore, Found, RedisStore};
    let redis = RedisStore::new(&redis_url().await).expect("the URL");
    let memory = MemoryStore::new();
    let prefix = unique("conformance");
    let (long, short) = (Duration::from_secs(60), Duration::from_millis(50));
    let mut answers: Vec<Vec<String>> = Vec::new();
    for store in [&redis as &dyn FleetStore, &memory] {
        let k = |s: &str| format!("{prefix}:{s}");
        let owner = |s: &str| (k("idem"), s.to_string());
        let mut said = Vec::new();
        let mut say = |what: &str, v: String| said.push(format!("{what}: {v}"));
        let slots = k("slots");
        for m in ["a", "b", "c"] {
            say("acquire", format!("{:?}", store.acquire(&slots, 2, long, m).await));
        }
        store.release(&slots, "a").await.unwrap();
        say("acquire after a release", format!("{:?}", store.acquire(&slots, 2, long, "c").await));
        say("acquire at the limit", format!("{:?}", store.acquire(&slots, 2, long, "d").await));
        let n = store.heartbeat(&k("me"), &[(slots.clone(), "b".into())], long).await.unwrap();
        say("instances seen", format!("{}", n >= 1));
        // a slot held for 50 ms is free again after 300 ms
        let brief = k("brief");
        say("brief", format!("{:?}", store.acquire(&brief, 1, short, "x").await));
        tokio::time::sleep(Duration::from_millis(300)).await;
        say("after its expiry", format!("{:?}", store.acquire(&brief, 1, long, "y").await));
        // 0.1 a second in bursts of 3: three go at once, the fourth waits up to 10 s
        let rate = k("rate");
        say("burst", format!("{:?}", store.rate(&rate, 10_000.0, 3, 3).await));
        let wait = store.rate(&rate, 10_000.0, 3, 1).await.unwrap();
        say("past the burst", format!("{}", wait.is_some_and(|w| w <= Duration::from_secs(10))));
        // claims
        let k2 = (k("idem2"), "o2".to_string());
        say("claim", format!("{:?}", store.claim(&[owner("o1"), k2.clone()], long).await));
        let other = store.claim(&[owner("o3")], long).await.unwrap();
        say("claimed by another", format!("{}", matches!(other[0], Found::Busy(d) if d <= long)));
        say("claimed again by its owner", format!("{:?}", store.claim(&[owner("o1")], long).await));
        store.finish(&[(k("idem"), "o1".into(), true), (k2.0.clone(), "o2".into(), false)], long).await.unwrap();
        say("after finish", format!("{:?}", store.claim(&[owner("o4"), (k2.0.clone(), "o5".into())], long).await));
        // only the owner ends or renews a claim
        store.finish(&[(k2.0.clone(), "o9".into(), true)], long).await.unwrap();
        store.renew_claims(&[(k2.0.clone(), "o5".into())], long).await.unwrap();
        let busy = store.claim(&[(k2.0.clone(), "o6".into())], long).await.unwrap();
        say("a stranger's finish changes nothing", format!("{}", matches!(busy[0], Found::Busy(_))));
        answers.push(said);
    }
    assert_eq!(answers[0], answers[1], "Redis (left) and the memory store (right)");
    assert!(answers[0].iter().any(|a| a == "acquire at the limit: Ok(false)"), "{:?}", answers[0]);
    assert!(answers[0].iter().any(|a| a == "after finish: Ok([Completed, Claimed])"), "{:?}", answers[0]);
}

/// A Redis that accepts connections and never answers (a hung node, a black-holed route) costs
/// the first calls their 2 s timeout; from then on the instance runs on its local share without
/// waiting on Redis, asking again once a second, instead of every batch waiting 2 s for each of
/// its calls (slot, rate, idempotency).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_costs_a_timeout_once_not_one_per_batch() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hung.local_addr().unwrap().port();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = hung.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    let sqs = sqs().await;
    let queue = sqs.queue("fleet-hung", &[]).await;
    let bodies: Vec<String> = (0..300).map(|i| format!("m-{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let worker = worker(|_| Reply::ok("")).await;
    let name = unique("fleet-hung");
    let text = format!(
        "[fleet]\nredis_url = \"redis://127.0.0.1:{port}\"\n{}",
        http_pipeline_with_target(
            &name,
            &queue,
            &worker.url,
            "max_concurrency = 4\nfleet_max_concurrency = 8\nfleet_rate_per_sec = 100000",
            "[pipelines.batch]\nsize = 1\n[pipelines.idempotency]\n"
        )
    );
    let poller = start_poller(&sqs, 5, &text).await;
    // 300 batches: were each to wait 2 s for Redis, 4 at a time, this would take 150 s
    poller
        .wait_metric(
            &format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}"),
            300.0,
            Duration::from_secs(120),
        )
        .await;
    let errors = poller.metric("sqs_poller_fleet_redis_errors_total").await;
    assert_eq!(poller.metric("sqs_poller_fleet_shared").await, 0.0, "on the local share");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    println!("Redis errors over 300 batches: {errors}");
    assert!(errors < 150.0, "{errors} failed Redis calls for 300 batches: the batches still wait on Redis");
    assert_eq!(log.matches("Redis cannot be used (").count(), 1, "said once:\n{log}");
    assert!(!held.lock().unwrap().is_empty(), "the service did connect to the hung Redis");
}

/// ElastiCache's in-transit encryption and AUTH token: `rediss://:TOKEN@host:port`. The server's
/// certificate is checked against the system's trusted roots (`SSL_CERT_FILE` names the test's
/// CA here); a wrong token and an untrusted certificate are refused, said in the log (the token
/// never), and the service goes on with its local share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_an_auth_token_is_the_shared_budget_and_a_wrong_token_or_untrusted_certificate_is_not() {
    redis_url().await; // redis-server is installed
    let dir = tempfile::tempdir().unwrap();
    crate::https_target::certificates(dir.path());
    let port = free_port().to_string();
    let token = "fleet-token-0123456789";
    let _redis = tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port, "--tls-cert-file", "server.pem"])
        .args(["--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--requirepass", token, "--save", "", "--appendonly", "no"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server: {e}; {HOW_TO_START_REDIS}"));
    let ca = dir.path().join("ca.pem").to_string_lossy().into_owned();
    eventually("redis-server answers over TLS", Duration::from_secs(10), || async {
        let out = tokio::process::Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-p", &port, "--no-auth-warning", "-a", token, "ping"])
            .output()
            .await;
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    })
    .await;
    let sqs = sqs().await;
    let worker = worker(|_| Reply::ok("")).await;
    for (case, secret, env) in [
        ("right token, trusted", token, vec![("SSL_CERT_FILE", ca.as_str())]),
        ("wrong token", "not-the-token-9876543210", vec![("SSL_CERT_FILE", ca.as_str())]),
        ("untrusted certificate", token, vec![]),
    ] {
        let queue = sqs.queue("fleet-tls", &[]).await;
        let bodies: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
        sqs.send_bodies(&queue, &bodies).await;
        let name = unique("fleet-tls");
        let text = format!(
            "[fleet]\nredis_url = \"rediss://:{secret}@127.0.0.1:{port}\"\n{}",
            http_pipeline_with_target(&name, &queue, &worker.url, "max_concurrency = 4\nfleet_max_concurrency = 2", "")
        );
        let mut poller = spawn_poller_with_env(&sqs.endpoint, 5, "", &text, &env);
        poller.wait_listening().await;
        let deleted = format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}");
        poller.wait_metric(&deleted, 20.0, Duration::from_secs(60)).await;
        let (shared, errors) = (
            poller.metric("sqs_poller_fleet_shared").await,
            poller.metric("sqs_poller_fleet_redis_errors_total").await,
        );
        let (status, _, log) = poller.stop().await;
        assert!(status.success(), "{case}: {log}");
        assert!(!log.contains(secret), "{case}: the token is in the log:\n{log}");
        if case.starts_with("right") {
            assert_eq!((shared, errors), (1.0, 0.0), "{case}: on the shared budget, no failed call:\n{log}");
        } else {
            assert_eq!(shared, 0.0, "{case}: on the local share:\n{log}");
            assert!(errors >= 1.0, "{case}");
            let said = log.lines().find(|l| l.contains("Redis cannot be used (")).unwrap_or_default().to_string();
            println!("{case}: {said}");
            assert!(!said.is_empty(), "{case}: the log says why:\n{log}");
        }
    }
}
