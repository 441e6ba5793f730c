//! File descriptors: what a configuration may hold open at full scale, and the process's
//! open-file limit (`ulimit -n`).
//!
//! Every poller's long poll is a connection of its own (SQS answers one ReceiveMessage per
//! connection at a time), and so is every batch in flight to an `http` or `lambda` target; a
//! `command` worker holds three pipes. A fleet of 10,000 pollers needs more than 10,000
//! descriptors, and the usual soft limit is 1,024: past it every receive fails with "Too many
//! open files". At start the service raises its soft limit to the hard one (as Go's runtime
//! does; nothing here uses `select(2)`) and warns, naming the figures, when even the hard limit
//! is below what the configuration may need.

use crate::config::{Config, TargetKind};

/// Descriptors the service holds besides its pipelines: listeners, the runtime, logs, the
/// SDK's clients, a few reconnects in flight.
pub const BASE: u64 = 128;

/// Per pipeline besides its pollers and target: depth samples, settlements, the dead-letter
/// queue, S3 fetches.
pub const PER_PIPELINE: u64 = 16;

/// The most descriptors `config` may hold open at once: one per poller at `pollers.max`, the
/// target's connections or pipes at `max_concurrency`, and fixed overheads.
pub fn needed(config: &Config) -> u64 {
    let pipelines: u64 = config
        .pipelines
        .iter()
        .map(|p| {
            let concurrency = p.target.max_concurrency as u64;
            let target = match &p.target.kind {
                TargetKind::Http { .. } | TargetKind::Lambda { .. } => concurrency,
                TargetKind::Command { .. } => concurrency * 3,
                // each worker process: its pipes and its Runtime API connection
                TargetKind::RuntimeApi { workers, .. } => *workers as u64 * 4,
            };
            let fetches = p.large_payloads.as_ref().map_or(0, |l| l.concurrency as u64);
            p.pollers.max as u64 + target + fetches + PER_PIPELINE
        })
        .sum();
    BASE + pipelines
}

/// The open-file limit before and after [`raise_to_hard_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// The process's open-file limit now (soft, hard); `None` where it cannot be read.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn current() -> Option<(u64, u64)> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given, nothing else
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return None;
    }
    Some((l.rlim_cur as u64, l.rlim_max as u64))
}

/// Raises the soft open-file limit to the hard one (an unprivileged process may).
pub fn raise_to_hard_limit() -> Option<OpenFileLimit> {
    let (soft_before, hard) = current()?;
    if soft_before < hard {
        let l = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: setrlimit reads the struct it is given; a refusal leaves the limit as it was
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) };
    }
    let (soft, hard) = current()?;
    Some(OpenFileLimit { soft_before, soft, hard })
}

/// The warning for a limit below the need, if it is.
pub fn shortfall(limit: u64, needed: u64) -> Option<String> {
    (limit < needed).then(|| {
        format!(
            "the open-file limit (ulimit -n) is {limit}, below the {needed} descriptors this configuration may hold \
             open at full scale (a connection per poller at pollers.max and per batch in flight): receives will fail \
             with \"Too many open files\" before the fleet is full. Raise the hard limit: `ulimit -n {needed}` in \
             the shell, `ulimits` (nofile) in the ECS task definition, LimitNOFILE= for systemd, \
             `--ulimit nofile={needed}` for docker run"
        )
    })
}

/// Raises the soft open-file limit to the hard one and warns when that is still below what the
/// configuration may hold open (a connection per poller and per batch in flight).
pub fn raise_for(config: &Config) {
    let needed = needed(config);
    match raise_to_hard_limit() {
        Some(l) => {
            if l.soft > l.soft_before {
                tracing::info!(
                    from = l.soft_before,
                    to = l.soft,
                    needed,
                    "raised the open-file limit to its hard limit"
                );
            }
            if let Some(warning) = shortfall(l.soft, needed) {
                tracing::warn!(limit = l.soft, needed, "{warning}");
            }
        }
        None => tracing::warn!(needed, "cannot read the open-file limit (ulimit -n)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, &|_: &str| None).unwrap()
    }

    #[test]
    fn a_fleet_needs_a_descriptor_per_poller_and_per_batch_in_flight() {
        let c = config(
            "[[pipelines]]\nname = \"a\"\nqueue_url = \"http://q/1/a\"\n[pipelines.pollers]\nmin = 20\nmax = 2000\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"http://127.0.0.1:9000/\"\nmax_concurrency = 5000\n",
        );
        assert_eq!(needed(&c), BASE + 2000 + 5000 + PER_PIPELINE);
        let c = config(
            "[[pipelines]]\nname = \"a\"\nqueue_url = \"http://q/1/a\"\n[pipelines.pollers]\nmax = 10\n\
             [pipelines.target]\ntype = \"command\"\nprogram = \"cat\"\nmax_concurrency = 4\n",
        );
        assert_eq!(needed(&c), BASE + 10 + 12 + PER_PIPELINE);
    }

    #[test]
    fn a_limit_below_the_need_names_both_and_the_ways_to_raise_it() {
        assert_eq!(shortfall(20_000, 10_144), None);
        let w = shortfall(1024, 10_144).unwrap();
        assert!(w.contains("is 1024, below the 10144 descriptors"), "{w}");
        assert!(w.contains("ulimit -n 10144") && w.contains("ECS task definition"), "{w}");
    }
}
