//! A bundle: some of the journal's events, proven to be in the signed log
//! and unaltered, checkable with nothing but the installation's verifier
//! key — no server, no data directory.
//!
//! ```json
//! { "format": "tandem-bundle/1", "customer": "acme", "from": "…", "to": "…",
//!   "checkpoint": "<signed note: origin, size N, root>",
//!   "events": [ …events as journaled, by seq… ],
//!   "proof": [ "<hex>", … ],
//!   "previous": { "checkpoint": "<an earlier signed note>", "proof": [ "<hex>", … ] } }
//! ```
//!
//! `proof` is the batch inclusion proof of all the events at once
//! ([`crate::merkle::Tree::batch_proof`]: the hashes of the largest
//! subtrees holding none of them): the events of others are present only
//! as those hashes. `previous` links the bundle's checkpoint to the one
//! before it (an RFC 6962 consistency proof), so a holder of earlier
//! checkpoints sees the log only grew.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tandem_core::journal::{Event, event_bytes, hex, unhex, unhex32};

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::merkle::{self, Hash};

pub const FORMAT: &str = "tandem-bundle/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub customer: String,
    pub from: String,
    pub to: String,
    pub checkpoint: String,
    pub events: Vec<Event>,
    pub proof: Vec<String>,
    pub previous: Option<Previous>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Previous {
    pub checkpoint: String,
    pub proof: Vec<String>,
}

/// What a bundle was shown to be.
#[derive(Clone, Debug)]
pub struct Verified {
    pub checkpoint: Checkpoint,
    /// The earlier checkpoint the log was shown to extend.
    pub previous: Option<Checkpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a bundle: {0}")]
    Malformed(String),
    #[error("the bundle's checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error("event {seq}: {why}")]
    Event { seq: u64, why: String },
    #[error(
        "the events are not those of the signed log at {size} events: the batch proof does not give its root"
    )]
    NotInLog { size: u64 },
    #[error("the previous checkpoint ({old} events): {why}")]
    Previous { old: u64, why: String },
}

fn hashes(hexes: &[String], what: &str) -> Result<Vec<Hash>, BundleError> {
    hexes
        .iter()
        .map(|h| {
            unhex(h).and_then(|b| b.try_into().ok()).ok_or_else(|| {
                BundleError::Malformed(format!("{what}: {h:?} is not 32 bytes of hex"))
            })
        })
        .collect()
}

/// Each event's own check (its hash from its content) and its leaf hash;
/// the first that fails stops it.
fn leaves_of(events: &[Event]) -> Result<Vec<(u64, Hash)>, BundleError> {
    events
        .iter()
        .map(|e| {
            let fail = |why: String| BundleError::Event { seq: e.seq, why };
            let bytes = event_bytes(e).map_err(|x| fail(format!("cannot be encoded: {x}")))?;
            let computed: Hash = sha2::Sha256::digest(&bytes).into();
            // Lowercase, as tandem writes it (and the Python verifier reads it).
            if e.hash.bytes().any(|b| b.is_ascii_uppercase()) || unhex32(&e.hash) != Some(computed)
            {
                return Err(fail(format!(
                    "content does not match its hash (stored {}, computed {})",
                    e.hash,
                    hex(&computed)
                )));
            }
            Ok((e.seq.wrapping_sub(1), merkle::leaf_hash(&computed)))
        })
        .collect()
}

impl Bundle {
    /// Checks everything a bundle claims with `verifier_key` alone: the
    /// checkpoint's signature, each event's hash from its content, the
    /// links between consecutive events, that the events are in the
    /// signed log (the batch proof), and the previous checkpoint's
    /// consistency.
    pub fn verify(&self, verifier_key: &str) -> Result<Verified, BundleError> {
        // Hashing is the work: on every core, each part in order.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = self.events.len().div_ceil(cores).max(1);
        let parts: Vec<Result<Vec<(u64, Hash)>, BundleError>> = std::thread::scope(|s| {
            let running: Vec<_> = self
                .events
                .chunks(chunk)
                .map(|part| s.spawn(move || leaves_of(part)))
                .collect();
            running
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(BundleError::Malformed("a worker failed".into())))
                })
                .collect()
        });
        self.verify_with(verifier_key, parts)
    }

    /// The checks, given each part's leaves (or its first bad event).
    fn verify_with(
        &self,
        verifier_key: &str,
        parts: Vec<Result<Vec<(u64, Hash)>, BundleError>>,
    ) -> Result<Verified, BundleError> {
        if self.format != FORMAT {
            return Err(BundleError::Malformed(format!(
                "format {:?}, expected {FORMAT}",
                self.format
            )));
        }
        let cp =
            checkpoint::open(&self.checkpoint, verifier_key).map_err(BundleError::Checkpoint)?;
        let mut last: Option<&Event> = None;
        for e in &self.events {
            let fail = |why: String| BundleError::Event { seq: e.seq, why };
            if e.seq == 0 || e.seq > cp.size {
                return Err(fail(format!("not in a log of {} events", cp.size)));
            }
            if let Some(p) = last {
                if e.seq <= p.seq {
                    return Err(fail(format!("after event {}: out of order", p.seq)));
                }
                if e.seq == p.seq + 1 && e.prev != p.hash {
                    return Err(fail(format!("its prev is not event {}'s hash", p.seq)));
                }
            }
            last = Some(e);
        }
        let mut leaves = Vec::with_capacity(self.events.len());
        for part in parts {
            leaves.extend(part?);
        }
        let proof = hashes(&self.proof, "proof")?;
        if merkle::batch_root(cp.size, &leaves, &proof) != Some(cp.root) {
            return Err(BundleError::NotInLog { size: cp.size });
        }
        let previous = match &self.previous {
            None => None,
            Some(p) => {
                let old = checkpoint::open(&p.checkpoint, verifier_key).map_err(|e| {
                    BundleError::Previous {
                        old: 0,
                        why: e.to_string(),
                    }
                })?;
                let proof = hashes(&p.proof, "previous proof")?;
                if !merkle::verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof) {
                    return Err(BundleError::Previous {
                        old: old.size,
                        why: format!("the log at {} events does not extend it", cp.size),
                    });
                }
                Some(old)
            }
        };
        Ok(Verified {
            checkpoint: cp,
            previous,
        })
    }
}

/// Hex of hashes, for a bundle.
pub fn to_hex(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| hex(h)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LogKey;
    use crate::merkle::Tree;
    use tandem_core::journal::{GENESIS, NewEvent, seal};

    /// A journal of `n` events, and a bundle of those at `picked` (0-based).
    fn bundle(n: u64, picked: &[u64]) -> (Bundle, String) {
        let key = LogKey::from_seed("tandem/test", &[3; 32]).expect("key");
        let mut prev = GENESIS.to_owned();
        let mut events = Vec::new();
        for seq in 1..=n {
            let new = NewEvent::new("user:ann", "thing.done")
                .subject("service", if seq % 2 == 0 { "shop" } else { "blog" })
                .payload(serde_json::json!({ "n": seq, "note": "é\u{1}" }));
            let e = seal(seq, "2026-11-01T00:00:00.000Z".into(), new, &prev).expect("seal");
            prev = e.hash.clone();
            events.push(e);
        }
        let tree = Tree::new(
            events
                .iter()
                .map(|e| merkle::leaf_hash(&unhex(&e.hash).expect("hex")))
                .collect(),
        );
        let proof = tree.batch_proof(picked, n);
        (
            Bundle {
                format: FORMAT.into(),
                customer: "acme".into(),
                from: "2026-11-01".into(),
                to: "2026-12-01".into(),
                checkpoint: key.sign(n, tree.root(n)).expect("sign"),
                events: picked.iter().map(|i| events[*i as usize].clone()).collect(),
                proof: to_hex(&proof),
                previous: None,
            },
            key.verifier_key().to_owned(),
        )
    }

    #[test]
    fn a_bundle_read_back_verifies_and_a_bad_event_is_named() {
        // More events than one part, so every core has some.
        let picked: Vec<u64> = (0..10_000).filter(|i| i % 3 != 0).collect();
        let (b, key) = bundle(10_000, &picked);
        let text = serde_json::to_vec(&b).expect("json");
        let read: Bundle = serde_json::from_slice(&text).expect("read");
        assert_eq!(read.events.len(), picked.len());
        assert_eq!(read.verify(&key).expect("verified").checkpoint.size, 10_000);

        // An event changed deep inside: named.
        let mut bad = b.clone();
        bad.events[5000].actor = "user:mallory".into();
        let seq = bad.events[5000].seq;
        match bad.verify(&key) {
            Err(BundleError::Event { seq: s, .. }) => assert_eq!(s, seq),
            other => panic!("{other:?}"),
        }
        // An event left out: the proof no longer gives the root.
        let mut short = b.clone();
        short.events.remove(10);
        assert!(matches!(
            short.verify(&key),
            Err(BundleError::NotInLog { .. })
        ));
        // A hash in capitals is not the one tandem wrote (nor one the
        // Python verifier takes).
        let mut shouting = b;
        shouting.events[0].hash = shouting.events[0].hash.to_uppercase();
        assert!(matches!(
            shouting.verify(&key),
            Err(BundleError::Event { .. })
        ));
    }

    #[test]
    fn a_bundle_of_no_events_verifies_with_the_root_as_its_proof() {
        let (empty, key) = bundle(10, &[]);
        assert_eq!(empty.proof.len(), 1, "the whole tree as one gap");
        assert_eq!(empty.verify(&key).expect("verified").checkpoint.size, 10);
        let (mut wrong, _) = bundle(10, &[]);
        wrong.proof = vec![hex(&[0; 32])];
        assert!(matches!(
            wrong.verify(&key),
            Err(BundleError::NotInLog { .. })
        ));
    }
}
