//! The replication protocol: a [`Sender`] on the active primary ships a
//! verified changeset to a [`Receiver`] on the passive one, over any byte
//! stream (`Read + Write`: an SSH exec channel, a socket, a pipe pair).
//!
//! # Frames
//!
//! Every message is one frame: `[type u8][length u32 big-endian][payload]`.
//! A frame longer than its type allows is refused before it is read
//! ([`ErrorKind::Protocol`], naming the limit):
//!
//! | type | name | payload | limit |
//! |---|---|---|---|
//! | 1 | `HELLO` | JSON `{protocol:"pe_failover", version, kind ("ca"\|"nc"), sender, txn}` | 64 KiB |
//! | 2 | `WELCOME` | JSON `{version, base: digest\|null, role, host}` | 64 KiB |
//! | 3 | `ERROR` | JSON `{kind, message}` (either side; ends the session) | 64 KiB |
//! | 4 | `MANIFEST_REQUEST` | empty | 64 KiB |
//! | 5 | `MANIFEST_HEAD` | JSON `{digest, entries}` | 64 KiB |
//! | 6 | `ENTRIES` | JSON array of manifest entries | [`Limits::max_frame`] (1 MiB) |
//! | 7 | `DELTA_HEAD` | JSON `{base, digest, upserts, removes}` | 64 KiB |
//! | 8 | `REMOVES` | JSON array of paths | 1 MiB |
//! | 9 | `WANT` | bitmap, one bit per object, LSB first | 1 MiB |
//! | 10 | `OBJECT` | SHA-256 (32 bytes) + size (u64 big-endian) | 40 bytes |
//! | 11 | `DATA` | raw content, in order | 1 MiB |
//! | 12 | `COMMIT` | JSON `{txn, digest}` | 64 KiB |
//! | 13 | `ACK` | JSON `{txn, digest}` | 64 KiB |
//! | 14 | `BYE` | JSON `{}`: nothing to send | 64 KiB |
//! | 15 | `EXTEND` | new SHA-256 + size, base SHA-256 + size, suffix SHA-256 | 112 bytes |
//!
//! Totals are bounded too ([`Limits`]): entries per manifest or delta
//! (1,000,000), bytes of entry frames per message (512 MiB), size of one file
//! (256 MiB), object bytes per transaction (4 GiB).
//!
//! # Conversation
//!
//! ```text
//! sender                                   receiver
//! HELLO {version 2, kind ca, sender, txn} ─▶
//!                                        ◀─ WELCOME {base digest | null, role}   (or ERROR, e.g. kind "fenced")
//! [base ≠ the manifest last shipped to this replica, and not null:]
//! MANIFEST_REQUEST                       ─▶
//!                                        ◀─ MANIFEST_HEAD {digest, n}, ENTRIES...
//! [base = current digest, or noop:] BYE  ─▶ (end)
//! DELTA_HEAD {base, digest, u, r}        ─▶
//! ENTRIES... (u upserts), REMOVES... (r)
//!                                        ◀─ WANT bitmap                           (or ERROR)
//! OBJECT|EXTEND, DATA... per wanted object ─▶
//! COMMIT {txn, digest}                   ─▶
//!                                        ◀─ ACK {txn, digest}                     (or ERROR, e.g. kind "corrupt")
//! ```
//!
//! The objects of a delta are the distinct SHA-256 digests of its upserted
//! files, in path order (first occurrence). The receiver wants those it does
//! not already hold (in its base manifest), so bytes on the wire are
//! proportional to the changed entries and changed contents. A file that
//! only grew (`inventory.txt` after a signing) is sent as `EXTEND`: the
//! digest and size of the old contents at that path, which the receiver
//! holds, and only the appended bytes. The receiver checks the suffix's
//! SHA-256 and length; the applier, which can read the previous snapshot,
//! checks the SHA-256 of the whole.
//!
//! The same conversation carries both kinds ([`Kind`]): the CA's
//! replicated set, or the Node Classifier dump (a set holding only the
//! file `groups.json`, see [`crate::ncship`]). Each kind has its own staging
//! namespace on the receiver ([`crate::stage::StateDir::for_kind`]), its
//! own base digest and its own per-replica files on the sender; fencing is
//! the same for both.
//!
//! Digests of manifests (`base`, `digest`) are [`Manifest::digest`](crate::snapshot::Manifest::digest)s:
//! BLAKE3 of the canonical form since version 2 (version 1 used SHA-256,
//! which a manifest read from an earlier version's file still carries).
//!
//! The receiver validates everything before it writes anything usable (see
//! [`Receiver`]). The digest of the manifest a delta makes is checked at
//! `COMMIT`: the receiver hashes that manifest while it writes it and the
//! contents arrive, and stores the transaction only when the digest is the
//! one announced. The sender keeps, per replica, the last manifest it
//! shipped, so that the normal case needs no manifest exchange.

mod frame;
mod receiver;
mod sender;

use std::io::{self, Read, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use frame::{encode_frame, FrameType, HEADER_LEN};
pub use receiver::{ReceiveOutcome, ReceiveReport, Receiver};
pub use sender::{is_source_changed, Sender, SyncReport};

use crate::{Error, ErrorKind, Result};

/// The protocol version this build speaks: 2, where a delta's manifest
/// digest is a BLAKE3 (1: SHA-256). Sender and receiver must speak the same.
pub const PROTOCOL_VERSION: u32 = 2;

/// The protocol name announced in `HELLO`.
pub const PROTOCOL_NAME: &str = "pe_failover";

/// Largest payload of a control frame (JSON messages).
pub const MAX_CONTROL_FRAME: u32 = 64 * 1024;

/// Size of the `DATA` chunks a sender writes.
pub const DATA_CHUNK: usize = 256 * 1024;

/// What is replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The Puppet CA (the `replset` module's set).
    Ca,
    /// Node Classifier groups: one canonical dump file (see the `ncship`
    /// module), staged under `<state>/nc/`, apart from the CA.
    Nc,
}

impl Kind {
    /// `"ca"` or `"nc"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ca => "ca",
            Kind::Nc => "nc",
        }
    }

    /// The kind named `name` (`"ca"` or `"nc"`), if any.
    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "ca" => Some(Kind::Ca),
            "nc" => Some(Kind::Nc),
            _ => None,
        }
    }
}

/// Bounds on what a peer may send. Both sides enforce them on input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of an `ENTRIES`, `REMOVES`, `WANT` or `DATA` frame.
    /// Default: 1 MiB. Control frames are limited to [`MAX_CONTROL_FRAME`].
    pub max_frame: u32,
    /// Most entries in a manifest, and most upserts plus removes in a
    /// delta. Default: 1,000,000.
    pub max_entries: u64,
    /// Most bytes of `ENTRIES`/`REMOVES` frames in one manifest or delta.
    /// Default: 512 MiB.
    pub max_manifest_bytes: u64,
    /// Largest single file. Default: 256 MiB.
    pub max_object_size: u64,
    /// Most object bytes in one transaction. Default: 4 GiB.
    pub max_txn_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 1024 * 1024,
            max_entries: 1_000_000,
            max_manifest_bytes: 512 * 1024 * 1024,
            max_object_size: 256 * 1024 * 1024,
            max_txn_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// Counters of one sync or receive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Entries in the new manifest.
    pub entries: u64,
    /// Entries added or changed.
    pub upserts: u64,
    /// Entries removed.
    pub removes: u64,
    /// Objects (file contents) transferred.
    pub objects: u64,
    /// Bytes of objects transferred.
    pub object_bytes: u64,
    /// Objects of the delta the receiver already held (not transferred).
    pub objects_reused: u64,
    /// Objects sent as a suffix of contents the receiver holds (`EXTEND`;
    /// `object_bytes` counts only the suffix).
    pub objects_extended: u64,
    /// Bytes written to the stream.
    pub bytes_sent: u64,
    /// Bytes read from the stream.
    pub bytes_received: u64,
    /// Whether the receiver's manifest was exchanged (first sync with a
    /// restored or drifted replica).
    pub manifest_exchanged: bool,
    /// Whether the receiver's base manifest was the one it kept from the
    /// session before on the same connection (not read again).
    pub base_kept: bool,
    /// Wall-clock duration.
    pub elapsed: Duration,
}

/// One stream made of a reader and a writer, for transports that come in
/// two halves (a child's stdout and stdin, this process's stdin and stdout).
#[derive(Debug)]
pub struct Duplex<R, W> {
    reader: R,
    writer: W,
}

impl<R: Read, W: Write> Duplex<R, W> {
    /// Reads from `reader`, writes to `writer`.
    pub fn new(reader: R, writer: W) -> Self {
        Duplex { reader, writer }
    }

    /// The two halves.
    pub fn into_inner(self) -> (R, W) {
        (self.reader, self.writer)
    }
}

impl<R: Read, W> Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

// ---- messages ----

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub protocol: String,
    pub version: u32,
    pub kind: String,
    pub sender: String,
    pub txn: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Welcome {
    pub version: u32,
    pub base: Option<String>,
    pub role: String,
    pub host: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorMsg {
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestHead {
    pub digest: String,
    pub entries: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeltaHead {
    pub base: Option<String>,
    pub digest: String,
    pub upserts: u64,
    pub removes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Commit {
    pub txn: String,
    pub digest: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Bye {}

/// The error kind named by an `ERROR` frame's `kind` (the strings of
/// [`ErrorKind::as_str`]); unknown names are protocol errors.
pub(crate) fn kind_from_name(name: &str) -> ErrorKind {
    ErrorKind::from_name(name).unwrap_or(ErrorKind::Protocol)
}

/// The objects of a delta: the distinct digests of its upserted files, in
/// order of first occurrence, with their sizes and first paths.
pub(crate) fn delta_objects(upserts: &[crate::snapshot::Entry]) -> Vec<(String, u64, String)> {
    let mut seen = rustc_hash::FxHashSet::default();
    let mut out = Vec::new();
    for e in upserts {
        if let (crate::snapshot::EntryKind::File, Some(sha)) = (e.kind, e.sha256.as_deref()) {
            if seen.insert(sha) {
                out.push((sha.to_string(), e.size, e.path.clone()));
            }
        }
    }
    out
}

/// Sends `items` as JSON arrays in frames of type `ty`, each at most
/// `max_frame` bytes.
pub(crate) fn send_batches<S, T, I>(
    conn: &mut frame::Conn<S>,
    ty: FrameType,
    items: I,
) -> Result<()>
where
    S: Read + Write,
    T: Serialize,
    I: IntoIterator<Item = T>,
{
    let max = conn.limits().max_frame as usize;
    let mut buf = Vec::with_capacity(max.min(256 * 1024));
    buf.push(b'[');
    for item in items {
        let enc = serde_json::to_vec(&item).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot encode a {} item: {e}", ty.name()),
            )
        })?;
        if enc.len() + 2 > max {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "one {} item takes {} bytes, more than the frame limit of {max} bytes",
                    ty.name(),
                    enc.len()
                ),
            ));
        }
        if buf.len() > 1 && buf.len() + enc.len() + 2 > max {
            buf.push(b']');
            conn.send(ty, &buf)?;
            buf.clear();
            buf.push(b'[');
        }
        if buf.len() > 1 {
            buf.push(b',');
        }
        buf.extend_from_slice(&enc);
    }
    if buf.len() > 1 {
        buf.push(b']');
        conn.send(ty, &buf)?;
    }
    Ok(())
}

/// Reads exactly `count` items sent by [`send_batches`] in frames of type
/// `ty`, charging the frame bytes to `budget` (what is left of
/// [`Limits::max_manifest_bytes`]).
pub(crate) fn read_batches<S, T>(
    conn: &mut frame::Conn<S>,
    ty: FrameType,
    count: u64,
    budget: &mut u64,
    what: &str,
) -> Result<Vec<T>>
where
    S: Read + Write,
    T: serde::de::DeserializeOwned,
{
    let mut out: Vec<T> = Vec::with_capacity(count.min(65_536) as usize);
    while (out.len() as u64) < count {
        let frame = conn.expect(&[ty], what)?;
        let len = frame.payload.len() as u64;
        if len > *budget {
            return Err(violation(format!(
                "{what} take more than the limit of {} bytes (max_manifest_bytes)",
                conn.limits().max_manifest_bytes
            )));
        }
        *budget -= len;
        let batch: Vec<T> = conn.parse(&frame)?;
        if batch.is_empty() {
            return Err(violation(format!("an empty {} frame in {what}", ty.name())));
        }
        if out.len() as u64 + batch.len() as u64 > count {
            return Err(violation(format!("more {what} than the {count} announced")));
        }
        out.extend(batch);
    }
    Ok(out)
}

/// This host's name, for `HELLO` and `WELCOME` (`"unknown"` if it cannot be
/// read).
pub(crate) fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A protocol violation by the peer.
pub(crate) fn violation(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kind_names_round_trip() {
        for k in [ErrorKind::Fenced, ErrorKind::Corrupt, ErrorKind::UnsafePath] {
            assert_eq!(kind_from_name(k.as_str()), k);
        }
        assert_eq!(kind_from_name("bogus"), ErrorKind::Protocol);
    }
}
