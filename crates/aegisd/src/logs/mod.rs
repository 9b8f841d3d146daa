//! Instance logs: a bounded in-memory ring per instance for queries and live followers, and an
//! NDJSON file per instance that keeps them across daemon restarts. Removed with the instance.

mod book;
mod lines;

pub use book::{History, InstanceLog, LogFilter, LogSubscription};
pub use lines::LineAssembler;

/// Formats a timestamp the one way logs use: UTC, nanoseconds, `Z`. Fixed width, so string order
/// is time order.
pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// Now, formatted with [`format_ts`].
pub fn now_ts() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

/// Parses an RFC 3339 time into the log timestamp format.
///
/// # Errors
/// When `s` is not RFC 3339.
pub fn parse_since(s: &str) -> Result<String, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(format_ts)
        .map_err(|e| {
            format!("invalid time {s:?} (expected RFC 3339, e.g. 2026-01-31T12:00:00Z): {e}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_text() {
        let a = parse_since("2026-01-31T12:00:00Z").unwrap();
        let b = parse_since("2026-01-31T12:00:00.5+00:00").unwrap();
        let c = parse_since("2026-01-31T13:00:00+02:00").unwrap();
        assert_eq!(a, "2026-01-31T12:00:00.000000000Z");
        assert!(c < a && a < b, "{c} {a} {b}");
        assert!(parse_since("yesterday").is_err());
    }
}
