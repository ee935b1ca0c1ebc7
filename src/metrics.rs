//! Prometheus metrics at `GET /metrics` (text format 0.0.4).
//!
//! Calls are counted from the usage records as they are written (the
//! [`ObservingSink`] wraps the store the usage recorder writes to), so the
//! hot path pays nothing and each record counts once, when it is durable.
//! Gauges (queue depths, sessions) are read at scrape time.
//!
//! Label values that callers control (tool names, customers) are capped:
//! past `[metrics] max_label_values` distinct values, the rest count under
//! `other`. Per-customer series exist only with `per_customer = true`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mcp_meter_plugin::ports::{SharedUsageSink, StoreError, UsageOutcome, UsageRecord, UsageSink};
use serde::Deserialize;

/// The label value that stands for every value past the cap.
pub const OTHER: &str = "other";

/// The upper bounds of the call-duration histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Count calls per customer too (`mcp_meter_customer_calls_total`).
    #[serde(default)]
    pub per_customer: bool,
    /// The most distinct values of a caller-controlled label (tool,
    /// customer); the rest count under `other`.
    #[serde(default = "default_max_label_values")]
    pub max_label_values: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            per_customer: false,
            max_label_values: default_max_label_values(),
        }
    }
}

fn default_max_label_values() -> usize {
    200
}

/// One histogram: counts per bucket (not cumulative), the sum and count.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum_us: u64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, duration_us: i64) {
        let micros = u64::try_from(duration_us).unwrap_or(0);
        let seconds = micros as f64 / 1e6;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum_us = self.sum_us.saturating_add(micros);
        self.count += 1;
    }
}

/// What the records said so far.
#[derive(Debug, Default)]
struct Counts {
    calls: BTreeMap<(String, String, &'static str), u64>,
    refusals: BTreeMap<String, u64>,
    durations: BTreeMap<String, Histogram>,
    customers: BTreeMap<String, u64>,
    tools_seen: BTreeSet<String>,
}

/// Reads the usage recorder's counters: queued, written, failed batches.
pub type UsageStats = Box<dyn Fn() -> (u64, u64, u64) + Send + Sync>;

/// The live metrics.
pub struct Metrics {
    config: MetricsConfig,
    counts: Mutex<Counts>,
    usage_stats: Mutex<Option<UsageStats>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Gauges read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Open downstream sessions.
    pub sessions: usize,
    /// Usage records queued, not yet written; records written; failed
    /// batch writes.
    pub usage: Option<(u64, u64, u64)>,
    /// Rows per (queue, status) of the payment queues.
    pub queues: Vec<(&'static str, &'static str, i64)>,
}

impl Metrics {
    /// Metrics with `config`.
    pub fn new(config: MetricsConfig) -> Self {
        Self {
            config,
            counts: Mutex::new(Counts::default()),
            usage_stats: Mutex::new(None),
        }
    }

    /// Lets scrapes read the usage recorder's counters through `stats`.
    pub fn set_usage_stats(&self, stats: UsageStats) {
        if let Ok(mut slot) = self.usage_stats.lock() {
            *slot = Some(stats);
        }
    }

    /// The usage recorder's counters, when it runs.
    pub fn usage_stats(&self) -> Option<(u64, u64, u64)> {
        self.usage_stats
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(|read| read()))
    }

    /// Counts written usage records.
    pub fn observe(&self, records: &[UsageRecord]) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let cap = self.config.max_label_values;
        for record in records {
            let tool = record.tool.clone().unwrap_or_default();
            let tool = if tool.is_empty() || counts.tools_seen.contains(&tool) {
                tool
            } else if counts.tools_seen.len() < cap {
                counts.tools_seen.insert(tool.clone());
                tool
            } else {
                OTHER.to_owned()
            };
            *counts
                .calls
                .entry((record.method.clone(), tool, record.outcome.as_str()))
                .or_default() += 1;
            if record.outcome == UsageOutcome::Refused {
                let reason = record.reason.clone().unwrap_or_else(|| "unknown".into());
                *counts.refusals.entry(reason).or_default() += 1;
            }
            counts
                .durations
                .entry(record.method.clone())
                .or_default()
                .observe(record.duration_us);
            if self.config.per_customer
                && let Some(customer) = &record.customer_id
            {
                let key = customer.to_string();
                let key = if counts.customers.contains_key(&key) || counts.customers.len() < cap {
                    key
                } else {
                    OTHER.to_owned()
                };
                *counts.customers.entry(key).or_default() += 1;
            }
        }
    }

    /// The text exposition with `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let Ok(counts) = self.counts.lock() else {
            return out;
        };
        family(
            &mut out,
            "mcp_meter_calls_total",
            "counter",
            "Calls recorded, by method, tool and outcome.",
        );
        for ((method, tool, outcome), n) in &counts.calls {
            let _ = writeln!(
                out,
                "mcp_meter_calls_total{{method=\"{}\",tool=\"{}\",outcome=\"{}\"}} {n}",
                escape(method),
                escape(tool),
                outcome
            );
        }
        family(
            &mut out,
            "mcp_meter_refusals_total",
            "counter",
            "Calls refused, by reason.",
        );
        for (reason, n) in &counts.refusals {
            let _ = writeln!(
                out,
                "mcp_meter_refusals_total{{reason=\"{}\"}} {n}",
                escape(reason)
            );
        }
        family(
            &mut out,
            "mcp_meter_call_duration_seconds",
            "histogram",
            "Time from a request entering the proxy to its answer, by method.",
        );
        for (method, histogram) in &counts.durations {
            let method = escape(method);
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(histogram.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "mcp_meter_call_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "mcp_meter_call_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "mcp_meter_call_duration_seconds_sum{{method=\"{method}\"}} {}",
                histogram.sum_us as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "mcp_meter_call_duration_seconds_count{{method=\"{method}\"}} {}",
                histogram.count
            );
        }
        if self.config.per_customer {
            family(
                &mut out,
                "mcp_meter_customer_calls_total",
                "counter",
                "Calls recorded, by customer.",
            );
            for (customer, n) in &counts.customers {
                let _ = writeln!(
                    out,
                    "mcp_meter_customer_calls_total{{customer=\"{}\"}} {n}",
                    escape(customer)
                );
            }
        }
        drop(counts);
        render_gauges(&mut out, gauges);
        out
    }
}

fn render_gauges(out: &mut String, gauges: &Gauges) {
    family(
        out,
        "mcp_meter_sessions",
        "gauge",
        "Open downstream sessions.",
    );
    let _ = writeln!(out, "mcp_meter_sessions {}", gauges.sessions);
    if let Some((queued, written, failed)) = gauges.usage {
        family(
            out,
            "mcp_meter_usage_records_queued",
            "gauge",
            "Usage records waiting to be written.",
        );
        let _ = writeln!(out, "mcp_meter_usage_records_queued {queued}");
        family(
            out,
            "mcp_meter_usage_records_written_total",
            "counter",
            "Usage records written.",
        );
        let _ = writeln!(out, "mcp_meter_usage_records_written_total {written}");
        family(
            out,
            "mcp_meter_usage_write_failures_total",
            "counter",
            "Failed usage batch writes.",
        );
        let _ = writeln!(out, "mcp_meter_usage_write_failures_total {failed}");
    }
    if !gauges.queues.is_empty() {
        family(
            out,
            "mcp_meter_queue_rows",
            "gauge",
            "Rows of the payment queues (meter outbox, invoice outbox, webhook events), by status.",
        );
        for (queue, status, n) in &gauges.queues {
            let _ = writeln!(
                out,
                "mcp_meter_queue_rows{{queue=\"{queue}\",status=\"{status}\"}} {n}"
            );
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The usage sink that counts what it writes: wraps the store the usage
/// recorder writes to.
pub struct ObservingSink {
    inner: SharedUsageSink,
    metrics: Arc<Metrics>,
}

impl ObservingSink {
    /// Counts into `metrics` what `inner` writes.
    pub fn new(inner: SharedUsageSink, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl UsageSink for ObservingSink {
    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await?;
        self.metrics.observe(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};

    fn record(tool: &str, outcome: UsageOutcome, reason: Option<&str>, us: i64) -> UsageRecord {
        UsageRecord {
            call_id: CallId::generate(),
            customer_id: Some(CustomerId::new(format!("cus_{tool}"))),
            key_id: None,
            session_id: None,
            method: "tools/call".into(),
            tool: Some(tool.into()),
            started_at: UnixMillis(0),
            duration_us: us,
            bytes_in: 1,
            bytes_out: 1,
            outcome,
            reason: reason.map(str::to_owned),
            units: 1,
        }
    }

    #[test]
    fn calls_refusals_and_durations_are_counted() {
        let metrics = Metrics::new(MetricsConfig::default());
        metrics.observe(&[
            record("echo", UsageOutcome::Ok, None, 800),
            record("echo", UsageOutcome::Ok, None, 30_000),
            record(
                "add",
                UsageOutcome::Refused,
                Some("insufficient_credits"),
                50,
            ),
        ]);
        let text = metrics.render(&Gauges {
            sessions: 3,
            usage: Some((1, 3, 0)),
            queues: vec![("meter", "pending", 2)],
        });
        for line in [
            "mcp_meter_calls_total{method=\"tools/call\",tool=\"echo\",outcome=\"ok\"} 2",
            "mcp_meter_calls_total{method=\"tools/call\",tool=\"add\",outcome=\"refused\"} 1",
            "mcp_meter_refusals_total{reason=\"insufficient_credits\"} 1",
            "mcp_meter_call_duration_seconds_bucket{method=\"tools/call\",le=\"0.001\"} 2",
            "mcp_meter_call_duration_seconds_bucket{method=\"tools/call\",le=\"0.05\"} 3",
            "mcp_meter_call_duration_seconds_count{method=\"tools/call\"} 3",
            "mcp_meter_sessions 3",
            "mcp_meter_queue_rows{queue=\"meter\",status=\"pending\"} 2",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains("customer_calls"),
            "per-customer series are off by default"
        );
    }

    #[test]
    fn caller_controlled_labels_are_capped() {
        let metrics = Metrics::new(MetricsConfig {
            per_customer: true,
            max_label_values: 2,
        });
        let records: Vec<UsageRecord> = ["a", "b", "c", "d\"x"]
            .iter()
            .map(|t| record(t, UsageOutcome::Ok, None, 1))
            .collect();
        metrics.observe(&records);
        let text = metrics.render(&Gauges::default());
        assert!(text.contains("tool=\"other\",outcome=\"ok\"} 2"), "{text}");
        assert!(
            text.contains("mcp_meter_customer_calls_total{customer=\"other\"} 2"),
            "{text}"
        );
        assert!(!text.contains("tool=\"c\""), "{text}");
    }
}
