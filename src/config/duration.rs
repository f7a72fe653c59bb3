//! Human durations in config files: `"30s"`, `"5m"`, `"2h"`, `"7d"`, or combinations like `"1h30m"`.

use std::time::Duration;

/// Parses a duration such as `"5m"` or `"1h30m"`. Units: `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. \"30s\", \"5m\", \"2h\" or \"7d\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration; write e.g. \"30s\", \"5m\", \"2h\" or \"7d\""
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds_per = match unit {
            "ms" => {
                total += Duration::from_millis(number);
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "" => {
                return Err(format!(
                    "`{text}`: missing unit after {number} (ms, s, m, h or d)"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (ms, s, m, h or d)"
                ));
            }
        };
        let secs = number
            .checked_mul(seconds_per)
            .ok_or_else(|| format!("`{text}`: duration too large"))?;
        total += Duration::from_secs(secs);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        let cases = [
            ("30s", 30),
            ("5m", 300),
            ("2h", 7200),
            ("7d", 604800),
            ("1h30m", 5400),
        ];
        for (text, secs) in cases {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            );
        }
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "5", "m5", "5 minutes", "5x", "-5m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

/// Parses a size such as `"512MiB"`, `"8GiB"`, `"100MB"` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let hint = "write e.g. \"512MiB\", \"8GiB\" or a number of bytes";
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("`{text}` is not a size; {hint}"))?;
    let factor: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "TiB" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}` in `{text}`; {hint}")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}`: too large"))
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("8 gigs").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
