//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).
//!
//! Why by hand: four counters and one histogram do not justify a metrics framework; the
//! format is small and stable. Labels are the route *template* (never a raw path, so ids do
//! not explode the series count), the method and the status code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    rate_limited: AtomicU64,
    auth_failures: AtomicU64,
    ledger_appends: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, method: &str, route: &str, status: u16, took: Duration) {
        {
            let mut m = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            *m.entry((method.to_owned(), route.to_owned(), status))
                .or_insert(0) += 1;
        }
        let secs = took.as_secs_f64();
        let mut d = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let h = d.entry(route.to_owned()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts a request refused by the rate limiter.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request with a missing or unknown token.
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts ledger entries appended through the API.
    pub fn ledger_appended(&self, n: u64) {
        self.ledger_appends.fetch_add(n, Ordering::Relaxed);
    }

    /// The text exposition, with the ledger size and readiness gauges given by the caller.
    pub fn render(&self, ledger_size: Option<u64>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP treasury_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE treasury_http_requests_total counter\n");
        {
            let m = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "treasury_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str(
            "# HELP treasury_http_request_duration_seconds Time to the response head, by route.\n",
        );
        out.push_str("# TYPE treasury_http_request_duration_seconds histogram\n");
        {
            let d = self
                .durations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (route, h) in d.iter() {
                let r = escape(route);
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "treasury_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "treasury_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "treasury_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "treasury_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                    h.count
                );
            }
        }
        let counters = [
            (
                "treasury_rate_limited_total",
                "Requests refused by the per-token rate limit.",
                &self.rate_limited,
            ),
            (
                "treasury_auth_failures_total",
                "Requests with a missing or unknown token.",
                &self.auth_failures,
            ),
            (
                "treasury_api_ledger_appends_total",
                "Ledger entries appended by API calls of this instance.",
                &self.ledger_appends,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        if let Some(size) = ledger_size {
            let _ = writeln!(
                out,
                "# HELP treasury_ledger_size Entries in the reserve ledger.\n# TYPE treasury_ledger_size gauge\ntreasury_ledger_size {size}"
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let m = Metrics::default();
        m.record("GET", "/v1/vaults", 200, Duration::from_millis(2));
        m.record("GET", "/v1/vaults", 200, Duration::from_millis(20));
        let t = m.render(Some(7));
        assert!(t.contains(
            "treasury_http_requests_total{method=\"GET\",route=\"/v1/vaults\",status=\"200\"} 2"
        ));
        assert!(t.contains(
            "treasury_http_request_duration_seconds_bucket{route=\"/v1/vaults\",le=\"0.005\"} 1"
        ));
        assert!(t.contains("treasury_ledger_size 7"));
    }
}
