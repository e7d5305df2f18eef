//! Human-friendly units used in `tandem.yaml`: durations (`500ms`, `30s`,
//! `10m`, `1h`, `7d`), percentages (`99.95%`) and sizes (`512Mi`, `1G`).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written with a unit: `ms`, `s`, `m`, `h` or `d`.
///
/// Stored as whole milliseconds; `1.5s` is accepted and means 1500 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms)
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(s * 1000)
    }
    pub const fn as_millis(self) -> u64 {
        self.0
    }
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return Err(format!(
                "`{s}` is not a duration; write a number and a unit, e.g. 500ms, 30s, 10m, 1h or 1d"
            ));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{s}` has no unit; write e.g. `{s}s` or `{s}ms`"))?;
        let (number, unit) = s.split_at(split);
        let millis_per_unit: f64 = match unit {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => {
                return Err(format!(
                    "duration `{s}` has unknown unit `{unit}`; use ms, s, m, h or d"
                ));
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("duration `{s}` has a malformed number `{number}`"))?;
        let millis = (value * millis_per_unit).round();
        if !(0.0..=(u64::MAX as f64)).contains(&millis) {
            return Err(format!("duration `{s}` is out of range"));
        }
        Ok(Duration(millis as u64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms != 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)$",
            "description": "A duration with a unit: 500ms, 30s, 10m, 1h, 7d"
        })
    }
}

/// A percentage between 0 and 100 inclusive, written `99.95%`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    pub fn new(value: f64) -> Option<Self> {
        (0.0..=100.0).contains(&value).then_some(Percent(value))
    }
    /// The percentage as written, e.g. 99.95.
    pub fn value(self) -> f64 {
        self.0
    }
    /// The fraction, e.g. 0.9995 (rounded to 12 places: 99.9 / 100 is
    /// 0.9990000000000001 in floating point).
    pub fn ratio(self) -> f64 {
        (self.0 * 1e10).round() / 1e12
    }
}

impl FromStr for Percent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let number = s
            .strip_suffix('%')
            .ok_or_else(|| format!("percentage `{s}` must end with `%`, e.g. `{s}%`"))?;
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("percentage `{s}` is not a number"))?;
        Percent::new(value).ok_or_else(|| format!("percentage `{s}` must be between 0% and 100%"))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?%$",
            "description": "A percentage, e.g. 99.95%"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("1.5s", 1_500),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
        ];
        for (text, ms) in cases {
            assert_eq!(
                text.parse::<Duration>().map(Duration::as_millis),
                Ok(ms),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_without_or_with_bad_unit_are_rejected_with_a_hint() {
        assert!(
            "30".parse::<Duration>()
                .expect_err("rejected")
                .contains("`30s`")
        );
        assert!(
            "30x"
                .parse::<Duration>()
                .expect_err("rejected")
                .contains("unknown unit `x`")
        );
        for word in ["s", "yes", "", "-5s"] {
            let e = word.parse::<Duration>().expect_err(word);
            assert!(e.contains("is not a duration"), "{word}: {e}");
        }
    }

    #[test]
    fn durations_display_in_the_largest_exact_unit() {
        assert_eq!(Duration::from_millis(90_000).to_string(), "90s");
        assert_eq!(Duration::from_millis(120_000).to_string(), "2m");
        assert_eq!(Duration::from_millis(1_500).to_string(), "1500ms");
    }

    #[test]
    fn percentages_parse_and_are_bounded() {
        assert_eq!("99.95%".parse::<Percent>().map(Percent::value), Ok(99.95));
        assert!(
            "99.95"
                .parse::<Percent>()
                .expect_err("rejected")
                .contains("end with `%`")
        );
        assert!("101%".parse::<Percent>().is_err());
    }
}

/// A size in bytes, written with a unit: `Ki`, `Mi`, `Gi` (powers of 1024)
/// or `K`, `M`, `G` (powers of 1000); a bare number is bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(u64);

impl Bytes {
    pub const fn from_bytes(n: u64) -> Self {
        Bytes(n)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Bytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 512Mi, 1Gi or 64M"))?;
        let scale: u64 = match unit {
            "" => 1,
            "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            _ => {
                return Err(format!(
                    "size `{s}` has unknown unit `{unit}`; use Ki, Mi, Gi (or K, M, G)"
                ));
            }
        };
        n.checked_mul(scale)
            .map(Bytes)
            .ok_or_else(|| format!("size `{s}` is out of range"))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if self.0 != 0 && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Bytes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bytes".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(Ki|Mi|Gi|K|M|G)?$",
            "description": "A size: 512Mi, 1Gi, 64M"
        })
    }
}
