//! Values kept sealed (ChaCha20-Poly1305) rather than in clear: the
//! store's secrets and repository credentials, and the secret part of the
//! instances' environments in the agent's state file. The key is `keys/store.key` beside
//! the database (32 random bytes, owner-only, made on first use), or
//! `TANDEM_SECRETS_KEY` (64 hex digits) to keep it off the disk: a copy of
//! the database alone, a dump or a grep of its files does not show them.
//! Each value is sealed with a nonce of its own, stored before it.

use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use tandem_core::journal::{hex, unhex};

/// Why a key could not be had or a value not opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Open(&'static str),
}

/// Fills `buf` with random bytes from the operating system (tokens, ids).
pub fn random_bytes(buf: &mut [u8]) {
    use chacha20poly1305::aead::rand_core::RngCore;
    OsRng.fill_bytes(buf);
}

/// A local secret shared by tandem's own processes through a file only
/// they may read: `keys/<name>` under `dir`, 64 hex digits, made if
/// missing (by whichever process comes first; the others read it).
pub fn local_key(dir: &Path, name: &str) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let keys = dir.join("keys");
    let path = keys.join(name);
    match std::fs::read_to_string(&path) {
        Ok(key) if key.trim().len() == 64 => return Ok(key.trim().to_owned()),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is not a key (64 hex digits); remove it and restart tandem",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&keys)?;
    let mut key = [0u8; 32];
    random_bytes(&mut key);
    let key = hex(&key);
    // Its own temporary name: two threads of one process may make it at once.
    let mut nonce = [0u8; 8];
    random_bytes(&mut nonce);
    let tmp = keys.join(format!(".{name}.{}.{}", std::process::id(), hex(&nonce)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        // Someone made it meanwhile: theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => local_key(dir, name),
        Err(e) => Err(e),
    }
}

/// Seals and opens values with the store's key.
#[derive(Clone)]
pub struct Sealer(ChaCha20Poly1305);

const NONCE: usize = 12;

/// The environment variable that may hold the key instead of its file.
pub const KEY_VARIABLE: &str = "TANDEM_SECRETS_KEY";

impl Sealer {
    /// The key in `keys/store.key` under `dir`, made if missing.
    pub fn load_or_create(dir: &Path) -> Result<Sealer, SealError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(hex) = std::env::var_os(KEY_VARIABLE) {
            return Sealer::from_hex(hex.to_str().unwrap_or_default());
        }
        let keys = dir.join("keys");
        let path = keys.join("store.key");
        let io = |e: std::io::Error| SealError::Key(format!("{}: {e}", path.display()));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.try_into().map_err(|_| {
                    SealError::Key(format!(
                        "{} is not a key (32 bytes); restore it from a backup",
                        path.display()
                    ))
                })?;
                return Ok(Sealer(ChaCha20Poly1305::new(&Key::from(key))));
            }
            // Made below; any other failure (no permission, a directory) is said.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys)
            .map_err(io)?;
        let key = ChaCha20Poly1305::generate_key(&mut OsRng);
        let tmp = keys.join(format!(".store.key.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&key[..]).map_err(io)?;
        file.sync_all().map_err(io)?;
        // Another store opening at the same moment may have won: use its
        // (read above, once more).
        if let Err(e) = std::fs::hard_link(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io(e));
            }
            return Sealer::load_or_create(dir);
        }
        let _ = std::fs::remove_file(&tmp);
        Ok(Sealer(ChaCha20Poly1305::new(&key)))
    }

    /// The key from 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Sealer, SealError> {
        let key: [u8; 32] = unhex(hex.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                SealError::Key(format!(
                    "{KEY_VARIABLE} is not a key: 64 hex digits (e.g. `openssl rand -hex 32`)"
                ))
            })?;
        Ok(Sealer(ChaCha20Poly1305::new(&Key::from(key))))
    }

    /// `plain` sealed, as hex: for a value kept in a text file.
    pub fn seal_text(&self, plain: &str) -> String {
        hex(&self.seal(plain.as_bytes()))
    }

    /// The reverse of [`Sealer::seal_text`].
    pub fn open_text(&self, sealed: &str) -> Result<String, SealError> {
        let bytes = unhex(sealed).ok_or(SealError::Open("a sealed value is not hex"))?;
        String::from_utf8(self.open(&bytes)?)
            .map_err(|_| SealError::Open("a sealed value is not text"))
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        // Encrypting in memory cannot fail for inputs of this size.
        out.extend(self.0.encrypt(&nonce, plain).unwrap_or_default());
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE {
            return Err(SealError::Open("a sealed value is cut short"));
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().unwrap_or([0; NONCE]);
        self.0.decrypt(&Nonce::from(nonce), body).map_err(|_| {
            SealError::Open(
                "a sealed value does not open with this data directory's key (keys/store.key replaced?)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_making_one_local_key_at_once_all_get_the_same_one() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let keys: Vec<String> = std::thread::scope(|s| {
                let made: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| local_key(dir.path(), "log.seed")))
                    .collect();
                made.into_iter()
                    .map(|h| h.join().expect("thread").expect("a key"))
                    .collect()
            });
            assert!(
                keys.iter().all(|k| k == &keys[0] && k.len() == 64),
                "{keys:?}"
            );
        }
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_only_and_shows_nothing_in_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::load_or_create(dir.path()).expect("key");
        let sealed = sealer.seal(b"ghp_token");
        assert!(!sealed.windows(9).any(|w| w == b"ghp_token"));
        assert_eq!(sealer.open(&sealed).expect("open"), b"ghp_token");
        let again = Sealer::load_or_create(dir.path()).expect("the same key");
        assert_eq!(again.open(&sealed).expect("open"), b"ghp_token");
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = Sealer::load_or_create(other.path()).expect("key");
        assert!(stranger.open(&sealed).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/store.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn an_unreadable_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the key should be: said, never replaced.
        std::fs::create_dir_all(dir.path().join("keys/store.key")).expect("mkdir");
        let err = Sealer::load_or_create(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("store.key"), "{err}");
        // Hex that `from_str_radix` alone would take (a `+` sign).
        assert!(Sealer::from_hex(&"+a".repeat(32)).is_err());
        assert!(Sealer::from_hex(&"ab".repeat(32)).is_ok());
    }
}
