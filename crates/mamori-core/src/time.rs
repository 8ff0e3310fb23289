//! Time as plain values: a UTC [`Timestamp`] in microseconds, the [`Clock`]
//! trait through which every "now" is obtained, and FHIR date/dateTime
//! parsing into half-open ranges (used by validation and search).
//!
//! Nothing here reads the system clock except [`SystemClock`]; tests move a
//! [`ManualClock`] instead of sleeping.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Microseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// Microseconds in one second.
pub const MICROS_PER_SEC: i64 = 1_000_000;

impl Timestamp {
    /// The timestamp `s` seconds after the epoch (saturating).
    pub fn from_secs(s: i64) -> Self {
        Timestamp(s.saturating_mul(MICROS_PER_SEC))
    }
    /// Microseconds since the Unix epoch.
    pub fn micros(self) -> i64 {
        self.0
    }
    /// Whole seconds since the Unix epoch, rounded down.
    pub fn secs(self) -> i64 {
        self.0.div_euclid(MICROS_PER_SEC)
    }
    /// This timestamp moved by `s` seconds (negative: earlier), saturating.
    pub fn plus_secs(self, s: i64) -> Self {
        Timestamp(self.0.saturating_add(s.saturating_mul(MICROS_PER_SEC)))
    }
    /// RFC 3339 / FHIR `instant` with millisecond precision and `Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", sod / 3600, (sod / 60) % 60, sod % 60, micros / 1000)
    }
    /// The calendar date (UTC) as `YYYYMMDD`, used for provisional ids.
    pub fn ymd(self) -> (i64, u32, u32) {
        civil_from_days(self.secs().div_euclid(86_400))
    }
    /// Parses an RFC 3339 timestamp with a time zone (a FHIR `instant`).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let r = parse_date_time(s)?;
        if r.precision != Precision::Second || !r.has_tz {
            return None;
        }
        Some(Timestamp(r.low))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Where "now" comes from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's real-time clock: the one clock of a running server.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to: for tests of expiry and rotation.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.0)))
    }
    /// Moves the clock forward by `s` seconds (backward if negative).
    pub fn advance_secs(&self, s: i64) {
        self.0.fetch_add(s * MICROS_PER_SEC, Ordering::SeqCst);
    }
    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let d = i64::from(d);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a day count since
/// 1970-01-01 (the inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// How much of a date/dateTime was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// `YYYY`.
    Year,
    /// `YYYY-MM`.
    Month,
    /// `YYYY-MM-DD`.
    Day,
    /// `hh:mm` without seconds (search values only).
    Minute,
    /// Seconds, with or without a fraction.
    Second,
}

/// A FHIR date/dateTime/instant as the half-open interval `[low, high)` of
/// microseconds it denotes. Values without a zone are read as UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateRange {
    /// Start of the interval, inclusive (microseconds since the epoch, UTC).
    pub low: i64,
    /// End of the interval, exclusive (microseconds since the epoch, UTC).
    pub high: i64,
    /// How much of the value was given (determines the interval's width).
    pub precision: Precision,
    /// Whether the value had a time zone (`Z` or `±hh:mm`).
    pub has_tz: bool,
}

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm(:ss(.f+)?)?(Z|±hh:mm)?`.
/// Minute precision is accepted for search values only (`allow_minutes`).
pub fn parse_date_time(s: &str) -> Option<DateRange> {
    parse_date_time_inner(s, false)
}

/// As [`parse_date_time`], also accepting `hh:mm` without seconds (search values).
pub fn parse_search_date(s: &str) -> Option<DateRange> {
    parse_date_time_inner(s, true)
}

fn parse_date_time_inner(s: &str, allow_minutes: bool) -> Option<DateRange> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let y = i64::from(digits(parts.next()?, 4)?);
    let m = parts.next().map(|p| digits(p, 2)).unwrap_or(Some(0))?;
    let d = parts.next().map(|p| digits(p, 2)).unwrap_or(Some(0))?;
    if parts.next().is_some() {
        return None;
    }
    if m > 12 || (m == 0 && d != 0) {
        return None;
    }
    if m != 0 && (d > days_in_month(y, m)) {
        return None;
    }
    let day_us = 86_400 * MICROS_PER_SEC;
    let Some(time) = time else {
        if m == 0 {
            let low = days_from_civil(y, 1, 1) * day_us;
            let high = days_from_civil(y + 1, 1, 1) * day_us;
            return Some(DateRange { low, high, precision: Precision::Year, has_tz: false });
        }
        if d == 0 {
            let low = days_from_civil(y, m, 1) * day_us;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let high = days_from_civil(ny, nm, 1) * day_us;
            return Some(DateRange { low, high, precision: Precision::Month, has_tz: false });
        }
        let low = days_from_civil(y, m, d) * day_us;
        return Some(DateRange { low, high: low + day_us, precision: Precision::Day, has_tz: false });
    };
    if d == 0 {
        return None;
    }
    // Split off the zone.
    let (clock, tz_off_secs, has_tz) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64, true)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = z.get(1..)?.split_once(':')?;
        let hh = i64::from(digits(hh, 2)?);
        let mm = i64::from(digits(mm, 2)?);
        if hh > 14 || mm > 59 {
            return None;
        }
        (c, sign * (hh * 3600 + mm * 60), true)
    } else {
        (time, 0, false)
    };
    let mut hms = clock.split(':');
    let hh = i64::from(digits(hms.next()?, 2)?);
    let mi = i64::from(digits(hms.next()?, 2)?);
    let sec_part = hms.next();
    if hms.next().is_some() || hh > 23 || mi > 59 {
        return None;
    }
    let (ss, frac_us, precision) = match sec_part {
        None if allow_minutes => (0, 0, Precision::Minute),
        None => return None,
        Some(sp) => {
            let (ss, frac) = match sp.split_once('.') {
                Some((a, f)) => (a, Some(f)),
                None => (sp, None),
            };
            let ss = i64::from(digits(ss, 2)?);
            if ss > 60 {
                return None;
            }
            let frac_us = match frac {
                None => 0,
                Some(f) => {
                    if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    let mut v: i64 = 0;
                    for (i, b) in f.bytes().take(6).enumerate() {
                        v += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
                    }
                    v
                }
            };
            (ss.min(59), frac_us, Precision::Second)
        }
    };
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mi * 60 + ss - tz_off_secs;
    let low = secs * MICROS_PER_SEC + frac_us;
    let width = if precision == Precision::Minute {
        60 * MICROS_PER_SEC
    } else if sec_part.is_some_and(|p| p.contains('.')) {
        1
    } else {
        MICROS_PER_SEC
    };
    Some(DateRange { low, high: low + width, precision, has_tz })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp(1_795_685_214_123_000);
        let s = t.to_rfc3339();
        assert_eq!(s, "2026-11-26T09:26:54.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn civil_round_trip_over_centuries() {
        for z in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn date_precisions() {
        let y = parse_date_time("2024").unwrap();
        assert_eq!(y.precision, Precision::Year);
        assert_eq!(y.high - y.low, 366 * 86_400 * MICROS_PER_SEC);
        let m = parse_date_time("2023-02").unwrap();
        assert_eq!(m.high - m.low, 28 * 86_400 * MICROS_PER_SEC);
        let d = parse_date_time("2024-02-29").unwrap();
        assert_eq!(d.high - d.low, 86_400 * MICROS_PER_SEC);
        let t = parse_date_time("2024-02-29T09:00:00+09:00").unwrap();
        let u = parse_date_time("2024-02-29T00:00:00Z").unwrap();
        assert_eq!(t.low, u.low);
    }

    #[test]
    fn bad_dates_rejected() {
        for s in [
            "",
            "24",
            "2024-13",
            "2023-02-29",
            "2024-1-01",
            "2024-01-01T",
            "2024-01-01T25:00:00Z",
            "2024-01-01T10:00Z",
            "2024-01-01T10:00:00+9:00",
            "2024-01-01T10:00:00.Z",
            "abcd",
            "2024-00-01",
        ] {
            assert!(parse_date_time(s).is_none(), "{s} should be rejected");
        }
        assert!(parse_search_date("2024-01-01T10:00Z").is_some());
    }
}
