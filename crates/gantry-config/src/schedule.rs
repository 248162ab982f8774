//! When something recurring runs (a service's `backup.schedule`): either an
//! interval, `every 6h` (from the previous run, or from when the agent
//! first saw the schedule), or cron's five fields, `0 3 * * *`, read in UTC.
//! One parser for the config's check and for the agent that keeps it.

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// `every DURATION`: runs this many milliseconds apart.
    Every { ms: u64 },
    /// Cron's fields, each as the set of values it allows.
    Cron(Box<Cron>),
}

/// Cron's five fields as bit sets (bit n set: value n allowed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether day-of-month and day-of-week were each restricted (not `*`):
    /// when both are, a day matching either runs, as cron does.
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// The shortest interval `every` accepts: backups closer than this would
/// pile up behind each other.
pub const MIN_EVERY_MS: u64 = 1_000;

impl Schedule {
    /// Reads `every 30m` or a cron line; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("every ") {
            let duration: crate::units::Duration = rest
                .trim()
                .parse()
                .map_err(|e: crate::units::UnitError| format!("`{rest}`: {e}"))?;
            let ms = duration.as_millis();
            if ms < MIN_EVERY_MS {
                return Err(format!("`{text}` is shorter than a second"));
            }
            return Ok(Schedule::Every { ms });
        }
        Cron::parse(text).map(|c| Schedule::Cron(Box::new(c)))
    }

    /// The first time (Unix ms) it runs strictly after `after_ms`. For an
    /// interval, `after_ms` is the previous run.
    pub fn next_after(&self, after_ms: u64) -> u64 {
        match self {
            Schedule::Every { ms } => after_ms.saturating_add(*ms),
            Schedule::Cron(cron) => cron.next_after(after_ms),
        }
    }
}

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// One field's allowed values as a bit set.
fn field(text: &str, what: &str, min: u32, max: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => match step.parse::<u32>() {
                Ok(n) if n > 0 => (range, n),
                _ => return Err(format!("the {what} step `{step}` is not a positive number")),
            },
            None => (item, 1),
        };
        let number = |bound: &str| match bound.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "the {what} `{bound}` is not a number from {min} to {max}"
            )),
        };
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                // `5/15` means from 5 to the end, every 15.
                None if step > 1 => (number(range)?, max),
                None => (number(range)?, number(range)?),
            },
        };
        if from > to {
            return Err(format!("the {what} range `{range}` runs backwards"));
        }
        for n in (from..=to).step_by(step as usize) {
            bits |= 1 << n;
        }
    }
    Ok(bits)
}

impl Cron {
    fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != FIELDS.len() {
            return Err(format!(
                "`{text}` has {} fields: write cron's 5 (minute hour day-of-month month day-of-week), or `every DURATION`",
                fields.len()
            ));
        }
        let mut sets = [0u64; 5];
        for ((set, text), (what, min, max)) in sets.iter_mut().zip(&fields).zip(FIELDS) {
            *set = field(text, what, min, max)?;
        }
        // Sunday is 0 or 7.
        let weekdays = (sets[4] | (sets[4] >> 7)) & 0x7f;
        let cron = Cron {
            minutes: sets[0],
            hours: u32::try_from(sets[1]).unwrap_or(u32::MAX),
            days: u32::try_from(sets[2]).unwrap_or(u32::MAX),
            months: u16::try_from(sets[3]).unwrap_or(u16::MAX),
            weekdays: u8::try_from(weekdays).unwrap_or(u8::MAX),
            days_restricted: !fields[2].starts_with('*'),
            weekdays_restricted: !fields[4].starts_with('*'),
        };
        if cron.first_day_from(0).is_none() {
            return Err(format!(
                "`{text}` never runs: no date has the day of the month, month and day of the week it names"
            ));
        }
        Ok(cron)
    }

    fn day_allowed(&self, days: u64) -> bool {
        let (_, month, day) = civil(days);
        let weekday = u32::try_from((days + 4) % 7).unwrap_or(0);
        self.months & (1 << month) != 0 && self.day_matches(day, weekday)
    }

    /// The first day (since 1970-01-01) from `days` on that the date
    /// fields allow. The calendar repeats every 400 years, weekdays and
    /// all (146,097 days, a whole number of weeks), so a day that never
    /// comes in that span never comes: the search is bounded by it.
    fn first_day_from(&self, days: u64) -> Option<u64> {
        (days..days + CALENDAR_CYCLE_DAYS).find(|&d| self.day_allowed(d))
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }

    /// The first whole minute after `after_ms` that every field allows
    /// (`u64::MAX` if none, which `parse` never lets through). Bounded: one
    /// step a day to the first day allowed ([`Self::first_day_from`]), then
    /// at most a day's hours and an hour's minutes; every field allows at
    /// least one hour and minute, so the second allowed day, if the first
    /// has no minute left, has its first.
    fn next_after(&self, after_ms: u64) -> u64 {
        const DAY_MINUTES: u64 = 24 * 60;
        let mut minute = after_ms / 60_000 + 1;
        for _ in 0..2 {
            let today = minute / DAY_MINUTES;
            let Some(day) = self.first_day_from(today) else {
                return u64::MAX;
            };
            if day > today {
                minute = day * DAY_MINUTES;
            }
            while minute < (day + 1) * DAY_MINUTES {
                let of_day = minute % DAY_MINUTES;
                let (hour, min) = (of_day / 60, of_day % 60);
                if self.hours & (1 << hour) == 0 {
                    minute += 60 - min;
                } else if self.minutes & (1 << min) != 0 {
                    return minute.saturating_mul(60_000);
                } else {
                    minute += 1;
                }
            }
        }
        u64::MAX
    }
}

/// The Gregorian calendar's period: 400 years, 20,871 weeks.
const CALENDAR_CYCLE_DAYS: u64 = 146_097;

/// The (year, month, day) of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
pub fn civil(days: u64) -> (i64, u32, u32) {
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06T18:30:00Z (a Sunday).
    const SUNDAY: u64 = 1_796_581_800_000;

    #[test]
    fn intervals_count_from_the_previous_run() {
        assert_eq!(
            Schedule::parse("every 6h"),
            Ok(Schedule::Every { ms: 21_600_000 })
        );
        assert_eq!(
            Schedule::parse("every 2s").map(|s| s.next_after(1000)),
            Ok(3000)
        );
        assert!(Schedule::parse("every 500ms").is_err());
        assert!(Schedule::parse("every often").is_err());
    }

    #[test]
    fn cron_finds_the_next_minute_in_utc() {
        assert_eq!(civil(SUNDAY / 86_400_000), (2026, 12, 6));
        let at = |text: &str| Schedule::parse(text).map(|s| s.next_after(SUNDAY));
        // 03:00 the next day.
        assert_eq!(at("0 3 * * *"), Ok(SUNDAY + (8 * 60 + 30) * 60_000));
        // Every 15 minutes: 18:45.
        assert_eq!(at("*/15 * * * *"), Ok(SUNDAY + 15 * 60_000));
        // Mondays at 00:00: 5.5 hours on.
        assert_eq!(at("0 0 * * 1"), Ok(SUNDAY + 330 * 60_000));
        // Sundays as 7: 19:00 today.
        assert_eq!(at("0 19 * * 7"), Ok(SUNDAY + 30 * 60_000));
        // The 1st of January, 2027.
        assert_eq!(
            at("0 0 1 1 *").map(|ms| civil(ms / 86_400_000)),
            Ok((2027, 1, 1))
        );
    }

    #[test]
    fn bad_cron_lines_say_why() {
        for bad in [
            "0 3 * *",
            "60 3 * * *",
            "0 3 * * mon",
            "*/0 3 * * *",
            "5-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert!(Schedule::parse("*/15 0-6 1,15 * 1-5").is_ok());
    }

    #[test]
    fn a_cron_line_no_date_matches_is_refused_and_a_rare_one_is_found() {
        for never in [
            "0 0 31 2 *",
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 31 2 */7",
        ] {
            let error = Schedule::parse(never).expect_err(never);
            assert!(error.contains("never runs"), "{never}: {error}");
        }
        // The 29th of February comes once in four years, and as a Sunday
        // (`*/7`: Sundays, and the day of the month must match too) once
        // in 28: far past the eight years the search once gave up after.
        let sunday = Schedule::parse("0 0 29 2 */7").unwrap_or_else(|e| panic!("{e}"));
        let first = sunday.next_after(SUNDAY);
        assert_eq!(civil(first / 86_400_000), (2032, 2, 29));
        assert_eq!(civil(sunday.next_after(first) / 86_400_000), (2060, 2, 29));
    }
}
