//! Delivery, as daprd does it for a Kafka subscription: one consumer per partition, one
//! delivery at a time (order holds per partition), structured CloudEvents or bulk batches to
//! the subscription's route, `SUCCESS`/`RETRY`/`DROP` and bulk statuses honoured, retries with
//! the function's back-off (the Resiliency policy's budget of 10 retries), and what is dropped
//! or never succeeds copied raw to the dead-letter topic. The offset is committed only after
//! the outcome is final, so a replica killed mid-delivery means a redelivery, never a loss.
//!
//! The `async.{name}` topic of an HTTP function is consumed the same way; each record is an
//! HTTP request replayed against a replica (5xx and connection errors are retried, 4xx is
//! dead-lettered).

use std::{collections::BTreeMap, sync::Arc, sync::atomic::Ordering, time::Duration};

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    engine::{Chaos, Engine, Function, Lease, is_replayed},
    log::Read,
    log::{NewRecord, Record},
    replica::Route,
};

/// Retries after the first attempt before Dapr gives up (`contracts/dapr/resiliency.yaml`).
const RETRY_BUDGET: u32 = 10;
/// Records read from the log at once for single deliveries.
const READ_AHEAD: u32 = 64;
/// Dapr's delivery timeout in the shipped Resiliency policy.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(150);

/// A record's fate after one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Success,
    Retry,
    Drop,
}

/// Dapr's reading of a single-delivery answer (`postman/http/http.go`).
fn single_status(code: u16, body: &[u8]) -> Status {
    match code {
        200..=299 => match serde_json::from_slice::<Value>(body)
            .ok()
            .as_ref()
            .and_then(|v| v.get("status"))
            .and_then(Value::as_str)
        {
            None | Some("SUCCESS" | "") => Status::Success,
            Some("DROP") => Status::Drop,
            Some(_) => Status::Retry,
        },
        404 => Status::Drop,
        _ => Status::Retry,
    }
}

/// Dapr's reading of a bulk answer: per entry; a missing entry or empty status is a retry.
fn bulk_statuses(code: u16, body: &[u8], n: usize) -> Vec<Status> {
    match code {
        200..=299 => {
            let mut out = vec![Status::Retry; n];
            if let Some(statuses) = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("statuses").and_then(Value::as_array).cloned())
            {
                for s in statuses {
                    let idx = s
                        .get("entryId")
                        .and_then(Value::as_str)
                        .and_then(|i| i.parse::<usize>().ok());
                    if let Some(i) = idx.filter(|i| *i < n) {
                        out[i] = match s.get("status").and_then(Value::as_str) {
                            Some("SUCCESS") => Status::Success,
                            Some("DROP") => Status::Drop,
                            _ => Status::Retry,
                        };
                    }
                }
            }
            out
        }
        404 => vec![Status::Drop; n],
        _ => vec![Status::Retry; n],
    }
}

/// What the runtime said it did with each record, beside the status Dapr reads: `duplicate`
/// or `dead_letter` (it recorded the event as a dead letter and acknowledged it); `None` for a
/// plain success or an answer that says nothing more.
fn runtime_outcomes(body: &[u8], n: usize) -> Vec<Option<String>> {
    let mut out = vec![None; n];
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return out;
    };
    let outcome = |e: &Value| e.get("outcome").and_then(Value::as_str).map(str::to_string);
    match v.get("statuses").and_then(Value::as_array) {
        Some(entries) => {
            for e in entries {
                let idx = e
                    .get("entryId")
                    .and_then(Value::as_str)
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(i) = idx.filter(|i| *i < n) {
                    out[i] = outcome(e);
                }
            }
        }
        None if n == 1 => out[0] = outcome(&v),
        None => {}
    }
    out
}

/// The dashboard's word for a record's fate after one attempt.
fn shown_outcome(status: Status, runtime: Option<&str>) -> &'static str {
    match (status, runtime) {
        (Status::Success, Some("duplicate")) => "duplicate",
        (Status::Success, Some("dead_letter")) => "dead_letter",
        (Status::Success, _) => "applied",
        (Status::Drop, _) => "dropped",
        (Status::Retry, _) => "retry",
    }
}

/// The replayed request's answer: 2xx done, 4xx (but 408/429) never succeeds, others retry.
fn async_status(code: u16) -> Status {
    match code {
        200..=299 => Status::Success,
        408 | 429 => Status::Retry,
        400..=499 => Status::Drop,
        _ => Status::Retry,
    }
}

/// The envelope as daprd delivers it: the record's CloudEvent with `topic` and `pubsubname`.
fn envelope(record: &Record, pubsub: &str) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&record.value).ok()?;
    let obj = v.as_object_mut()?;
    obj.insert("topic".into(), record.topic.clone().into());
    obj.insert("pubsubname".into(), pubsub.into());
    Some(v)
}

fn backoff(f: &Function, retry: u32) -> Duration {
    let d = &f.manifest.delivery;
    d.backoff_initial
        .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(16)))
        .min(d.backoff_max)
}

/// Consume one partition of `topic` for `f` until the engine stops.
pub(crate) async fn partition_loop(
    engine: Arc<Engine>,
    f: Arc<Function>,
    topic: String,
    partition: u32,
) {
    let mut stop = engine.stopping();
    let mut appended = engine.log.watch();
    let mut replicas = f.watch();
    let group = f.name.clone();
    let is_async = is_replayed(&f.name, &topic);
    loop {
        if engine.is_stopping() {
            return;
        }
        let committed = engine.log.committed(&group, &topic, partition);
        if committed >= engine.log.end(&topic, partition) {
            tokio::select! {
                _ = appended.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let Some(lease) = f.pick_partition(&topic, partition) else {
            // No replica yet: the scaler has been woken by the append; wait for one.
            f.nudge();
            tokio::select! {
                _ = replicas.changed() => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let route = if is_async {
            None
        } else {
            match lease.replica.routes.get(&topic) {
                Some(r) => Some(r.clone()),
                None => {
                    tracing::error!(function = %f.name, %topic, "the function's /dapr/subscribe does not list this topic; nothing is delivered");
                    drop(lease);
                    tokio::select! {
                        _ = replicas.changed() => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
        };
        let max = route.as_ref().and_then(|r| r.bulk).unwrap_or(1);
        // One read for several deliveries; each chunk is still delivered and committed alone.
        let ahead = max.max(READ_AHEAD);
        let records = match engine
            .log
            .read(&group, &topic, partition, committed, ahead)
            .await
        {
            Ok(Read::Records(r)) => r,
            // Removed by retention: resume where the log starts now (Kafka's earliest reset),
            // never past a record appended since the read.
            Ok(Read::Gone { resume_at }) => {
                drop(lease);
                if let Err(e) = engine
                    .log
                    .commit(&group, &topic, partition, resume_at)
                    .await
                {
                    tracing::error!(error = %e, "cannot commit an offset");
                }
                continue;
            }
            Err(e) => {
                tracing::error!(%topic, partition, error = %e, "cannot read the log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(lease);
        // Offsets of final outcomes are committed once per read (and before any wait), as
        // Dapr's Kafka consumer commits marked offsets periodically: a crash redelivers at most
        // one read's worth, which the runtime's idempotency answers as duplicates.
        let mut done = Done::new(&group, &topic, partition);
        for chunk in records.chunks(max as usize) {
            if engine.is_stopping()
                || !deliver(&engine, &f, route.clone(), chunk.to_vec(), &mut done).await
            {
                done.commit(&engine).await;
                return; // the engine is stopping: the rest stays uncommitted
            }
        }
        done.commit(&engine).await;
    }
}

/// The next offset of a partition whose records before it have final outcomes, not yet
/// committed.
struct Done<'a> {
    group: &'a str,
    topic: &'a str,
    partition: u32,
    next: Option<i64>,
}

impl<'a> Done<'a> {
    fn new(group: &'a str, topic: &'a str, partition: u32) -> Self {
        Done {
            group,
            topic,
            partition,
            next: None,
        }
    }

    /// Commit what is done, if anything.
    async fn commit(&mut self, engine: &Engine) {
        let Some(next) = self.next.take() else {
            return;
        };
        if let Err(e) = engine
            .log
            .commit(self.group, self.topic, self.partition, next)
            .await
        {
            tracing::error!(error = %e, "cannot commit an offset; the records will be redelivered");
        }
    }
}

/// Deliver `records` (one, or a bulk batch) until each has a final outcome, marking them in
/// `done` as they finish (committed before any wait). Returns `false` early, with the rest
/// unmarked, when the engine stops.
async fn deliver(
    engine: &Arc<Engine>,
    f: &Arc<Function>,
    route: Option<Route>,
    mut records: Vec<Record>,
    done: &mut Done<'_>,
) -> bool {
    let mut retry = 0u32;
    loop {
        if engine.opts.chaos.contains(&Chaos::Slow) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A replica that died (or none serving) is a rebalance, not a failed delivery: Kafka
        // hands the partition to another consumer, which starts from the committed offset with
        // a fresh retry budget. Only answers, and silence from a live replica, spend retries.
        let Some(lease) = f.pick_partition(&records[0].topic, records[0].partition) else {
            f.nudge();
            done.commit(engine).await;
            let mut stop = engine.stopping();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => return false,
            }
            continue;
        };
        let started = std::time::Instant::now();
        let (statuses, outcomes) = match attempt(engine, &lease, route.as_ref(), &records).await {
            Some(answer) => answer,
            None if exited(&lease).await => {
                drop(lease);
                tokio::time::sleep(REBALANCE_PAUSE).await;
                continue;
            }
            None => (
                vec![Status::Retry; records.len()],
                vec![None; records.len()],
            ),
        };
        drop(lease);
        // The dashboard's stream: each record up to the first retry (the rest wait behind it).
        let took = started.elapsed().as_secs_f64() * 1000.0 / records.len() as f64;
        for ((record, status), outcome) in records.iter().zip(&statuses).zip(&outcomes) {
            let shown = super::activity::shown(&record.value);
            engine.activity.delivered(super::activity::Delivery {
                seq: 0,
                at: 0,
                function: f.name.clone(),
                topic: record.topic.clone(),
                id: shown.id,
                event_type: shown.event_type,
                subject: shown.subject,
                outcome: shown_outcome(*status, outcome.as_deref()).to_string(),
                duration_ms: took,
                trace_id: shown.trace_id,
            });
            if *status == Status::Retry {
                break;
            }
        }
        // Finish the prefix that is final; the first retry holds the rest (head of line). A
        // dropped record is final only once its dead-letter copy is stored.
        let mut finished = 0;
        for (record, status) in records.iter().zip(&statuses) {
            match status {
                Status::Retry => break,
                Status::Success => {
                    f.stats.processed.fetch_add(1, Ordering::Relaxed);
                }
                Status::Drop => {
                    if !dead_letter(engine, f, route.as_ref(), record, "dropped by the app").await {
                        break;
                    }
                }
            }
            finished += 1;
        }
        if finished > 0 {
            done.next = Some(records[finished - 1].offset + 1);
            records.drain(..finished);
        }
        if records.is_empty() {
            return true;
        }
        retry += 1;
        // The dead-letter topic itself has no dead-letter topic (as under Dapr): its records
        // are retried until the function records them.
        let own_dead_letters = records[0].topic == f.manifest.delivery.dead_letter_topic;
        if retry > RETRY_BUDGET && !own_dead_letters {
            let mut copied = 0;
            for record in &records {
                if !dead_letter(engine, f, route.as_ref(), record, "retries exhausted").await {
                    break;
                }
                copied += 1;
            }
            if copied > 0 {
                done.next = Some(records[copied - 1].offset + 1);
                records.drain(..copied);
            }
            if records.is_empty() {
                return true;
            }
            // A copy could not be stored: nothing past it is committed; try again.
            retry = RETRY_BUDGET;
        }
        f.stats.retries.fetch_add(1, Ordering::Relaxed);
        done.commit(engine).await;
        let wait = backoff(f, retry);
        tracing::debug!(function = %f.name, topic = %records[0].topic, partition = records[0].partition, offset = records[0].offset, retry, ?wait, "redelivering");
        let mut stop = engine.stopping();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return false,
        }
    }
}

/// Whether the replica behind `lease` exited (it gets a moment: its exit is noticed just
/// after the connection it held breaks).
async fn exited(lease: &Lease) -> bool {
    let mut exited = lease.replica.exited.subscribe();
    tokio::time::timeout(EXIT_NOTICED, exited.wait_for(|e| *e))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Between a replica's death and the next delivery of its records (the engine drops it from
/// rotation meanwhile).
const REBALANCE_PAUSE: Duration = Duration::from_millis(50);

/// How long an unanswered delivery waits to learn whether its replica died.
const EXIT_NOTICED: Duration = Duration::from_secs(1);

/// One delivery of `records` to the lease's replica: each record's status, or `None` when no
/// answer came (the connection failed or broke).
async fn attempt(
    engine: &Engine,
    lease: &Lease,
    route: Option<&Route>,
    records: &[Record],
) -> Option<(Vec<Status>, Vec<Option<String>>)> {
    let addr = lease.replica.addr;
    let first = &records[0];
    let Some(route) = route else {
        return Some((vec![replay(engine, addr, first).await], vec![None]));
    };
    let kafka_headers = |r: &Record| {
        let mut h = vec![
            ("__topic".to_string(), r.topic.clone()),
            ("__partition".to_string(), r.partition.to_string()),
            ("__offset".to_string(), r.offset.to_string()),
            ("__timestamp".to_string(), r.timestamp_ms.to_string()),
        ];
        if let Some(k) = &r.key {
            h.push(("__key".to_string(), k.clone()));
        }
        h
    };
    let url = format!("http://{addr}{}", route.path);
    if let Some(_max) = route.bulk {
        let entries: Vec<Value> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let meta: BTreeMap<String, String> = kafka_headers(r).into_iter().collect();
                match envelope(r, &route.pubsub) {
                    Some(event) => json!({"entryId": i.to_string(), "event": event, "metadata": meta, "contentType": "application/cloudevents+json"}),
                    None => json!({"entryId": i.to_string(), "event": base64::engine::general_purpose::STANDARD.encode(&r.value), "metadata": meta, "contentType": "application/octet-stream"}),
                }
            })
            .collect();
        let body = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "com.dapr.event.sent.bulk",
            "topic": first.topic,
            "pubsubname": route.pubsub,
            "metadata": {},
            "entries": entries,
        });
        let sent = engine
            .client
            .post(&url)
            .header("content-type", "application/json")
            .timeout(DELIVERY_TIMEOUT)
            .body(body.to_string())
            .send()
            .await;
        return match sent {
            Ok(r) => {
                let code = r.status().as_u16();
                let bytes = r.bytes().await.unwrap_or_default();
                Some((
                    bulk_statuses(code, &bytes, records.len()),
                    runtime_outcomes(&bytes, records.len()),
                ))
            }
            Err(_) => None,
        };
    }
    let Some(event) = envelope(first, &route.pubsub) else {
        // daprd cannot decode a non-CloudEvent record: straight to the dead-letter topic.
        return Some((vec![Status::Drop], vec![None]));
    };
    let mut request = engine
        .client
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .timeout(DELIVERY_TIMEOUT)
        .body(event.to_string());
    if let Some(tp) = event.get("traceparent").and_then(Value::as_str) {
        request = request.header("traceparent", tp);
    }
    for (k, v) in kafka_headers(first) {
        request = request.header(k, v);
    }
    match request.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let bytes = r.bytes().await.unwrap_or_default();
            Some((
                vec![single_status(code, &bytes)],
                runtime_outcomes(&bytes, 1),
            ))
        }
        Err(_) => None,
    }
}

/// Replay an asynchronously invoked HTTP request (the gateway's `POST /async/{name}`).
async fn replay(engine: &Engine, addr: std::net::SocketAddr, record: &Record) -> Status {
    let Ok(event) = serde_json::from_slice::<Value>(&record.value) else {
        return Status::Drop;
    };
    let data = &event["data"];
    let method = data["method"].as_str().unwrap_or("POST");
    let path = data["path"].as_str().unwrap_or("/");
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return Status::Drop;
    };
    let body = data["body_base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let mut request = engine
        .client
        .request(method, format!("http://{addr}{path}"))
        .timeout(DELIVERY_TIMEOUT)
        .body(body);
    if let Some(headers) = data["headers"].as_object() {
        for (k, v) in headers {
            if let Some(v) = v.as_str() {
                request = request.header(k.as_str(), v);
            }
        }
    }
    if let Some(tp) = event.get("traceparent").and_then(Value::as_str) {
        request = request.header("traceparent", tp);
    }
    request = request.header("ce-id", event["id"].as_str().unwrap_or_default());
    match request.send().await {
        Ok(r) => async_status(r.status().as_u16()),
        Err(_) => Status::Retry,
    }
}

/// What daprd does when it gives up on a message: publish the original record, unchanged, to
/// the subscription's dead-letter topic.
/// Copy `record` raw to its dead-letter topic, as daprd does; whether the copy is stored
/// (only then may the record's offset be committed).
async fn dead_letter(
    engine: &Engine,
    f: &Function,
    route: Option<&Route>,
    record: &Record,
    why: &str,
) -> bool {
    let topic = route
        .and_then(|r| r.dead_letter_topic.clone())
        .unwrap_or_else(|| f.manifest.delivery.dead_letter_topic.clone());
    let mut headers = record.headers.clone();
    headers.insert("zerofn-dead-letter-reason".into(), why.into());
    headers.insert("zerofn-original-topic".into(), record.topic.clone());
    headers.insert(
        "zerofn-original-offset".into(),
        format!("{}/{}", record.partition, record.offset),
    );
    let copy = NewRecord {
        topic: topic.clone(),
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
    };
    match engine.log.append(vec![copy]).await {
        Ok(_) => {
            f.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(function = %f.name, topic = %record.topic, partition = record.partition, offset = record.offset, dead_letter_topic = %topic, reason = why, "record dead-lettered by the engine");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write to the dead-letter topic; the record stays uncommitted");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_like_dapr_reads_them() {
        assert_eq!(single_status(200, b""), Status::Success);
        assert_eq!(single_status(204, b"not json"), Status::Success);
        assert_eq!(
            single_status(200, br#"{"status":"SUCCESS"}"#),
            Status::Success
        );
        assert_eq!(single_status(200, br#"{"status":"RETRY"}"#), Status::Retry);
        assert_eq!(single_status(200, br#"{"status":"retry"}"#), Status::Retry);
        assert_eq!(single_status(200, br#"{"status":"DROP"}"#), Status::Drop);
        assert_eq!(single_status(404, b""), Status::Drop);
        assert_eq!(single_status(409, b""), Status::Retry);
        assert_eq!(single_status(503, b""), Status::Retry);
        let bulk = bulk_statuses(
            200,
            br#"{"statuses":[{"entryId":"0","status":"SUCCESS"},{"entryId":"2","status":"DROP"},{"entryId":"9","status":"SUCCESS"}]}"#,
            3,
        );
        assert_eq!(bulk, vec![Status::Success, Status::Retry, Status::Drop]);
        assert_eq!(bulk_statuses(200, b"garbage", 2), vec![Status::Retry; 2]);
        assert_eq!(bulk_statuses(404, b"", 2), vec![Status::Drop; 2]);
        assert_eq!(async_status(400), Status::Drop);
        assert_eq!(async_status(429), Status::Retry);
        assert_eq!(async_status(502), Status::Retry);
    }

    #[test]
    fn the_dashboard_shows_what_the_runtime_did_beside_what_dapr_reads() {
        let single = runtime_outcomes(
            br#"{"status":"SUCCESS","outcome":"dead_letter","deadLetterId":"d"}"#,
            1,
        );
        assert_eq!(single, vec![Some("dead_letter".to_string())]);
        assert_eq!(runtime_outcomes(br#"{"status":"SUCCESS"}"#, 1), vec![None]);
        assert_eq!(runtime_outcomes(b"", 1), vec![None]);
        let bulk = runtime_outcomes(
            br#"{"statuses":[{"entryId":"1","status":"SUCCESS","outcome":"duplicate"},{"entryId":"7","status":"SUCCESS","outcome":"duplicate"}]}"#,
            2,
        );
        assert_eq!(bulk, vec![None, Some("duplicate".to_string())]);
        assert_eq!(shown_outcome(Status::Success, None), "applied");
        assert_eq!(
            shown_outcome(Status::Success, Some("duplicate")),
            "duplicate"
        );
        assert_eq!(
            shown_outcome(Status::Success, Some("dead_letter")),
            "dead_letter"
        );
        assert_eq!(shown_outcome(Status::Drop, None), "dropped");
        assert_eq!(shown_outcome(Status::Retry, Some("dead_letter")), "retry");
    }
}
