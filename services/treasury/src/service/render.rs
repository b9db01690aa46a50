//! English text for people: timestamps and the policy's verdict in plain words.
//!
//! Why one place: the CLI prints these lines and the API returns them in JSON (`verdict`);
//! writing them once keeps the two doors saying the same thing.

use policies::evaluate::Evaluation;

/// `ms` (Unix milliseconds) as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn shortfalls(s: &[policies::evaluate::Shortfall]) -> String {
    s.iter()
        .map(|x| {
            format!(
                "{} more approval{} from {} ({} of that group required)",
                x.more,
                if x.more == 1 { "" } else { "s" },
                x.group,
                x.k
            )
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The policy's verdict in plain words: allowed (and from when), denied (every reason), or
/// pending with exactly what is missing.
pub fn verdict_text(e: &Evaluation, now_ms: i64) -> String {
    use policies::evaluate::Missing;
    use policies::Decision;
    match &e.decision {
        Decision::Allow { ready_at_ms } if *ready_at_ms <= now_ms => {
            "allowed: the quorum is met and any delay has passed; ready to sign".into()
        }
        Decision::Allow { ready_at_ms } => format!(
            "allowed after a delay: the quorum is met; signing may start at {} ({ready_at_ms} ms)",
            utc(*ready_at_ms)
        ),
        Decision::Deny { reasons } => format!(
            "denied: {}",
            reasons
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Decision::Pending { missing } => {
            let mut parts = Vec::new();
            for m in missing {
                match m {
                    Missing::Approvals { alternatives } => {
                        let alts: Vec<String> =
                            alternatives.iter().map(|a| shortfalls(a)).collect();
                        parts.push(format!("needs {}", alts.join(", or ")));
                    }
                    Missing::DelayAfterQuorum { secs } => {
                        parts.push(format!(
                            "then a delay of {} h after the quorum",
                            secs / 3600
                        ));
                    }
                }
            }
            format!("pending: {}", parts.join("; "))
        }
    }
}
