//! When an experiment (a planned outage, typically) may run: a start time (`at`), a recurrence
//! (`every`, anchored at `at`), weekly windows (`window = ["Mon-Fri 10:00-16:00"]`) and blackout
//! dates (`blackout = ["2026-12-24/2026-12-27"]`). All times are UTC. A start is allowed only if
//! the whole run, up to its hard maximum duration, fits inside one window and touches no blackout,
//! so an outage can never spill into the hours or days it must not touch.

use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// How far ahead a start is searched for.
const HORIZON: Duration = Duration::from_secs(400 * DAY);

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub text: String,
    #[serde(skip)]
    days: [bool; 7],
    #[serde(skip)]
    start_s: u64,
    #[serde(skip)]
    end_s: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Blackout {
    pub text: String,
    #[serde(skip)]
    start: SystemTime,
    #[serde(skip)]
    end: SystemTime,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Schedule {
    #[serde(serialize_with = "ser_time")]
    pub at: Option<SystemTime>,
    #[serde(serialize_with = "ser_dur")]
    pub every: Option<Duration>,
    pub windows: Vec<Window>,
    pub blackouts: Vec<Blackout>,
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::model::rfc3339(*t)),
        None => s.serialize_none(),
    }
}

fn ser_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&humantime::format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// `2026-12-01T14:00:00Z` (UTC; fractions allowed).
pub fn parse_at(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(s.trim())
        .map_err(|e| format!("{s:?} is not an RFC 3339 UTC time such as 2026-12-01T14:00:00Z: {e}"))
}

fn parse_date(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(&format!("{}T00:00:00Z", s.trim()))
        .map_err(|_| format!("{s:?} is not a date such as 2026-12-24"))
}

fn parse_hhmm(s: &str) -> Result<u64, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a time such as 10:00"))?;
    let h: u64 = h.parse().map_err(|_| format!("bad hour in {s:?}"))?;
    let m: u64 = m.parse().map_err(|_| format!("bad minute in {s:?}"))?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day (00:00 to 24:00)"));
    }
    Ok(h * 3600 + m * 60)
}

fn day_index(s: &str) -> Result<usize, String> {
    let l = s.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| l.starts_with(d) && d.len() <= l.len() && l.len() <= 9)
        .ok_or_else(|| format!("{s:?} is not a day (Mon … Sun)"))
}

/// `Mon-Fri 10:00-16:00`, `Sat,Sun 09:00-12:00`, `daily 00:00-06:00` (UTC; no wrap past midnight:
/// write two windows).
pub fn parse_window(s: &str) -> Result<Window, String> {
    let (days_s, times) = s.trim().split_once(' ').ok_or_else(|| {
        format!("window {s:?}: expected DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 10:00-16:00\"")
    })?;
    let mut days = [false; 7];
    let d = days_s.trim().to_ascii_lowercase();
    if d == "daily" || d == "*" {
        days = [true; 7];
    } else {
        for part in d.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day_index(a)?, day_index(b)?);
                    let mut i = a;
                    loop {
                        days[i] = true;
                        if i == b {
                            break;
                        }
                        i = (i + 1) % 7;
                    }
                }
                None => days[day_index(part)?] = true,
            }
        }
    }
    let (a, b) = times
        .trim()
        .split_once('-')
        .ok_or_else(|| format!("window {s:?}: expected a time range such as 10:00-16:00"))?;
    let (start_s, end_s) = (parse_hhmm(a)?, parse_hhmm(b)?);
    if end_s <= start_s {
        return Err(format!(
            "window {s:?}: the end must be after the start (split a window across midnight in two)"
        ));
    }
    Ok(Window {
        text: s.to_string(),
        days,
        start_s,
        end_s,
    })
}

/// `2026-12-24` (that day), `2026-12-24/2026-12-27` (inclusive days) or two RFC 3339 times
/// `A/B` (from A to B).
pub fn parse_blackout(s: &str) -> Result<Blackout, String> {
    let t = s.trim();
    let (start, end) = match t.split_once('/') {
        Some((a, b)) if a.contains('T') || b.contains('T') => (parse_at(a)?, parse_at(b)?),
        Some((a, b)) => (parse_date(a)?, parse_date(b)? + Duration::from_secs(DAY)),
        None => {
            let d = parse_date(t)?;
            (d, d + Duration::from_secs(DAY))
        }
    };
    if end <= start {
        return Err(format!("blackout {s:?}: the end must be after the start"));
    }
    Ok(Blackout {
        text: s.to_string(),
        start,
        end,
    })
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Schedule {
    /// Why a run from `start` lasting up to `max` may not happen (None: it may).
    pub fn refusal(&self, start: SystemTime, max: Duration) -> Option<String> {
        let end = start + max;
        for b in &self.blackouts {
            if start < b.end && end > b.start {
                return Some(format!("it would overlap the blackout {:?}", b.text));
            }
        }
        if self.windows.is_empty() {
            return None;
        }
        let s = secs(start);
        let weekday = ((s / DAY) + 3) % 7;
        let tod = s % DAY;
        let fits = self.windows.iter().any(|w| {
            w.days[weekday as usize] && tod >= w.start_s && tod + max.as_secs() <= w.end_s
        });
        if fits {
            None
        } else {
            Some(format!(
                "it would not fit (with its maximum duration {}) inside a window ({})",
                humantime::format_duration(max),
                self.windows
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// The first allowed start at or after `now`, or why there is none.
    pub fn next_start(&self, now: SystemTime, max: Duration) -> Result<SystemTime, String> {
        if let Some(every) = self.every {
            let anchor = self.at.unwrap_or(now);
            let first = if anchor >= now {
                0
            } else {
                let behind = now.duration_since(anchor).unwrap_or_default().as_secs_f64();
                (behind / every.as_secs_f64()).ceil() as u32
            };
            for k in first..first.saturating_add(100_000) {
                let t = anchor + every * k;
                if t.duration_since(now).unwrap_or_default() > HORIZON {
                    break;
                }
                if self.refusal(t, max).is_none() {
                    return Ok(t);
                }
            }
            return Err(format!(
                "no occurrence within {} is outside the blackouts and inside a window",
                humantime::format_duration(HORIZON)
            ));
        }
        if let Some(at) = self.at {
            let t = at.max(now);
            return match self.refusal(t, max) {
                None => Ok(t),
                Some(why) => Err(format!(
                    "the scheduled start {} is not allowed: {why}",
                    crate::model::rfc3339(t)
                )),
            };
        }
        if self.refusal(now, max).is_none() {
            return Ok(now);
        }
        // Next whole minute on: windows and blackouts have minute (or day) boundaries.
        let first = secs(now) / 60 * 60 + 60;
        let minutes = HORIZON.as_secs() / 60;
        for m in 0..minutes {
            let t = UNIX_EPOCH + Duration::from_secs(first + m * 60);
            if self.refusal(t, max).is_none() {
                return Ok(t);
            }
        }
        Err(format!(
            "no start within {} is outside the blackouts and inside a window",
            humantime::format_duration(HORIZON)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> SystemTime {
        parse_at(s).unwrap()
    }

    #[test]
    fn windows_blackouts_and_recurrence_pick_the_first_start_the_whole_run_fits() {
        // 2026-12-01 is a Tuesday.
        let s = Schedule {
            windows: vec![parse_window("Mon-Fri 10:00-16:00").unwrap()],
            blackouts: vec![parse_blackout("2026-12-02/2026-12-03").unwrap()],
            ..Default::default()
        };
        let max = Duration::from_secs(30 * 60);
        assert_eq!(
            s.next_start(t("2026-12-01T11:00:00Z"), max).unwrap(),
            t("2026-12-01T11:00:00Z")
        );
        // 15:45 + 30 min spills out of the window: next is Friday (Wed/Thu blacked out) 10:00.
        assert_eq!(
            s.next_start(t("2026-12-01T15:45:00Z"), max).unwrap(),
            t("2026-12-04T10:00:00Z")
        );
        // A Saturday start moves to Monday.
        assert_eq!(
            s.next_start(t("2026-12-05T12:00:00Z"), max).unwrap(),
            t("2026-12-07T10:00:00Z")
        );
        let r = Schedule {
            at: Some(t("2026-12-01T14:00:00Z")),
            every: Some(Duration::from_secs(DAY)),
            blackouts: vec![parse_blackout("2026-12-24/2026-12-27").unwrap()],
            ..Default::default()
        };
        assert_eq!(
            r.next_start(t("2026-12-23T15:00:00Z"), max).unwrap(),
            t("2026-12-28T14:00:00Z")
        );
        let once = Schedule {
            at: Some(t("2026-12-25T14:00:00Z")),
            blackouts: r.blackouts.clone(),
            ..Default::default()
        };
        let e = once.next_start(t("2026-12-01T00:00:00Z"), max).unwrap_err();
        assert!(e.contains("blackout"), "{e}");
    }

    #[test]
    fn bad_windows_and_blackouts_say_what_is_wrong() {
        assert!(parse_window("Mon-Fri").unwrap_err().contains("expected"));
        assert!(parse_window("Fri-Mon 10:00-09:00")
            .unwrap_err()
            .contains("after the start"));
        assert!(parse_window("Funday 10:00-11:00")
            .unwrap_err()
            .contains("not a day"));
        let w = parse_window("Fri-Mon 10:00-11:00").unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        assert!(parse_blackout("2026-13-01").is_err());
        assert!(parse_blackout("2026-12-05/2026-12-01").is_err());
    }
}
