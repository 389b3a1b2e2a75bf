//! The receiving side, on the passive primary (runs unprivileged, as the
//! forced command of the transfer key: stdin and stdout are the stream).

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::frame::{Conn, FrameType};
use super::{
    delta_objects, local_hostname, read_batches, send_batches, violation, Commit, DeltaHead,
    Duplex, Hello, Kind, Limits, ManifestHead, Stats, Welcome, PROTOCOL_NAME, PROTOCOL_VERSION,
};
use crate::cancel::CancelToken;
use crate::fsutil::{self, FileLock};
use crate::manifest_delta::{is_small_change, merge_taking};
use crate::pack::PACK_MIN;
use crate::replset::{is_allowed_path_of, manifest_from_merge};
use crate::snapshot::{
    is_sha256_hex, sha256_bytes, validate_relative_path, Entry, EntryKind, Manifest,
};
use crate::stage::{
    clean_partials, receiver_base, validate_txn_id, Base, Extension, StateDir, TxnMeta, TxnWriter,
    META_FORMAT,
};
use crate::state::{DigestAt, ErrorRecord, ReceiverStatus, Role, Stamp};
use crate::{Error, ErrorKind, Result};

/// How a receive session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiveOutcome {
    /// A transaction was verified and stored in `incoming/<txn>/`.
    Stored,
    /// The sender had nothing to send (or ran in noop mode).
    NothingToDo,
    /// The sender started this receiver before it needed one (during its
    /// scan, or for its watcher's next round) and closed the connection
    /// without a word: nothing happened, nothing is recorded.
    Unused,
}

/// What one receive session did.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiveReport {
    /// The sending host, as it announced itself.
    pub sender: String,
    /// The transaction id.
    pub txn: String,
    /// Stored, nothing to do, or unused.
    pub outcome: ReceiveOutcome,
    /// The digest this replica held before.
    pub base: Option<String>,
    /// The digest of the stored transaction.
    pub digest: Option<String>,
    /// Where it was stored.
    pub txn_dir: Option<PathBuf>,
    /// Stale `.partial` directories removed at the start.
    pub partials_removed: u64,
    /// Counters.
    pub stats: Stats,
}

/// Receives transactions into a passive primary's state directory.
///
/// Everything is validated before anything usable is written: the protocol
/// version, every frame's size, every path (safe, replicated, not below a
/// symlink, not twice), every object's size and SHA-256, and the digest of
/// the reconstructed manifest. A violation is answered with an `ERROR` frame
/// that says what was wrong; the transaction's `.partial` directory is
/// removed. A promoted host (role file says `active`) answers `ERROR` of
/// kind `fenced` and writes nothing.
///
/// Both kinds are accepted: `ca` is staged in the state directory itself,
/// `nc` (a set holding only `groups.json`) in `<state_dir>/nc/`, each with
/// its own base digest, lock and `receiver.status.json`.
///
/// ```no_run
/// use pe_failover_core::protocol::Receiver;
///
/// # fn main() -> pe_failover_core::Result<()> {
/// // The forced command of the transfer key on the passive primary: every
/// // session the sender starts on this connection, each one shown.
/// Receiver::new("/opt/pe_failover/state")
///     .role_file("/opt/puppetlabs/facter/facts.d/pe_failover.yaml")
///     .receive_stdio(|session| match session {
///         Ok(report) => eprintln!("{:?} {:?}", report.outcome, report.digest),
///         Err(e) => eprintln!("{e}"),
///     })?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Receiver {
    state: StateDir,
    role: Option<Role>,
    role_file: Option<PathBuf>,
    host: Option<String>,
    limits: Limits,
    cancel: CancelToken,
    lock_wait: Duration,
    expect: Option<Kind>,
}

impl Receiver {
    /// A receiver storing into the state directory `state_dir` (see the
    /// `stage` module for its layout). Defaults: no role file (never
    /// fenced), this host's name, default [`Limits`], waits up to 30 s for
    /// another receive session to finish.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Receiver {
            state: StateDir::new(state_dir),
            role: None,
            role_file: None,
            host: None,
            limits: Limits::default(),
            cancel: CancelToken::new(),
            lock_wait: Duration::from_secs(30),
            expect: None,
        }
    }

    /// The kind of session the sender said it would open when it started
    /// this receiver (a sender starts it while it still scans): that
    /// kind's base manifest is read at once, meanwhile. Only a head start:
    /// `HELLO` decides, and the base is used only if it is still the one
    /// found once the session holds its lock. Default: none (the base is
    /// read after `HELLO`). [`receive_stdio`](Self::receive_stdio) takes
    /// it from the command the sender asked SSH for
    /// (`SSH_ORIGINAL_COMMAND`, such as `pe_failover receive ca`) unless
    /// set.
    pub fn expect_kind(mut self, kind: Option<Kind>) -> Self {
        self.expect = kind;
        self
    }

    /// The role file ([`Role::read`]): when it says `active`, every session
    /// is refused with `fenced`; when it cannot be read or parsed, every
    /// session is refused too. A missing file means passive.
    pub fn role_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.role_file = Some(path.into());
        self
    }

    /// This host's role, as the configuration file says: when `active`,
    /// every session is refused with `fenced` (checked before any role
    /// file). Default: none (the role file decides).
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// The name announced in `WELCOME`. Default: this host's name.
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// Bounds on what the sender may send. Default: [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Stops the session (keeping nothing) when `token` is tripped.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// How long to wait for another session on the same state directory to
    /// finish. Default: 30 seconds.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Serves sessions on this process's stdin and stdout (see
    /// [`serve`](Self::serve)); `each` sees every session's result.
    pub fn receive_stdio(&self, each: impl FnMut(&Result<ReceiveReport>)) -> Result<ReceiveReport> {
        let stdin = io::stdin().lock();
        let stdout = io::stdout().lock();
        if self.expect.is_none() {
            let asked = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
            let kind = asked.split_whitespace().last().and_then(Kind::from_name);
            return self
                .clone()
                .expect_kind(kind)
                .serve(Duplex::new(stdin, stdout), each);
        }
        self.serve(Duplex::new(stdin, stdout), each)
    }

    /// Runs one session on `stream`. Records the outcome in
    /// `incoming/receiver.status.json`.
    pub fn receive<S: Read + Write>(&self, stream: S) -> Result<ReceiveReport> {
        let mut conn = Conn::new(stream, self.limits, "the sender");
        self.one_session(&mut conn, true, &mut Kept::default())
    }

    /// Runs sessions on `stream` one after another for as long as each
    /// ends well and the sender starts another (its watcher keeps the
    /// receiver between rounds), each recorded as by
    /// [`receive`](Self::receive) and shown to `each`. A base manifest this
    /// receiver read or built in one session is the next session's when the
    /// state directory still holds it (same digest), instead of being read
    /// again. Returns the last session's result: [`ReceiveOutcome::Unused`]
    /// when the sender closed the stream between sessions, the error that
    /// ended the last one otherwise.
    pub fn serve<S: Read + Write>(
        &self,
        stream: S,
        mut each: impl FnMut(&Result<ReceiveReport>),
    ) -> Result<ReceiveReport> {
        let mut conn = Conn::new(stream, self.limits, "the sender");
        let mut kept = Kept::default();
        let mut first = true;
        loop {
            let result = self.one_session(&mut conn, first, &mut kept);
            each(&result);
            match &result {
                Ok(r) if r.outcome != ReceiveOutcome::Unused => first = false,
                _ => return result,
            }
        }
    }

    /// One session on `conn`; `first`: the first on it (a later one may
    /// find the base `kept` by the one before).
    fn one_session<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        first: bool,
        kept: &mut Kept,
    ) -> Result<ReceiveReport> {
        let started = Instant::now();
        let (sent_before, received_before) = (conn.sent(), conn.received());
        let mut session = Session {
            sender: None,
            kind: None,
            stats: Stats::default(),
            early: self
                .expect
                .filter(|_| first)
                .map(|kind| (kind, EarlyBase::start(&self.state, kind))),
        };
        let result = self.session(conn, &mut session, kept);
        session.stats.bytes_sent = conn.sent() - sent_before;
        session.stats.bytes_received = conn.received() - received_before;
        session.stats.elapsed = started.elapsed();
        // A sender may start the receiver before it knows it has anything to
        // say (it scans meanwhile), naming the kind of session, and then
        // close the channel unused: that is no failed session; nor is a
        // sender closing the stream after a session instead of starting
        // another. A connection that named no kind (someone ran another
        // command with the transfer key) and said nothing is recorded.
        let unused = (self.expect.is_some() || !first)
            && session.stats.bytes_received == 0
            && matches!(&result, Err(e) if e.kind() == ErrorKind::Network);
        if unused {
            return Ok(ReceiveReport {
                sender: String::new(),
                txn: String::new(),
                outcome: ReceiveOutcome::Unused,
                base: None,
                digest: None,
                txn_dir: None,
                partials_removed: 0,
                stats: session.stats,
            });
        }
        let kind = session.kind.unwrap_or(Kind::Ca);
        let state = StateDir::for_kind(self.state.root(), kind);
        let status_path = state.receiver_status_file();
        let mut status = ReceiverStatus::load(&status_path)
            .unwrap_or(None)
            .unwrap_or_else(|| ReceiverStatus::new(kind.as_str()));
        let result = match result {
            Ok(mut report) => {
                report.stats = session.stats;
                status.last_success = Some(Stamp::now());
                if let (Some(digest), ReceiveOutcome::Stored) = (&report.digest, report.outcome) {
                    status.last_received = Some(DigestAt {
                        digest: digest.clone(),
                        txn: Some(report.txn.clone()),
                        at: Stamp::now(),
                    });
                    status.last_sender = Some(report.sender.clone());
                }
                Ok(report)
            }
            Err(e) => {
                if e.kind() != ErrorKind::Network && !conn.peer_sent_error() {
                    conn.send_error(&e);
                }
                let e = match &session.sender {
                    Some(s) if e.path().is_none() => e.with_host(s.clone()),
                    _ => e,
                };
                status.last_error = Some(ErrorRecord::from_error(&e));
                Err(e)
            }
        };
        // Only once the state directory exists (a fenced or malformed
        // session may not have created it).
        if state.incoming().is_dir() {
            let _ = status.save(&status_path);
        }
        result
    }

    fn session<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        session: &mut Session,
        kept: &mut Kept,
    ) -> Result<ReceiveReport> {
        // HELLO: version first, so that a newer sender gets a clear answer.
        let frame = conn.expect(&[FrameType::Hello], "HELLO")?;
        let value: serde_json::Value = conn.parse(&frame)?;
        if value.get("protocol").and_then(|v| v.as_str()) != Some(PROTOCOL_NAME) {
            return Err(violation("the sender's HELLO is not a pe_failover HELLO"));
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(u64::from(PROTOCOL_VERSION)) {
            return Err(violation(format!(
                "unsupported protocol version {}: this receiver speaks version {PROTOCOL_VERSION}; install the same pe_failover version on both primaries",
                version.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
            )));
        }
        let hello: Hello = conn.parse(&frame)?;
        let sender = sanitize_host(&hello.sender);
        session.sender = Some(sender.clone());
        validate_txn_id(&hello.txn)?;
        let kind = Kind::from_name(&hello.kind).ok_or_else(|| {
            violation(format!(
                "this receiver does not accept replication of kind {:?} (only \"ca\" and \"nc\"); install the same pe_failover version on both primaries",
                hello.kind
            ))
        })?;
        session.kind = Some(kind);
        let state = StateDir::for_kind(self.state.root(), kind);
        let host = self.host.clone().unwrap_or_else(local_hostname);

        // Fencing: a promoted host takes nothing from its old primary.
        if self.role == Some(Role::Active) {
            return Err(Error::new(
                ErrorKind::Fenced,
                format!(
                    "{host} has been promoted to active (its configuration says role active) and refuses transactions from {sender}, so that its old primary cannot overwrite it; stop replication on {sender} (or demote {host} first)"
                ),
            ));
        }
        if let Some(path) = &self.role_file {
            match Role::read(path) {
                Ok(Some(Role::Active)) => {
                    return Err(Error::new(
                        ErrorKind::Fenced,
                        format!(
                            "{host} has been promoted to active and refuses transactions from {sender}, so that its old primary cannot overwrite it; stop replication on {sender} (or demote {host} first)"
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Refused,
                        format!("{host} cannot tell its role, so it refuses transactions: {e}"),
                    ))
                }
            }
        }

        fsutil::ensure_dir(&state.incoming(), 0o700)?;
        let _lock = FileLock::acquire(&state.receive_lock(), self.lock_wait, "receive session")?;
        let partials_removed = clean_partials(&state)?;
        let base = receiver_base(&state, kind.as_str())?;
        conn.send_json(
            FrameType::Welcome,
            &Welcome {
                version: PROTOCOL_VERSION,
                base: base.digest.clone(),
                role: Role::Passive.as_str().into(),
                host,
            },
        )?;
        conn.flush()?;

        // The sender now reads the manifest it shipped last and computes the
        // delta; the base manifest is read meanwhile.
        let early = session
            .early
            .take()
            .filter(|(expected, _)| *expected == kind)
            .map(|(_, early)| early);
        // What the session before kept of this base (another base found now
        // is read as usual; the kept one is dropped).
        let held = kept
            .slot(kind)
            .take()
            .and_then(|(digest, held)| (base.digest.as_ref() == Some(&digest)).then_some(held));
        session.stats.base_kept = held.is_some();
        let mut base = BaseReader::start(base, kind, early, held);

        let mut report = ReceiveReport {
            sender,
            txn: hello.txn.clone(),
            outcome: ReceiveOutcome::NothingToDo,
            base: base.digest().map(str::to_string),
            digest: None,
            txn_dir: None,
            partials_removed,
            stats: Stats::default(),
        };
        loop {
            let frame = conn.expect(
                &[
                    FrameType::ManifestRequest,
                    FrameType::DeltaHead,
                    FrameType::Bye,
                ],
                "MANIFEST_REQUEST, DELTA_HEAD or BYE",
            )?;
            match frame.ty {
                FrameType::Bye => {
                    *kept.slot(kind) = base.keep();
                    return Ok(report);
                }
                FrameType::ManifestRequest => {
                    if session.stats.manifest_exchanged {
                        return Err(violation("the sender asked for the manifest twice"));
                    }
                    session.stats.manifest_exchanged = true;
                    let manifest = base.manifest()?;
                    conn.send_json(
                        FrameType::ManifestHead,
                        &ManifestHead {
                            digest: manifest.digest(),
                            entries: manifest.len() as u64,
                        },
                    )?;
                    send_batches(conn, FrameType::Entries, manifest.entries())?;
                    conn.flush()?;
                }
                _ => {
                    let head: DeltaHead = conn.parse(&frame)?;
                    let (dir, digest, loaded) = self.receive_delta(
                        conn,
                        &state,
                        &hello.txn,
                        &report.sender,
                        &mut base,
                        head,
                        session,
                    )?;
                    report.outcome = ReceiveOutcome::Stored;
                    *kept.slot(kind) = Some((digest.clone(), Held::loaded(loaded)));
                    report.digest = Some(digest);
                    report.txn_dir = Some(dir);
                    return Ok(report);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_delta<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        state: &StateDir,
        txn: &str,
        sender: &str,
        base: &mut BaseReader,
        head: DeltaHead,
        session: &mut Session,
    ) -> Result<(PathBuf, String, Loaded)> {
        let limits = self.limits;
        let kind = state.kind();
        if head.base.as_deref() != base.digest() {
            return Err(violation(format!(
                "the delta was computed against {}, but this replica holds {}; sync again",
                head.base.as_deref().unwrap_or("nothing"),
                base.digest().unwrap_or("nothing")
            )));
        }
        if !is_sha256_hex(&head.digest) {
            return Err(violation("the delta announces a malformed digest"));
        }
        if head.upserts.saturating_add(head.removes) > limits.max_entries {
            return Err(violation(format!(
                "the delta has {} upserts and {} removes, more than the limit of {} entries (max_entries)",
                head.upserts, head.removes, limits.max_entries
            )));
        }
        // A first sync (or a wholesale change) upserts every entry.
        let _bulk =
            crate::bulk::BulkPhase::begin_for(usize::try_from(head.upserts).unwrap_or(usize::MAX));
        let mut budget = limits.max_manifest_bytes;
        let upserts: Vec<Entry> = read_batches(
            conn,
            FrameType::Entries,
            head.upserts,
            &mut budget,
            "upserted entries",
        )?;
        let removes: Vec<String> = read_batches(
            conn,
            FrameType::Removes,
            head.removes,
            &mut budget,
            "removed paths",
        )?;
        session.stats.upserts = upserts.len() as u64;
        session.stats.removes = removes.len() as u64;

        // Every path on its own first, for precise messages.
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        for e in &upserts {
            check_path(kind, &e.path)?;
            if !seen.insert(e.path.as_str()) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("the delta upserts {:?} twice", e.path),
                ));
            }
            if e.kind == EntryKind::File && e.size > limits.max_object_size {
                return Err(violation(format!(
                    "{:?} has {} bytes, more than the limit of {} bytes per file (max_object_size)",
                    e.path, e.size, limits.max_object_size
                )));
            }
        }
        let (base_manifest, mut have) = base.take()?;
        // The contents of the base's entries the delta replaces or removes.
        let mut dropped: Vec<[u8; 32]> = Vec::new();
        let mut removed: FxHashSet<&str> = FxHashSet::default();
        for path in &removes {
            check_path(kind, path)?;
            if seen.contains(path.as_str()) || !removed.insert(path.as_str()) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("the delta names {path:?} twice"),
                ));
            }
            let Some(gone) = base_manifest.get(path) else {
                return Err(violation(format!(
                    "the delta removes {path:?}, which this replica does not have"
                )));
            };
            dropped.extend(file_contents(gone));
        }
        // What the base holds at the upserted paths (an EXTEND must extend
        // it); the base's entries are then moved into the new manifest.
        let held_at: FxHashMap<&str, (String, u64)> = upserts
            .iter()
            .filter_map(|u| {
                let e = base_manifest.get(&u.path)?;
                let sha = e.sha256.clone().filter(|_| e.kind == EntryKind::File)?;
                Some((u.path.as_str(), (sha, e.size)))
            })
            .collect();
        dropped.extend(held_at.values().filter_map(|(sha, _)| sha256_bytes(sha)));
        let mut sorted: Vec<&Entry> = upserts.iter().collect();
        sorted.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let mut removed: Vec<&str> = removed.into_iter().collect();
        removed.sort_unstable();
        let (merged, _) = merge_taking(Vec::from(base_manifest), &sorted, &removed);
        if merged.len() as u64 > limits.max_entries {
            return Err(violation(format!(
                "the new manifest would have {} entries, more than the limit of {} (max_entries)",
                merged.len(),
                limits.max_entries
            )));
        }
        // The base passed every rule when it was read: only what the delta
        // changes is checked again.
        let manifest = manifest_from_merge(kind, merged, &sorted, &removed)?;
        // A small change is stored as what it changes (see `manifest_delta`).
        let delta_of = base
            .digest()
            .filter(|_| is_small_change(sorted.len() + removed.len(), manifest.len()));
        session.stats.entries = manifest.len() as u64;

        // The objects: want those whose contents this replica lacks.
        let objects = delta_objects(&upserts);
        let mut want = vec![0u8; objects.len().div_ceil(8)];
        let mut wanted = Vec::new();
        let mut total = 0u64;
        for (i, (sha, size, path)) in objects.iter().enumerate() {
            if sha256_bytes(sha).is_some_and(|b| have.contains_key(&b)) {
                session.stats.objects_reused += 1;
                continue;
            }
            want[i / 8] |= 1 << (i % 8);
            total = total.saturating_add(*size);
            wanted.push((sha.as_str(), *size, path.as_str()));
        }
        if total > limits.max_txn_bytes {
            return Err(violation(format!(
                "the transaction carries {total} bytes of contents, more than the limit of {} bytes (max_txn_bytes)",
                limits.max_txn_bytes
            )));
        }
        let mut writer = TxnWriter::create(state, txn)?;
        if kind == Kind::Ca && wanted.len() >= PACK_MIN {
            writer.use_pack()?;
        }
        // Its digest is computed while it is written (whole, or as a
        // delta) and the contents arrive, and checked against the announced
        // one before anything is stored (below).
        match delta_of {
            Some(base) => writer.write_delta(manifest, base, &head.digest, &sorted, &removed)?,
            None => writer.write_manifest(manifest)?,
        }
        conn.send(FrameType::Want, &want)?;
        conn.flush()?;

        let mut extensions = Vec::new();
        for (sha, size, path) in wanted {
            self.cancel.check()?;
            let frame = conn.expect(&[FrameType::Object, FrameType::Extend], "OBJECT or EXTEND")?;
            let p = &frame.payload;
            let got_sha = hex::encode(&p[..32]);
            let got_size = be_u64(&p[32..40]);
            if got_sha != sha || got_size != size {
                return Err(violation(format!(
                    "the sender sent object {got_sha} ({got_size} bytes) where {sha} ({size} bytes, for {path:?}) was due"
                )));
            }
            if frame.ty == FrameType::Object {
                let got = writer.receive_object(sha, size, true, |file, file_path| {
                    receive_data(conn, file, file_path, size, path)
                })?;
                if got != sha {
                    return Err(damaged(path, &got, sha));
                }
                session.stats.object_bytes += size;
            } else {
                let base_sha = hex::encode(&p[40..72]);
                let base_size = be_u64(&p[72..80]);
                let suffix_sha = hex::encode(&p[80..112]);
                let held = held_at
                    .get(path)
                    .is_some_and(|(sha, size)| *sha == base_sha && *size == base_size);
                if !held || base_size >= size {
                    return Err(violation(format!(
                        "the sender extends {path:?} from contents {base_sha} ({base_size} bytes) that this replica does not hold there"
                    )));
                }
                let suffix = size - base_size;
                let got = writer.receive_object(
                    &format!("{sha}.suffix"),
                    suffix,
                    false,
                    |file, file_path| receive_data(conn, file, file_path, suffix, path),
                )?;
                if got != suffix_sha {
                    return Err(damaged(path, &got, &suffix_sha));
                }
                extensions.push(Extension {
                    sha256: sha.to_string(),
                    size,
                    base_sha256: base_sha,
                    base_size,
                });
                session.stats.object_bytes += size - base_size;
                session.stats.objects_extended += 1;
            }
            session.stats.objects += 1;
        }

        let frame = conn.expect(&[FrameType::Commit], "COMMIT")?;
        let commit: Commit = conn.parse(&frame)?;
        if commit.txn != txn || commit.digest != head.digest {
            return Err(violation(format!(
                "the sender committed transaction {} with digest {}, not {txn} with {}",
                commit.txn, commit.digest, head.digest
            )));
        }
        let digest = writer.written_manifest()?.digest();
        if digest != head.digest {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "the delta does not produce the digest it announced ({} announced, {digest} reconstructed); nothing was stored",
                    head.digest
                ),
            ));
        }
        let meta = TxnMeta {
            format: META_FORMAT,
            txn: txn.to_string(),
            kind: kind.as_str().into(),
            sender: sender.to_string(),
            base: base.digest().map(str::to_string),
            digest: digest.clone(),
            entries: session.stats.entries,
            objects: session.stats.objects,
            object_bytes: session.stats.object_bytes,
            received: Stamp::now(),
            extensions,
        };
        let (dir, manifest) = writer.finish(&meta)?;
        conn.send_json(
            FrameType::Ack,
            &Commit {
                txn: txn.to_string(),
                digest: digest.clone(),
            },
        )?;
        conn.flush()?;
        // The new manifest is the next session's base: its contents are the
        // base's, less those replaced or removed, plus the upserted ones.
        for sha in dropped {
            release(&mut have, sha);
        }
        for sha in upserts.iter().filter_map(file_contents) {
            hold(&mut have, sha);
        }
        Ok((dir, digest, (manifest, have)))
    }
}

/// The receiver's base, its manifest read by a thread from the moment the
/// session knows it, or since the receiver started when the sender said
/// which kind it would open (a session that ends with BYE leaves the
/// thread behind), and read once: a manifest exchange and the delta after
/// it share it.
struct BaseReader {
    base: Base,
    kind: Kind,
    held: Held,
}

/// A base manifest as far as it was read: being read early (before the
/// session's lock), being read since the base was known, or read.
#[derive(Default)]
struct Held {
    early: Option<EarlyBase>,
    preload: Option<std::thread::JoinHandle<Result<Loaded>>>,
    loaded: Option<Loaded>,
}

impl Held {
    fn loaded(loaded: Loaded) -> Held {
        Held {
            early: None,
            preload: None,
            loaded: Some(loaded),
        }
    }
}

/// The bases a receiver keeps from one session to the next on the same
/// stream, by kind: the digest and what is held of it.
#[derive(Default)]
struct Kept {
    ca: Option<(String, Held)>,
    nc: Option<(String, Held)>,
}

impl Kept {
    fn slot(&mut self, kind: Kind) -> &mut Option<(String, Held)> {
        match kind {
            Kind::Ca => &mut self.ca,
            Kind::Nc => &mut self.nc,
        }
    }
}

/// The SHA-256 digests (raw) of a manifest's files, each with the number
/// of files that have it: contents the replica holds and need not be sent.
type Contents = FxHashMap<[u8; 32], u32>;

/// The contents of `e` when it is a file (raw SHA-256).
fn file_contents(e: &Entry) -> Option<[u8; 32]> {
    e.sha256
        .as_deref()
        .filter(|_| e.kind == EntryKind::File)
        .and_then(sha256_bytes)
}

/// Counts one more file with contents `sha`.
fn hold(contents: &mut Contents, sha: [u8; 32]) {
    *contents.entry(sha).or_insert(0) += 1;
}

/// Counts one file fewer with contents `sha` (gone when none is left).
fn release(contents: &mut Contents, sha: [u8; 32]) {
    if let Some(n) = contents.get_mut(&sha) {
        *n -= 1;
        if *n == 0 {
            contents.remove(&sha);
        }
    }
}

/// `manifest` with the contents its files have.
fn with_contents(manifest: Manifest) -> (Manifest, Contents) {
    let mut contents = Contents::default();
    for sha in manifest.entries().iter().filter_map(file_contents) {
        hold(&mut contents, sha);
    }
    (manifest, contents)
}

/// A base manifest read before the session held its lock (see
/// [`Receiver::expect_kind`]), by a thread: the digest it had, and what it
/// held.
struct EarlyBase(std::thread::JoinHandle<Result<Option<(String, Loaded)>>>);

/// A base manifest and the contents its files have.
type Loaded = (Manifest, Contents);

impl EarlyBase {
    fn start(state: &StateDir, kind: Kind) -> EarlyBase {
        let state = StateDir::for_kind(state.root(), kind);
        EarlyBase(std::thread::spawn(move || {
            let base = receiver_base(&state, kind.as_str())?;
            let Some(digest) = base.digest.clone() else {
                return Ok(None);
            };
            Ok(Some((digest, with_contents(base.manifest(kind)?))))
        }))
    }

    /// What was read, if it is the base `digest`.
    fn take(self, digest: &str) -> Option<(Manifest, Contents)> {
        match self.0.join() {
            Ok(Ok(Some((read, loaded)))) if read == digest => Some(loaded),
            _ => None,
        }
    }
}

impl Drop for Held {
    /// A base read for nothing (the session failed, or the last one ended)
    /// is freed on a thread of its own: at 100k certificates that is
    /// 200,000 allocations the sender would otherwise wait for before the
    /// receiver exits.
    fn drop(&mut self) {
        if self.early.is_some() || self.preload.is_some() || self.loaded.is_some() {
            crate::drop_in_background((self.early.take(), self.preload.take(), self.loaded.take()));
        }
    }
}

impl BaseReader {
    /// Reads `base` in a thread from now on, unless `early` is reading it,
    /// or the session before `held` it (same digest).
    fn start(base: Base, kind: Kind, early: Option<EarlyBase>, held: Option<Held>) -> BaseReader {
        let held = match held {
            Some(held) => {
                // (Only a first session reads early, and it holds nothing.)
                if let Some(early) = early {
                    crate::drop_in_background(early);
                }
                held
            }
            None => Held {
                preload: (early.is_none() && base.digest.is_some()).then(|| {
                    let base = base.clone();
                    std::thread::spawn(move || base.manifest(kind).map(with_contents))
                }),
                early,
                loaded: None,
            },
        };
        BaseReader { base, kind, held }
    }

    /// What is held of the base, with its digest, for the next session.
    fn keep(mut self) -> Option<(String, Held)> {
        let digest = self.base.digest.take()?;
        Some((digest, std::mem::take(&mut self.held)))
    }

    /// The base's digest (none: nothing received yet).
    fn digest(&self) -> Option<&str> {
        self.base.digest.as_deref()
    }

    /// The base manifest ([`Base::manifest`]), kept for a later
    /// [`take`](Self::take).
    fn manifest(&mut self) -> Result<&Manifest> {
        let loaded = self.take()?;
        Ok(&self.held.loaded.insert(loaded).0)
    }

    /// The base manifest and the contents its files have, taken.
    fn take(&mut self) -> Result<Loaded> {
        match self.held.loaded.take() {
            Some(loaded) => Ok(loaded),
            None => self.read(),
        }
    }

    fn read(&mut self) -> Result<Loaded> {
        let early = self.held.early.take().zip(self.base.digest.as_deref());
        if let Some(loaded) = early.and_then(|(early, digest)| early.take(digest)) {
            return Ok(loaded);
        }
        match self.held.preload.take() {
            Some(h) => crate::joined(h.join(), "reading the base manifest"),
            None => self.base.manifest(self.kind).map(with_contents),
        }
    }
}

/// Receives `len` bytes of `DATA` frames into `file`; returns their
/// SHA-256 (hex).
fn receive_data<S: Read + Write>(
    conn: &mut Conn<S>,
    file: &mut dyn Write,
    file_path: &std::path::Path,
    len: u64,
    path: &str,
) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        let frame = conn.expect(&[FrameType::Data], "DATA")?;
        let n = frame.payload.len() as u64;
        if n == 0 || n > left {
            return Err(violation(format!(
                "the sender sent a DATA frame of {n} bytes for {path:?}, which needs {left} more"
            )));
        }
        hasher.update(&frame.payload);
        file.write_all(&frame.payload)
            .map_err(|e| Error::io("write", file_path, e))?;
        left -= n;
    }
    Ok(hex::encode(hasher.finalize()))
}

fn damaged(path: &str, got: &str, want: &str) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "the contents received for {path:?} have SHA-256 {got}, not {want}: they were damaged in transit; nothing was stored"
        ),
    )
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

struct Session {
    sender: Option<String>,
    kind: Option<Kind>,
    stats: Stats,
    /// The base of the kind the sender said it would open, being read.
    early: Option<(Kind, EarlyBase)>,
}

/// A path of a delta: safe and replicated for `kind`.
fn check_path(kind: Kind, path: &str) -> Result<()> {
    validate_relative_path(path)?;
    if !is_allowed_path_of(kind, path) {
        let allowed = match kind {
            Kind::Ca => "only ca/..., ssl/crl.pem and ssl/certs/ca.pem are replicated",
            Kind::Nc => "a Node Classifier transaction may only hold the dump file groups.json",
        };
        return Err(Error::new(
            ErrorKind::UnsafePath,
            format!("unsafe path {path:?}: {allowed}"),
        ));
    }
    Ok(())
}

/// The sender's announced name, made safe for messages and files.
fn sanitize_host(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        .take(253)
        .collect();
    if clean.is_empty() {
        "unknown sender".into()
    } else {
        clean
    }
}
