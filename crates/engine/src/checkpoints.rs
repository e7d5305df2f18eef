//! Signed checkpoints of the journal (see `tandem_proof`): made from the
//! events' hashes, signed with the installation's key, recorded in the
//! store and appended to the witness file, a plain file outside the
//! database that anyone may copy (`<data>/checkpoints.log`, 0644).
//!
//! The key is `keys/log.seed` (32 random bytes as hex, made at first use);
//! the log's name, and its key's, is `tandem/` and the first 8 bytes of the
//! public key in hex, so two installations never share one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;
use tandem_core::journal::{hex, unhex};
use tandem_proof::checkpoint::LogKey;
use tandem_proof::merkle::{self, Frontier, Hash, Tree};
use tandem_store::{CheckpointRow, Store, StoreError};

/// The witness file beside the database.
pub const WITNESS_FILE: &str = "checkpoints.log";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log key: {0}")]
    Key(String),
    #[error("event {seq}: its hash {hash:?} is not 64 hex digits")]
    BadHash { seq: u64, hash: String },
    #[error("no checkpoint of {from} events: the journal has {size}")]
    Beyond { from: u64, size: u64 },
    #[error("no signed checkpoint of {0} events (the journal may be empty)")]
    NoCheckpoint(u64),
    #[error(
        "the journal no longer extends the checkpoint signed at {0} events: it is not signed again (`tandem audit verify` and `tandem restore`)"
    )]
    Diverged(u64),
}

/// The journal's tree as far as it was read, and the key that signs it.
pub struct Checkpoints {
    data_dir: PathBuf,
    key: OnceLock<LogKey>,
    /// The tree's right edge and the hash of the last leaf read, to notice
    /// a journal that changed under it.
    read: tokio::sync::Mutex<(Frontier, Option<String>)>,
    /// Held while a whole tree is built (a consistency proof, an export:
    /// ~64 bytes an event): one at a time, so that callers — any signed-in
    /// person may ask — cannot multiply that memory.
    whole: tokio::sync::Mutex<()>,
}

/// A consistency proof from a tree of `from` events to the journal now.
#[derive(Clone, Debug, Serialize)]
pub struct Consistency {
    pub from: u64,
    /// The root of the first `from` events as they stand now (hex).
    pub from_root: String,
    pub size: u64,
    pub root: String,
    /// RFC 6962 PROOF(from, size), hex.
    pub proof: Vec<String>,
}

impl Checkpoints {
    pub fn new(data_dir: &Path) -> Self {
        Checkpoints {
            data_dir: data_dir.to_owned(),
            key: OnceLock::new(),
            read: tokio::sync::Mutex::default(),
            whole: tokio::sync::Mutex::default(),
        }
    }

    /// The installation's log key, made at first use.
    pub fn key(&self) -> Result<&LogKey, CheckpointError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let seed = tandem_seal::local_key(&self.data_dir, "log.seed")
            .map_err(|e| CheckpointError::Key(e.to_string()))?;
        let seed: [u8; 32] = unhex(&seed)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| CheckpointError::Key("keys/log.seed is not 32 bytes of hex".into()))?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let name = format!("tandem/{}", hex(&public.as_bytes()[..8]));
        let key =
            LogKey::from_seed(&name, &seed).map_err(|e| CheckpointError::Key(e.to_string()))?;
        Ok(self.key.get_or_init(|| key))
    }

    pub fn witness_file(&self) -> PathBuf {
        self.data_dir.join(WITNESS_FILE)
    }

    /// The leaf hashes of events `after + 1 ..= upto`.
    async fn leaves(store: &Store, after: u64, upto: u64) -> Result<Vec<Hash>, CheckpointError> {
        let mut out = Vec::with_capacity((upto - after) as usize);
        let mut from = after;
        while from < upto {
            let to = upto.min(from + 50_000);
            for (i, h) in store.event_hashes(from, to).await?.into_iter().enumerate() {
                out.push(leaf(from + 1 + i as u64, &h)?);
            }
            from = to;
        }
        Ok(out)
    }

    /// A checkpoint of the journal as it stands: the latest one if the
    /// journal has not grown since, else a new one, signed, recorded and
    /// appended to the witness file. `None` for an empty journal.
    pub async fn checkpoint(
        &self,
        store: &Store,
    ) -> Result<Option<CheckpointRow>, CheckpointError> {
        let key = self.key()?;
        let mut read = self.read.lock().await;
        let size = store.last_seq().await?;
        if size == 0 {
            return Ok(None);
        }
        let latest = store.latest_checkpoint().await?;
        if let Some(l) = &latest
            && l.size as u64 > size
        {
            // Shorter than what was signed: nothing signed can extend it.
            tracing::error!(
                signed = l.size,
                now = size,
                "the journal is shorter than its last signed checkpoint; nothing more is signed"
            );
            return Err(CheckpointError::Diverged(l.size as u64));
        }
        // Read on from where the tree stands, unless the journal is no
        // longer what was read (shorter, or its last leaf changed): then
        // from the start.
        let (frontier, last) = &mut *read;
        let known = frontier.size();
        let same = known <= size
            && match (known, last.as_deref()) {
                (0, _) => true,
                (n, Some(h)) => {
                    store
                        .event_hashes(n - 1, n)
                        .await?
                        .first()
                        .map(String::as_str)
                        == Some(h)
                }
                (_, None) => false,
            };
        if !same {
            tracing::error!(
                read = known,
                now = size,
                "the journal changed under the checkpoints; reading it again from the start"
            );
            *frontier = Frontier::default();
        }
        // Never sign a tree that does not extend the last one signed: its
        // root is checked on the way (a journal rewritten under a running
        // server, or found so at a start, is refused, not signed anew).
        let signed = latest
            .as_ref()
            .map(|l| (l.size as u64, l.root.clone()))
            .filter(|(n, _)| *n >= frontier.size() && *n <= size);
        let diverged = |frontier: &Frontier| {
            signed
                .as_ref()
                .is_some_and(|(n, root)| frontier.size() == *n && hex(&frontier.root()) != *root)
        };
        let from = frontier.size();
        let mut bad = diverged(frontier);
        for leaf in Self::leaves(store, from, size).await? {
            if bad {
                break;
            }
            frontier.push(leaf);
            bad = diverged(frontier);
        }
        if bad {
            let n = signed.map_or(0, |(n, _)| n);
            *frontier = Frontier::default();
            *last = None;
            tracing::error!(
                size = n,
                "the journal no longer extends its last signed checkpoint; nothing more is signed"
            );
            return Err(CheckpointError::Diverged(n));
        }
        *last = store.event_hashes(size - 1, size).await?.pop();
        // Unchanged since the last: that one (now checked) stands.
        if let Some(latest) = latest
            && latest.size as u64 == size
        {
            return Ok(Some(latest));
        }
        let root = frontier.root();
        let note = key
            .sign(size, root)
            .map_err(|e| CheckpointError::Key(e.to_string()))?;
        let row = store.record_checkpoint(size, &hex(&root), &note).await?;
        if row.root != hex(&root) {
            // One of that size was signed before, with another root.
            return Err(CheckpointError::Diverged(size));
        }
        if let Err(e) = append(&self.witness_file(), &row.note) {
            tracing::error!(error = %e, file = %self.witness_file().display(), "cannot append the checkpoint to the witness file");
        }
        Ok(Some(row))
    }

    /// The proof that the journal now extends its first `from` events.
    pub async fn consistency(
        &self,
        store: &Store,
        from: u64,
        to: Option<u64>,
    ) -> Result<Consistency, CheckpointError> {
        // To the journal now, or to a signed size of it (the caller then
        // checks the proof against that checkpoint's root, not ours).
        let now = store.last_seq().await?;
        let size = to.unwrap_or(now);
        if from == 0 || from > size || size > now {
            return Err(CheckpointError::Beyond { from, size });
        }
        let _one = self.whole.lock().await;
        let tree = Tree::new(Self::leaves(store, 0, size).await?);
        Ok(Consistency {
            from,
            from_root: hex(&tree.root(from)),
            size,
            root: hex(&tree.root(size)),
            proof: tree
                .consistency_proof(from, size)
                .iter()
                .map(|h| hex(h))
                .collect(),
        })
    }
}

impl Checkpoints {
    /// The checkpoint of `at` events (made before: a report names it), or
    /// the journal's as it stands.
    pub async fn at(
        &self,
        store: &Store,
        at: Option<u64>,
    ) -> Result<CheckpointRow, CheckpointError> {
        let row = match at {
            Some(size) => store.checkpoint_at(size).await?,
            None => self.checkpoint(store).await?,
        };
        row.ok_or_else(|| CheckpointError::NoCheckpoint(at.unwrap_or(0)))
    }

    /// The events of `customer` that a report or bundle for the minutes
    /// `[from, to)` rests on, at the checkpoint `cp`.
    pub async fn events_for(
        store: &Store,
        customer: &str,
        from: i64,
        to: i64,
        cp: &CheckpointRow,
    ) -> Result<Vec<tandem_core::journal::Event>, CheckpointError> {
        let events = store.events_for_customer(customer, cp.size as u64).await?;
        Ok(tandem_report::sla::select(events, customer, from, to))
    }

    /// A bundle of `customer`'s events for the minutes `[from, to)` at the
    /// checkpoint `cp`, with the batch proof of their inclusion and the
    /// consistency proof from the checkpoint before it.
    pub async fn export(
        &self,
        store: &Store,
        customer: &str,
        (from, to): (i64, i64),
        (from_text, to_text): (&str, &str),
        cp: &CheckpointRow,
    ) -> Result<tandem_proof::bundle::Bundle, CheckpointError> {
        let events = Self::events_for(store, customer, from, to, cp).await?;
        let size = cp.size as u64;
        let _one = self.whole.lock().await;
        let tree = Tree::new(Self::leaves(store, 0, size).await?);
        let indices: Vec<u64> = events.iter().map(|e| e.seq - 1).collect();
        let proof = tree.batch_proof(&indices, size);
        let previous = match store.checkpoint_before(size).await? {
            Some(p) if p.size > 0 => Some(tandem_proof::bundle::Previous {
                proof: tandem_proof::bundle::to_hex(&tree.consistency_proof(p.size as u64, size)),
                checkpoint: p.note,
            }),
            _ => None,
        };
        Ok(tandem_proof::bundle::Bundle {
            format: tandem_proof::bundle::FORMAT.into(),
            customer: customer.to_owned(),
            from: from_text.to_owned(),
            to: to_text.to_owned(),
            checkpoint: cp.note.clone(),
            events,
            proof: tandem_proof::bundle::to_hex(&proof),
            previous,
        })
    }
}

/// The leaf hash of event `seq` whose hash is `hash`.
fn leaf(seq: u64, hash: &str) -> Result<Hash, CheckpointError> {
    unhex(hash)
        .filter(|b| b.len() == 32)
        .map(|b| merkle::leaf_hash(&b))
        .ok_or_else(|| CheckpointError::BadHash {
            seq,
            hash: hash.to_owned(),
        })
}

/// Appends `note` to the witness file, readable by anyone, synced.
fn append(path: &Path, note: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)?;
    // tandem's umask is 077: widen it to what a witness file is.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.write_all(note.as_bytes())?;
    file.sync_data()
}
