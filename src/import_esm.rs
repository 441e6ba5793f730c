//! `sqs-poller import-esm`: Lambda's SQS event source mappings as pipelines.
//!
//! Reads what `aws lambda get-event-source-mapping` prints (one mapping; `list-event-source-mappings`
//! prints several under `EventSourceMappings`), or a CloudFormation / SAM template (JSON or YAML,
//! with its short-form tags): every `AWS::Lambda::EventSourceMapping` on an SQS queue and every
//! `SQS` event of an `AWS::Serverless::Function`. Writes the equivalent configuration, and names
//! every setting it could not carry over. Pure: text in, text out.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{json, Value};

/// One event source mapping, read from whichever shape it came in.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mapping {
    /// Where it came from: the mapping's UUID or the template's logical id.
    pub origin: String,
    /// `queue_url`, or a `${VARIABLE}` when the template makes the queue.
    pub queue_url: String,
    pub queue_name: Option<String>,
    pub region: Option<String>,
    /// The function's name or ARN, or a `${VARIABLE}`.
    pub function: String,
    pub batch_size: Option<u64>,
    pub window_secs: Option<u64>,
    pub pollers: Option<(Option<u64>, Option<u64>)>,
    pub max_concurrency: Option<u64>,
    pub patterns: Vec<String>,
    pub report_batch_item_failures: bool,
    pub enabled: bool,
    /// What the source says that the configuration cannot say, one line each.
    pub not_carried: Vec<String>,
}

/// The mappings of `text` (JSON or YAML), or why there are none.
pub fn read(text: &str) -> Result<Vec<Mapping>, String> {
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => yaml_to_json(serde_norway::from_str(text).map_err(|e| format!("neither JSON nor YAML: {e}"))?),
    };
    let mappings = if doc.get("EventSourceArn").is_some() {
        vec![from_api(&doc)?]
    } else if let Some(list) = doc.get("EventSourceMappings").and_then(Value::as_array) {
        list.iter().map(from_api).collect::<Result<_, _>>()?
    } else if let Some(resources) = doc.get("Resources").and_then(Value::as_object) {
        from_template(&doc, resources)?
    } else {
        return Err("no event source mapping: expected the output of `aws lambda get-event-source-mapping` \
                    (EventSourceArn, FunctionArn, …) or a CloudFormation/SAM template (Resources)"
            .into());
    };
    if mappings.is_empty() {
        return Err("the template has no AWS::Lambda::EventSourceMapping on an SQS queue and no SQS event of an \
                    AWS::Serverless::Function"
            .into());
    }
    Ok(mappings)
}

/// YAML to JSON, CloudFormation's short-form tags to their long form (`!GetAtt Q.Arn` →
/// `{"Fn::GetAtt": ["Q", "Arn"]}`, `!Ref X` → `{"Ref": "X"}`).
fn yaml_to_json(v: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => json!(b),
        Y::Number(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        Y::String(s) => json!(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.as_str().map(String::from).unwrap_or_else(|| format!("{k:?}")), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(t) => {
            let name = t.tag.to_string().trim_start_matches('!').to_string();
            let value = yaml_to_json(t.value);
            match (name.as_str(), value) {
                ("Ref", v) => json!({ "Ref": v }),
                ("GetAtt", Value::String(s)) => {
                    let (resource, attribute) = s.split_once('.').unwrap_or((&s, ""));
                    json!({ "Fn::GetAtt": [resource, attribute] })
                }
                (other, v) => json!({ format!("Fn::{other}"): v }),
            }
        }
    }
}

/// A mapping as the Lambda API prints it.
fn from_api(m: &Value) -> Result<Mapping, String> {
    let arn = m["EventSourceArn"].as_str().ok_or("EventSourceArn is not a string")?;
    let (region, account, name) =
        sqs_arn(arn).ok_or_else(|| format!("EventSourceArn {arn} is not an SQS queue's ARN"))?;
    let mut out = Mapping {
        origin: m["UUID"].as_str().unwrap_or("mapping").to_string(),
        queue_url: format!("https://sqs.{region}.amazonaws.com/{account}/{name}"),
        queue_name: Some(name.to_string()),
        region: Some(region.to_string()),
        function: m["FunctionArn"].as_str().ok_or("FunctionArn is missing")?.to_string(),
        enabled: m["State"].as_str().is_none_or(|s| s != "Disabled" && s != "Disabling"),
        ..Default::default()
    };
    settings(m, &mut out)?;
    out.not_carried.push(
        "the queue's own settings are not in a mapping: its VisibilityTimeout (sqs-poller extends leases itself; \
         pollers.visibility_timeout_secs sends one with each receive) and its RedrivePolicy (it stays with the queue; \
         [pipelines.dead_letter] would move failed messages with a reason attribute)"
            .into(),
    );
    let known = [
        "UUID",
        "EventSourceArn",
        "FunctionArn",
        "State",
        "StateTransitionReason",
        "LastModified",
        "LastProcessingResult",
        "EventSourceMappingArn",
        "BatchSize",
        "MaximumBatchingWindowInSeconds",
        "FilterCriteria",
        "FunctionResponseTypes",
        "ScalingConfig",
        "ProvisionedPollerConfig",
        "MetricsConfig",
        "KMSKeyArn",
        "FilterCriteriaError",
        "Tags",
    ];
    unknown_keys(m, &known, &mut out);
    Ok(out)
}

/// An SQS queue's ARN: region, account, name.
fn sqs_arn(arn: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "sqs", region, account, name] if !name.is_empty() => Some((region, account, name)),
        _ => None,
    }
}

/// The settings an API mapping, a template's mapping and a SAM event share (the same names).
fn settings(m: &Value, out: &mut Mapping) -> Result<(), String> {
    let number = |key: &str| -> Result<Option<u64>, String> {
        match &m[key] {
            Value::Null => Ok(None),
            v => v.as_u64().or_else(|| v.as_str()?.parse().ok()).map(Some).ok_or(format!("{key} is not a number: {v}")),
        }
    };
    out.batch_size = number("BatchSize")?;
    out.window_secs = number("MaximumBatchingWindowInSeconds")?;
    let nested = |outer: &str, inner: &str| m[outer][inner].as_u64().or_else(|| m[outer][inner].as_str()?.parse().ok());
    if m["ProvisionedPollerConfig"].is_object() {
        out.pollers = Some((
            nested("ProvisionedPollerConfig", "MinimumPollers"),
            nested("ProvisionedPollerConfig", "MaximumPollers"),
        ));
    }
    out.max_concurrency = nested("ScalingConfig", "MaximumConcurrency");
    for filter in m["FilterCriteria"]["Filters"].as_array().into_iter().flatten() {
        match &filter["Pattern"] {
            Value::String(p) => out.patterns.push(p.clone()),
            Value::Null => {}
            other => out.patterns.push(other.to_string()),
        }
    }
    out.report_batch_item_failures =
        m["FunctionResponseTypes"].as_array().is_some_and(|types| types.iter().any(|t| t == "ReportBatchItemFailures"));
    if m.get("Enabled").and_then(Value::as_bool) == Some(false) {
        out.enabled = false;
    }
    if m["MetricsConfig"].is_object() {
        out.not_carried.push("MetricsConfig: sqs-poller's metrics are Prometheus series on /metrics".into());
    }
    if m["KMSKeyArn"].is_string() {
        out.not_carried
            .push("KMSKeyArn: the filter criteria are in the configuration file, not encrypted by KMS".into());
    }
    Ok(())
}

fn unknown_keys(m: &Value, known: &[&str], out: &mut Mapping) {
    let unknown: BTreeSet<&String> =
        m.as_object().into_iter().flatten().map(|(k, _)| k).filter(|k| !known.contains(&k.as_str())).collect();
    for key in unknown {
        out.not_carried.push(format!("{key}: not a setting sqs-poller has"));
    }
}

/// Every mapping of a template: `AWS::Lambda::EventSourceMapping` resources on SQS, and the `SQS`
/// events of `AWS::Serverless::Function` resources.
fn from_template(doc: &Value, resources: &serde_json::Map<String, Value>) -> Result<Vec<Mapping>, String> {
    let mut out = Vec::new();
    for (id, resource) in resources {
        let properties = &resource["Properties"];
        match resource["Type"].as_str() {
            Some("AWS::Lambda::EventSourceMapping") => {
                let Some(queue) = queue_of(doc, &properties["EventSourceArn"]) else { continue };
                let function = reference(doc, &properties["FunctionName"], "FUNCTION_NAME");
                let mut m = Mapping { origin: id.clone(), function, enabled: true, ..queue };
                settings(properties, &mut m)?;
                out.push(m);
            }
            Some("AWS::Serverless::Function") => {
                for (event_id, event) in properties["Events"].as_object().into_iter().flatten() {
                    if event["Type"] != "SQS" {
                        continue;
                    }
                    let Some(queue) = queue_of(doc, &event["Properties"]["Queue"]) else { continue };
                    let function = match properties["FunctionName"].as_str() {
                        Some(name) => name.to_string(),
                        None => format!("${{{}_FUNCTION_NAME}}", env_name(id)),
                    };
                    let mut m = Mapping { origin: format!("{id}.{event_id}"), function, enabled: true, ..queue };
                    settings(&event["Properties"], &mut m)?;
                    out.push(m);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The queue an `EventSourceArn` names: an ARN (an SQS one, else not a queue: `None`), a
/// `GetAtt` of a queue in the template (its `QueueName` when literal), or a parameter.
fn queue_of(doc: &Value, arn: &Value) -> Option<Mapping> {
    if let Some(arn) = arn.as_str() {
        let (region, account, name) = sqs_arn(arn)?;
        return Some(Mapping {
            queue_url: format!("https://sqs.{region}.amazonaws.com/{account}/{name}"),
            queue_name: Some(name.into()),
            region: Some(region.into()),
            ..Default::default()
        });
    }
    let mut notes = Vec::new();
    if let Some(target) = arn["Fn::GetAtt"].as_array() {
        let logical = target.first()?.as_str()?;
        let queue = &doc["Resources"][logical];
        if queue["Type"] != "AWS::SQS::Queue" {
            return None;
        }
        let name = queue["Properties"]["QueueName"].as_str().map(String::from);
        let url = format!("${{{}_URL}}", env_name(logical));
        notes.push(format!(
            "the queue {logical} is made by the template: set {}_URL to its URL (the stack's `!Ref {logical}`)",
            env_name(logical)
        ));
        queue_notes(&queue["Properties"], &mut notes);
        return Some(Mapping {
            queue_url: url,
            queue_name: name.or(Some(logical.into())),
            not_carried: notes,
            ..Default::default()
        });
    }
    let name = arn["Ref"].as_str()?;
    let url = format!("${{{}_URL}}", env_name(name));
    notes.push(format!("the queue is the parameter {name} (an ARN): set {}_URL to its URL", env_name(name)));
    Some(Mapping { queue_url: url, queue_name: Some(name.into()), not_carried: notes, ..Default::default() })
}

/// What a queue in the template says that belongs to the pipeline and is not read from SQS.
fn queue_notes(properties: &Value, notes: &mut Vec<String>) {
    if let Some(v) = properties["VisibilityTimeout"].as_u64() {
        notes.push(format!(
            "the queue's VisibilityTimeout {v}: sqs-poller extends leases itself; pollers.visibility_timeout_secs = {v} \
             sends it with each receive if you want it"
        ));
    }
    if properties["RedrivePolicy"].is_object() {
        notes.push(
            "the queue's RedrivePolicy stays with the queue (SQS moves messages after maxReceiveCount); \
             [pipelines.dead_letter] would move them with a reason attribute instead"
                .into(),
        );
    }
}

/// A template value as configuration text: a literal, or a `${VARIABLE}` for a `Ref`/`GetAtt`.
fn reference(doc: &Value, v: &Value, fallback: &str) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    let named = v["Ref"].as_str().or_else(|| v["Fn::GetAtt"][0].as_str());
    match named {
        Some(name) if doc["Resources"][name]["Properties"]["FunctionName"].is_string() => {
            doc["Resources"][name]["Properties"]["FunctionName"].as_str().unwrap().to_string()
        }
        Some(name) => format!("${{{}}}", env_name(name)),
        None => format!("${{{fallback}}}"),
    }
}

/// `OrdersQueue` → `ORDERS_QUEUE`.
fn env_name(logical: &str) -> String {
    let mut out = String::new();
    for (i, ch) in logical.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 && !out.ends_with('_') {
            out.push('_');
        }
        out.push(if ch.is_ascii_alphanumeric() { ch.to_ascii_uppercase() } else { '_' });
    }
    out
}

/// A pipeline name from a queue name (`orders.fifo` → `orders-fifo`), unique among `taken`.
fn pipeline_name(m: &Mapping, taken: &mut BTreeSet<String>) -> String {
    let base: String = m
        .queue_name
        .as_deref()
        .unwrap_or(&m.origin)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The configuration for `mappings`, and what could not be carried over (also written into it as
/// comments).
pub fn write(mappings: &[Mapping]) -> (String, Vec<String>) {
    let mut text = String::from(
        "# Written by `sqs-poller import-esm` from Lambda event source mappings. Check it with\n\
         # `sqs-poller check --config FILE`; every key is explained in config/poller.toml.\n",
    );
    let mut notes = Vec::new();
    if let Some(region) = mappings.iter().find_map(|m| m.region.as_deref()) {
        let _ = write!(text, "\n[aws]\nregion = {}\n", quoted(region));
    }
    let mut taken = BTreeSet::new();
    for m in mappings {
        let name = pipeline_name(m, &mut taken);
        pipeline(&mut text, m, &name);
        notes.extend(mapping_notes(m).into_iter().map(|n| format!("{name} ({}): {n}", m.origin)));
    }
    if !notes.is_empty() {
        text.push_str("\n# Not carried over:\n");
        for n in &notes {
            let _ = writeln!(text, "#   {n}");
        }
    }
    (text, notes)
}

fn pipeline(text: &mut String, m: &Mapping, name: &str) {
    let _ = write!(
        text,
        "\n# from {}\n[[pipelines]]\nname = {}\nqueue_url = {}\n",
        m.origin,
        quoted(name),
        quoted(&m.queue_url)
    );
    if let Some((min, max)) = m.pollers {
        text.push_str("\n[pipelines.pollers]   # ProvisionedPollerConfig\n");
        if let Some(min) = min {
            let _ = writeln!(text, "min = {min}");
        }
        if let Some(max) = max {
            let _ = writeln!(text, "max = {max}");
        }
    }
    if m.batch_size.is_some() || m.window_secs.is_some() {
        text.push_str("\n[pipelines.batch]\n");
        if let Some(size) = m.batch_size {
            let _ = writeln!(text, "size = {size}   # BatchSize");
        }
        if let Some(window) = m.window_secs {
            let _ = writeln!(text, "window_ms = {}   # MaximumBatchingWindowInSeconds {window}", window * 1000);
        }
    }
    if !m.patterns.is_empty() {
        let patterns: Vec<String> = m.patterns.iter().map(|p| quoted(p)).collect();
        let _ = write!(text, "\n[pipelines.filter]   # FilterCriteria\npatterns = [{}]\n", patterns.join(", "));
    }
    let _ = write!(text, "\n[pipelines.target]\ntype = \"lambda\"\nfunction_name = {}\n", quoted(&m.function));
    if let Some(c) = m.max_concurrency {
        let _ = writeln!(text, "max_concurrency = {c}   # ScalingConfig.MaximumConcurrency");
    }
}

/// What differs between the mapping and its pipeline, said once per mapping.
fn mapping_notes(m: &Mapping) -> Vec<String> {
    let mut notes = m.not_carried.clone();
    if !m.enabled {
        notes.push(
            "the mapping is disabled: the pipeline polls when the service starts (pause it through the admin API)"
                .into(),
        );
    }
    if !m.report_batch_item_failures {
        notes.push(
            "FunctionResponseTypes lacks ReportBatchItemFailures: Lambda retries the whole batch on any failure, \
             sqs-poller always reads batchItemFailures (a handler that returns none behaves the same)"
                .into(),
        );
    }
    if m.pollers.is_none() {
        notes.push("no ProvisionedPollerConfig (on-demand mode): the pipeline uses pollers.min/max defaults".into());
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = r#"{
        "UUID": "6d9bce8e-836b-442c-8070-74e77903c815",
        "BatchSize": 50, "MaximumBatchingWindowInSeconds": 2,
        "EventSourceArn": "arn:aws:sqs:eu-west-1:123456789012:transactions",
        "FunctionArn": "arn:aws:lambda:eu-west-1:123456789012:function:transaction-processor",
        "LastModified": 1733400000.0, "State": "Enabled", "StateTransitionReason": "USER_INITIATED",
        "FilterCriteria": {"Filters": [{"Pattern": "{\"body\": {\"event_type\": [\"PAYMENT\"]}}"}]},
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "ScalingConfig": {"MaximumConcurrency": 500},
        "ProvisionedPollerConfig": {"MinimumPollers": 20, "MaximumPollers": 2000},
        "EventSourceMappingArn": "arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:6d9b",
        "DocumentDBEventSourceConfig": {}
    }"#;

    #[test]
    fn a_mapping_from_the_api_becomes_a_pipeline() {
        let m = read(API).unwrap();
        assert_eq!(m.len(), 1);
        let m = &m[0];
        assert_eq!(m.queue_url, "https://sqs.eu-west-1.amazonaws.com/123456789012/transactions");
        assert_eq!(
            (m.batch_size, m.window_secs, m.pollers, m.max_concurrency),
            (Some(50), Some(2), Some((Some(20), Some(2000))), Some(500))
        );
        assert_eq!(m.patterns, vec![r#"{"body": {"event_type": ["PAYMENT"]}}"#]);
        let (text, notes) = write(&read(API).unwrap());
        assert!(text.contains("window_ms = 2000"), "{text}");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[1].ends_with(
            "(6d9bce8e-836b-442c-8070-74e77903c815): DocumentDBEventSourceConfig: not a setting sqs-poller has"
        ));
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(parsed["pipelines"][0]["filter"]["patterns"][0].as_str(), Some(m.patterns[0].as_str()));
    }

    #[test]
    fn what_cannot_be_carried_is_named() {
        let api = API.replace("\"Enabled\"", "\"Disabled\"").replace("[\"ReportBatchItemFailures\"]", "[]");
        let (_, notes) = write(&read(&api).unwrap());
        assert!(notes.iter().any(|n| n.contains("disabled")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("ReportBatchItemFailures")), "{notes:?}");
        assert!(read(r#"{"EventSourceArn": "arn:aws:kinesis:us-east-1:1:stream/x", "FunctionArn": "f"}"#).is_err());
        assert!(read("{}").unwrap_err().contains("get-event-source-mapping"));
        assert!(read("Resources: {}").unwrap_err().contains("no AWS::Lambda::EventSourceMapping"));
    }

    #[test]
    fn a_template_with_short_form_tags_and_a_sam_event() {
        let yaml = r#"
Parameters:
  Function: {Type: String}
Resources:
  OrdersQueue:
    Type: AWS::SQS::Queue
    Properties: {QueueName: orders, VisibilityTimeout: 60}
  Mapping:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      EventSourceArn: !GetAtt OrdersQueue.Arn
      FunctionName: !Ref Function
      BatchSize: 10
      ScalingConfig: {MaximumConcurrency: 5}
  Stream:
    Type: AWS::Lambda::EventSourceMapping
    Properties: {EventSourceArn: "arn:aws:kinesis:us-east-1:1:stream/x", FunctionName: f}
  Handler:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: payments-handler
      Events:
        Payments:
          Type: SQS
          Properties:
            Queue: arn:aws:sqs:us-east-1:123456789012:payments.fifo
            BatchSize: 10
            FunctionResponseTypes: [ReportBatchItemFailures]
        Api: {Type: Api}
"#;
        let mappings = read(yaml).unwrap();
        assert_eq!(mappings.len(), 2, "{mappings:?}");
        let (text, notes) = write(&mappings);
        assert!(text.contains("queue_url = \"${ORDERS_QUEUE_URL}\""), "{text}");
        assert!(text.contains("function_name = \"${FUNCTION}\""), "{text}");
        assert!(
            text.contains("queue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/payments.fifo\""),
            "{text}"
        );
        assert!(text.contains("name = \"payments-fifo\""), "{text}");
        assert!(notes.iter().any(|n| n.contains("VisibilityTimeout 60")), "{notes:?}");
    }
}
