//! End-to-end tests: the real `sqs-poller` binary and the real AWS SDK against the local services
//! (fauxqs, LocalStack, moto, Prometheus; `scripts/services.sh start`), with real workers over
//! HTTP. One test binary: the crate is linked once, not once per file. Each module is one
//! feature's tests; `cargo test --test e2e delivery::` runs one module, and every test keeps its
//! name under its module's (`delivery::a_thousand_messages_are_delivered_once_and_deleted`).
//! The shared harness is `common` (the emulators, workers, the poller as a child process, and the
//! `Scenario` builder).

mod common;

mod admin;
mod autoscaler;
mod aws_edge;
mod batching;
mod bisect;
mod command_target;
mod conformance;
mod deadlines;
mod delivery;
mod deploy;
mod desired_tasks;
mod egress_proxy;
mod example_workers;
mod fair_share;
mod faults;
mod fifo_and_rate;
mod filtering;
mod fleet;
mod https_target;
mod image;
mod lambda_target;
mod large_messages;
mod large_payloads;
mod leases;
mod observability;
mod protect_worker;
mod redrive;
mod reload;
mod responses;
mod runtime_api;
mod s3_signing;
mod seed_scale;
mod server;
mod shutdown;
mod sigv4_wire;
mod sqs_errors;
mod systemd;
mod telemetry;
mod trace;
mod visibility_change;
mod worker_asks;
mod workers;
