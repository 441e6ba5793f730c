//! Trace context: a message's `AWSTraceHeader` system attribute (X-Ray's
//! `Root=1-…;Parent=…;Sampled=…`) follows its batch to the worker, as Lambda passes it on.
//!
//! A batch's trace is the first of its messages that carries one. The `runtime-api` target
//! sends it as `Lambda-Runtime-Trace-Id` (the runtime client sets `_X_AMZN_TRACE_ID` from it);
//! the `http` target sends `X-Amzn-Trace-Id` and the W3C `traceparent` derived from it; the
//! `command` target gets both as the environment variables `_X_AMZN_TRACE_ID` and `TRACEPARENT`.
//! The batch's log lines carry its trace id.

use crate::event::ReceivedMessage;

/// One X-Ray trace header, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The header as received (`Root=1-…;Parent=…;Sampled=1`).
    pub header: String,
    /// The 32 hex digits of the root id (its time and random parts).
    pub trace_id: String,
    /// The 16 hex digits of the parent segment, if the header has one.
    pub parent: Option<String>,
    pub sampled: bool,
}

impl Trace {
    /// Parses an X-Ray trace header; `None` when it has no valid `Root`.
    pub fn parse(header: &str) -> Option<Trace> {
        // it travels in HTTP headers and environment variables: visible ASCII only
        if !header.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return None;
        }
        let mut trace_id = None;
        let mut parent = None;
        let mut sampled = false;
        for part in header.split(';') {
            let (key, value) = part.trim().split_once('=')?;
            match key {
                "Root" => {
                    let mut fields = value.split('-');
                    let (Some("1"), Some(time), Some(random), None) =
                        (fields.next(), fields.next(), fields.next(), fields.next())
                    else {
                        return None;
                    };
                    let id = format!("{time}{random}");
                    if time.len() != 8 || random.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return None;
                    }
                    trace_id = Some(id.to_ascii_lowercase());
                }
                "Parent" if value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    parent = Some(value.to_ascii_lowercase());
                }
                "Sampled" => sampled = value == "1",
                _ => {}
            }
        }
        Some(Trace { header: header.to_string(), trace_id: trace_id?, parent, sampled })
    }

    /// The W3C `traceparent`: version 00, the X-Ray root as the trace id, its parent (or
    /// `parent_if_none`, 16 hex digits, when it names none), and the sampled flag.
    pub fn traceparent(&self, parent_if_none: &str) -> String {
        let parent = self.parent.as_deref().unwrap_or(parent_if_none);
        format!("00-{}-{}-{}", self.trace_id, parent, if self.sampled { "01" } else { "00" })
    }

    /// The trace of a batch: the first message that carries a valid one.
    pub fn of_batch(batch: &[ReceivedMessage]) -> Option<Trace> {
        batch.iter().filter_map(|m| m.trace_header.as_deref()).find_map(Trace::parse)
    }
}

/// What goes to the worker with a batch: the X-Ray header of its first traced message and the
/// W3C `traceparent` — the batch span's when the service traces the batch itself
/// ([`crate::telemetry`]), else one derived from the X-Ray header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub xray: Option<Trace>,
    pub traceparent: Option<String>,
}

impl TraceContext {
    /// The context of a batch; `batch_span` is the `traceparent` of the batch's own span.
    pub fn of_batch(batch: &[ReceivedMessage], batch_span: Option<&str>) -> TraceContext {
        let xray = Trace::of_batch(batch);
        let traceparent = match batch_span {
            Some(t) => Some(t.to_string()),
            None => xray.as_ref().map(|t| t.traceparent(&random_span_id())),
        };
        TraceContext { xray, traceparent }
    }
}

/// A random non-zero span id of 16 hex digits.
pub fn random_span_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xray_headers_become_w3c_traceparents() {
        let t = Trace::parse("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1").unwrap();
        assert_eq!(t.trace_id, "5759e988bd862e3fe1be46a994272793");
        assert_eq!(t.traceparent("ffffffffffffffff"), "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01");
        let t = Trace::parse("Root=1-5759E988-BD862E3FE1BE46A994272793;Sampled=0").unwrap();
        assert_eq!(t.traceparent("00f067aa0ba902b7"), "00-5759e988bd862e3fe1be46a994272793-00f067aa0ba902b7-00");
        // Lineage and other keys are kept in the header, ignored here
        assert!(Trace::parse("Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a87bd80c:1|68fd508a:5").is_some());
    }

    #[test]
    fn malformed_headers_carry_no_trace() {
        for bad in [
            "Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=\n",
            "",
            "Root=",
            "Root=2-5759e988-bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd86",
            "Root=1-zzzzzzzz-bd862e3fe1be46a994272793",
            "Parent=53995c3f42cd8ad8",
            "garbage",
        ] {
            assert_eq!(Trace::parse(bad), None, "{bad}");
        }
        assert_eq!(random_span_id().len(), 16);
    }
}
