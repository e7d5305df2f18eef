//! What makes tandem's record checkable from outside the installation: the
//! journal as an RFC 6962 Merkle tree ([`merkle`]) and signed C2SP
//! checkpoints of it ([`checkpoint`]). Pure: the store feeds it event
//! hashes, the engine keeps its key file.

pub mod bundle;
pub mod checkpoint;
pub mod merkle;
