//! Signed checkpoints: the journal's size and Merkle root in the C2SP
//! `tlog-checkpoint` format, inside a C2SP `signed-note` signed with the
//! installation's Ed25519 key (the `signed_note` crate does the note).
//!
//! ```text
//! tandem/3f9c1a2b7d4e5f60
//! 1042
//! 9+Zc2hWk0d7cR9S7jQ3mR8n0a1xFQm1c2uY5gk5yX0U=
//!
//! — tandem/3f9c1a2b7d4e5f60 AbCdEf…
//! ```
//!
//! The origin line is the key's name, so a checkpoint names the log it is
//! of and the key that must have signed it. The verifier key
//! (`name+keyid+base64(0x01 ‖ public key)`) is what `tandem keys show`
//! prints and what a customer keeps.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use signed_note::{Note, Signer as _, StandardSigner, StandardVerifier, VerifierList};

use crate::merkle::Hash;

/// Why a key, a note or a checkpoint was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a key: {0}")]
    Key(String),
    #[error("not a signed checkpoint: {0}")]
    Malformed(String),
    #[error("the checkpoint is not signed by {key}: {why}")]
    Unsigned { key: String, why: String },
}

/// What a checkpoint commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (the key's name).
    pub origin: String,
    /// Leaves (events) in the tree.
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note's text: origin, size, root, each on its line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Reads a checkpoint's text (extension lines after the root are
    /// allowed by the format and ignored).
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |why: &str| CheckpointError::Malformed(why.to_owned());
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no size line"))?;
        // Decimal, no sign, no leading zero: one spelling per size.
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad(&format!("size {size:?} is not a decimal number")));
        }
        let size = size.parse().map_err(|_| bad("size out of range"))?;
        let root = lines.next().ok_or_else(|| bad("no root line"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the root is not 32 bytes of base64"))?;
        if !text.ends_with('\n') {
            return Err(bad("the text does not end with a newline"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// The installation's signing key, as the note format encodes it
/// (`PRIVATE+KEY+name+keyid+base64(0x01 ‖ seed)`).
pub struct LogKey {
    encoded: String,
    signer: StandardSigner,
    verifier_key: String,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKey")
            .field("verifier_key", &self.verifier_key)
            .finish_non_exhaustive()
    }
}

impl LogKey {
    /// The key named `name` made from 32 random bytes.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<LogKey, CheckpointError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(CheckpointError::Key(format!(
                "{name:?} cannot name a key (empty, a space or a '+')"
            )));
        }
        let signing = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = [&[1u8][..], signing.verifying_key().as_bytes()].concat();
        let encoded = format!(
            "PRIVATE+KEY+{name}+{:08x}+{}",
            signed_note::key_id(name, &public),
            B64.encode([&[1u8][..], seed].concat())
        );
        LogKey::parse(&encoded)
    }

    /// A key as [`LogKey::encoded`] wrote it.
    pub fn parse(encoded: &str) -> Result<LogKey, CheckpointError> {
        let encoded = encoded.trim();
        let signer = StandardSigner::new(encoded)
            .map_err(|e| CheckpointError::Key(format!("a signing key: {e:?}")))?;
        // PRIVATE+KEY+name+id+key: the name has no '+', base64 may.
        let seed: [u8; 32] = encoded
            .splitn(5, '+')
            .nth(4)
            .and_then(|k| B64.decode(k).ok())
            .and_then(|k| k.get(1..).map(<[u8]>::to_vec))
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| CheckpointError::Key("a signing key: no seed".into()))?;
        let verifying = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let verifier_key = signed_note::new_ed25519_verifier_key(signer.name(), &verifying);
        Ok(LogKey {
            encoded: encoded.to_owned(),
            signer,
            verifier_key,
        })
    }

    /// The secret encoding, for the key file only.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// The key's (and the log's) name.
    pub fn name(&self) -> &str {
        self.signer.name()
    }

    /// The public verifier key in signed-note form.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The signed note of the checkpoint of this log at `size`, `root`.
    pub fn sign(&self, size: u64, root: Hash) -> Result<String, CheckpointError> {
        let checkpoint = Checkpoint {
            origin: self.name().to_owned(),
            size,
            root,
        };
        let mut note = Note::new(checkpoint.body().as_bytes(), &[])
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|e| CheckpointError::Malformed(e.to_string()))
    }
}

/// Checks `note`'s signature with `verifier_key` and reads its checkpoint,
/// whose origin must be the key's name.
pub fn open(note: &str, verifier_key: &str) -> Result<Checkpoint, CheckpointError> {
    let verifier = StandardVerifier::new(verifier_key.trim())
        .map_err(|e| CheckpointError::Key(format!("a verifier key: {e:?}")))?;
    let name = signed_note::Verifier::name(&verifier).to_owned();
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CheckpointError::Unsigned {
            key: name.clone(),
            why: e.to_string(),
        })?;
    let text = std::str::from_utf8(parsed.text())
        .map_err(|_| CheckpointError::Malformed("not UTF-8".into()))?;
    let checkpoint = Checkpoint::parse_body(text)?;
    if checkpoint.origin != name {
        return Err(CheckpointError::Unsigned {
            key: name,
            why: format!("it is of the log {:?}", checkpoint.origin),
        });
    }
    Ok(checkpoint)
}

/// The signed notes in `text`, one after another (a witness file, or the
/// output of `tandem audit checkpoint`): each is its text, a blank line
/// and its signature lines (`— …`).
pub fn split_notes(text: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let mut current = String::new();
    let mut in_sigs = false;
    for line in text.split_inclusive('\n') {
        if in_sigs && !line.starts_with("— ") {
            notes.push(std::mem::take(&mut current));
            in_sigs = false;
        }
        if !in_sigs && current.is_empty() && line.trim().is_empty() {
            continue; // blank lines between notes
        }
        if line == "\n" && !current.is_empty() {
            in_sigs = true;
        }
        current.push_str(line);
    }
    if !current.trim().is_empty() {
        notes.push(current);
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LogKey {
        LogKey::from_seed("tandem/test", &[7u8; 32]).expect("key")
    }

    #[test]
    fn every_seed_makes_a_key_that_reads_back() {
        // Base64 of some seeds holds a '+', the note format's separator.
        for b in 0..=255u8 {
            let key = LogKey::from_seed("tandem/test", &[b; 32]).expect("key");
            let again = LogKey::parse(key.encoded()).expect("reads back");
            assert_eq!(again.verifier_key(), key.verifier_key());
        }
    }

    #[test]
    fn a_checkpoint_signs_and_opens_with_the_verifier_key_only() {
        let key = key();
        let note = key.sign(42, [9u8; 32]).expect("sign");
        assert!(note.starts_with("tandem/test\n42\nCQkJ"), "{note}");
        assert!(note.contains("\n\n— tandem/test "), "{note}");
        let opened = open(&note, key.verifier_key()).expect("open");
        assert_eq!((opened.size, opened.root), (42, [9u8; 32]));
        // The encoded key reads back as the same key.
        let again = LogKey::parse(key.encoded()).expect("parse");
        assert_eq!(again.verifier_key(), key.verifier_key());

        // Another key, an altered size or root: refused.
        let other = LogKey::from_seed("tandem/test", &[8u8; 32]).expect("key");
        assert!(matches!(
            open(&note, other.verifier_key()),
            Err(CheckpointError::Unsigned { .. })
        ));
        let altered = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            open(&altered, key.verifier_key()),
            Err(CheckpointError::Unsigned { .. })
        ));
        // A key of another name does not vouch for this log.
        let stranger = LogKey::from_seed("tandem/else", &[7u8; 32]).expect("key");
        assert!(open(&note, stranger.verifier_key()).is_err());
    }

    #[test]
    fn bodies_are_read_strictly() {
        let ok = Checkpoint::parse_body(
            "o\n10\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\nextension\n",
        )
        .expect("ok");
        assert_eq!(ok.size, 10);
        for bad in [
            "o\n010\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n-1\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n10\nCQkJ\n",
            "\n10\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n10\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=",
        ] {
            assert!(Checkpoint::parse_body(bad).is_err(), "{bad:?}");
        }
        assert!(LogKey::from_seed("has space", &[1; 32]).is_err());
        assert!(LogKey::parse("PRIVATE+KEY+x+00000000+AAAA").is_err());
    }

    #[test]
    fn a_file_of_notes_splits_into_each() {
        let key = key();
        let a = key.sign(1, [1u8; 32]).expect("sign");
        let b = key.sign(2, [2u8; 32]).expect("sign");
        let file = format!("{a}{b}\n{a}");
        let notes = split_notes(&file);
        assert_eq!(notes, vec![a.clone(), b, a]);
        for n in &notes {
            open(n, key.verifier_key()).expect("each opens");
        }
    }
}
