//! When a quota's or a budget's count starts again: the bounds of the period that holds a
//! moment ([`Period::bounds`]), in seconds since the Unix epoch, UTC.

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use crate::config::Period;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;
/// 1970-01-01 was a Thursday: the first Monday came four days later.
const FIRST_MONDAY: u64 = 4 * DAY;

impl Period {
    /// The period that holds `unix` (seconds since the Unix epoch, UTC): its start and its end,
    /// in the same seconds.
    pub fn bounds(self, unix: u64) -> (u64, u64) {
        let span = |len: u64, offset: u64| {
            let start = unix.saturating_sub(offset) / len * len + offset.min(unix);
            (start, start + len)
        };
        match self {
            Period::Hour => span(HOUR, 0),
            Period::Day => span(DAY, 0),
            // Before the first Monday (never, after 1970) the week is taken from the epoch.
            Period::Week => span(WEEK, FIRST_MONDAY),
            Period::Every(d) => span(d.as_secs().max(1), 0),
            Period::Month => month(unix).unwrap_or_else(|| span(DAY, 0)),
        }
    }
}

/// The UTC calendar month that holds `unix`; jiff knows the months' lengths.
fn month(unix: u64) -> Option<(u64, u64)> {
    let at = Timestamp::from_second(i64::try_from(unix).ok()?).ok()?;
    let first = at.to_zoned_datetime(TimeZone::UTC).date().first_of_month();
    let next = first.checked_add(Span::new().months(1)).ok()?;
    let second = |d: jiff::civil::Date| {
        let s = d
            .to_zoned_datetime(TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_second();
        u64::try_from(s).ok()
    };
    Some((second(first)?, second(next)?))
}
