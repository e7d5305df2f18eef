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
