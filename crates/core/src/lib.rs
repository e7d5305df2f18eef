//! The domain core of tandem: the `tandem.yaml` spec, durations and
//! percentages, journal events and their canonical hash, and the typed
//! protocol spoken between control plane and agent. This crate does no I/O.

pub mod spec;
pub mod units;

pub use spec::{Spec, SpecError};
pub use units::{Duration, Percent};
pub mod access;
pub mod contract;
pub mod journal;
pub mod masking;
pub mod protocol;
pub mod signature;
pub mod slo;
