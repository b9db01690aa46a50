//! The system clock in milliseconds since the Unix epoch.
//!
//! Why its own file: the CLI, the API and the services all stamp times with it, and the
//! services take the time as an argument ([`crate::service::spend::At`]) so tests can move it;
//! this is the one place that reads the system clock for them.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
