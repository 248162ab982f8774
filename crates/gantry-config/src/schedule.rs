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
        Ok(Cron {
            minutes: sets[0],
            hours: u32::try_from(sets[1]).unwrap_or(u32::MAX),
            days: u32::try_from(sets[2]).unwrap_or(u32::MAX),
            months: u16::try_from(sets[3]).unwrap_or(u16::MAX),
            weekdays: u8::try_from(weekdays).unwrap_or(u8::MAX),
            days_restricted: !fields[2].starts_with('*'),
            weekdays_restricted: !fields[4].starts_with('*'),
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }

    /// The first whole minute after `after_ms` that every field allows;
    /// at most eight years on (a 29th of February on a Monday comes).
    fn next_after(&self, after_ms: u64) -> u64 {
        const DAY_MS: u64 = 86_400_000;
        let mut minute = after_ms / 60_000 + 1;
        let limit = minute + 8 * 366 * 24 * 60;
        while minute < limit {
            let days = minute / (24 * 60);
            let (_, month, day) = civil(days);
            let weekday = u32::try_from((days + 4) % 7).unwrap_or(0);
            if self.months & (1 << month) == 0 || !self.day_matches(day, weekday) {
                minute = (days + 1) * (DAY_MS / 60_000);
                continue;
            }
            let of_day = minute % (24 * 60);
            let (hour, min) = (of_day / 60, of_day % 60);
            if self.hours & (1 << hour) == 0 {
                minute += 60 - min;
                continue;
            }
            if self.minutes & (1 << min) != 0 {
                return minute * 60_000;
            }
            minute += 1;
        }
        u64::MAX
    }
}

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
}
