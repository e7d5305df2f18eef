//! Reports computed from journal events alone, so that the server and a
//! customer holding a bundle of the same events compute the same bytes
//! (canonical JSON, RFC 8785). Each module states its rules in its doc.

pub mod changes;
pub mod dora;
pub mod render;
pub mod sla;
pub mod trace;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    BadInput(String),
    #[error("cannot encode the report: {0}")]
    Encode(String),
}

/// Rounded to 9 places: figures read the same however they were summed.
pub fn r9(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e9).round() / 1e9
    } else {
        x
    }
}

/// A report as canonical JSON (RFC 8785): byte-identical wherever it is
/// computed from the same events.
pub fn canonical<T: serde::Serialize>(report: &T) -> Result<String, ReportError> {
    serde_json_canonicalizer::to_string(report).map_err(|e| ReportError::Encode(e.to_string()))
}

/// Events made up for the tests: only what the reports read.
#[cfg(test)]
pub(crate) mod testing {
    use tandem_core::journal::Event;

    pub fn event(
        seq: u64,
        ts: &str,
        actor: &str,
        kind: &str,
        subject: &[(&str, &str)],
        payload: serde_json::Value,
    ) -> Event {
        Event {
            seq,
            ts: ts.into(),
            actor: actor.into(),
            kind: kind.into(),
            subject: subject
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// `base` with the fields of `extra` added (both objects).
    pub fn merged(base: &serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
        let mut out = base.clone();
        if let (Some(o), serde_json::Value::Object(x)) = (out.as_object_mut(), extra) {
            o.extend(x);
        }
        out
    }
}
