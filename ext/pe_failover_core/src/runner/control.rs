//! The active watcher's control socket, `<state_dir>/watch.sock`: a
//! [`Runner::sync`](super::Runner::sync) started while the watcher runs
//! (by hand, by cron, by the `pe_failover_ca_replica` type on every Puppet
//! run) asks the watcher to run the round instead of scanning the CA
//! itself. The watcher knows from inotify what changed since its last scan
//! and holds an SSH session to each replica, so the answer costs a rescan
//! of the changed paths and one exchange per replica, not a walk of every
//! certificate.
//!
//! One request per connection, one JSON line each way:
//!
//! - request: `{"version":1,"config_digest":"<sha256 of the config file>","replica":null,"noop":false}`
//! - while the round runs, the watcher sends an empty line every
//!   [`KEEPALIVE`]; then one of `{"run":{...}}` (the [`SyncRun`]),
//!   `{"failed":{"kind":"...","message":"..."}}` or `{"declined":"why"}`.
//!
//! A watcher that runs under another configuration file declines, and the
//! caller does the sync itself; so does a caller that finds no socket, no
//! listener, a peer that stops answering for [`SILENCE`] or has not
//! answered within [`ROUND_LIMIT`], or a connection that ends without an
//! answer (the round is safe to run again). Each connection is served by a
//! thread of its own, so callers asking at once all wait for the round
//! (at most [`MAX_CONNECTIONS`]; more are declined). The socket is mode
//! 0600 in the state directory, and the watcher only serves peers with its
//! own user id (checked with `SO_PEERCRED`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SyncRun;
use crate::watch::Waker;
use crate::{Error, ErrorKind, Result};

/// The socket's name in the state directory.
pub(crate) const SOCKET: &str = "watch.sock";

/// Version of the request and answer lines.
const VERSION: u32 = 1;

/// How often the watcher shows it is still at work on a request.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// How long a caller waits for a line before it gives up on the watcher.
const SILENCE: Duration = Duration::from_secs(30);

/// How long a caller waits for the answer at most, keepalives or not (a
/// watcher stuck in a round): then it syncs itself.
const ROUND_LIMIT: Duration = Duration::from_secs(30 * 60);

/// How long the watcher waits for a request line once connected.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// Longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// Connections served at once; one more is declined (its caller syncs
/// itself).
const MAX_CONNECTIONS: usize = 16;

/// How long a caller waits on the watcher (see [`ask_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Patience {
    /// Longest wait for a line (an answer or a keepalive).
    pub silence: Duration,
    /// Longest wait for the answer, keepalives or not.
    pub round: Duration,
}

impl Default for Patience {
    /// [`SILENCE`] and [`ROUND_LIMIT`].
    fn default() -> Self {
        Patience {
            silence: SILENCE,
            round: ROUND_LIMIT,
        }
    }
}

/// `d` in a caller's message: whole minutes from two on, else seconds.
fn waited(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 120 && s % 60 == 0 && d.subsec_nanos() == 0 => format!("{} minutes", s / 60),
        _ => crate::seconds(d),
    }
}

/// What a caller asks of the watcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SyncRequest {
    pub version: u32,
    /// The digest of the caller's configuration file: it must be the
    /// watcher's.
    pub config_digest: String,
    /// Only this replica (host or `host:port`); all when `None`.
    pub replica: Option<String>,
    pub noop: bool,
}

impl SyncRequest {
    pub(crate) fn new(config_digest: &str, replica: Option<&str>, noop: bool) -> Self {
        SyncRequest {
            version: VERSION,
            config_digest: config_digest.to_string(),
            replica: replica.map(str::to_string),
            noop,
        }
    }
}

/// The watcher's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    /// The round ran.
    Run(Box<SyncRun>),
    /// The round could not run (the CA could not be read, the replica is
    /// not configured): the error the caller's own sync would return.
    Failed { kind: String, message: String },
    /// Not served: the caller runs the sync itself.
    Declined(String),
}

impl Answer {
    pub(crate) fn from_result(result: Result<SyncRun>) -> Answer {
        match result {
            Ok(run) => Answer::Run(Box::new(run)),
            Err(e) => Answer::Failed {
                kind: e.kind().as_str().to_string(),
                message: e.to_string(),
            },
        }
    }
}

/// A request the watcher's loop is to serve; answered with
/// [`answer`](Self::answer) (dropped unanswered, the caller syncs itself).
pub(crate) struct Asked {
    pub request: SyncRequest,
    reply: mpsc::Sender<Answer>,
}

impl Asked {
    pub(crate) fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }
}

/// The listening socket and the thread that accepts on it; stopped and the
/// socket removed when dropped (requests not yet answered are closed
/// unanswered: their callers sync themselves).
pub(crate) struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket bound here (removed only if still it).
    id: (u64, u64),
    /// Shut down to end the accepting thread's wait.
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    asked: Option<mpsc::Receiver<Asked>>,
    waker: Waker,
}

impl ControlServer {
    /// Listens on `path`; requests are taken with [`pending`](Self::pending),
    /// and [`waker`](Self::waker) is woken for each. A socket file nobody
    /// listens on (left by a watcher that died) is replaced; one another
    /// watcher serves is left to it ([`ErrorKind::Refused`]).
    pub(crate) fn start(path: PathBuf) -> Result<ControlServer> {
        ControlServer::start_with(path, KEEPALIVE)
    }

    /// [`start`](Self::start), sending a keepalive every `keepalive` while
    /// a request waits for its round.
    pub(crate) fn start_with(path: PathBuf, keepalive: Duration) -> Result<ControlServer> {
        let waker = Waker::new()?;
        if UnixStream::connect(&path).is_ok() {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "another watcher already serves sync requests on {}; this one does not (is a second watcher running with the same state directory?)",
                    path.display()
                ),
            )
            .with_path(&path));
        }
        // (Left by a watcher that died.)
        crate::fsutil::remove_any(&path)?;
        let listener =
            Arc::new(UnixListener::bind(&path).map_err(|e| Error::io("listen on", &path, e))?);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("set permissions of", &path, e))?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let server = Server {
            tx,
            waker: waker.clone(),
            // SAFETY: geteuid cannot fail.
            allowed: unsafe { libc::geteuid() },
            keepalive,
        };
        let accepting = Arc::clone(&listener);
        let thread = thread::Builder::new()
            .name("pe_failover-control".into())
            .spawn(move || {
                let serving = Arc::new(AtomicUsize::new(0));
                while !stopping.load(Ordering::SeqCst) {
                    match accepting.accept() {
                        Ok((conn, _)) => server.clone().spawn(conn, &serving),
                        // (Out of descriptors, say: not a busy loop.)
                        Err(_) => thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot start the control socket's thread: {e}"),
                )
            })?;
        Ok(ControlServer {
            path,
            id: (meta.dev(), meta.ino()),
            listener,
            stop,
            thread: Some(thread),
            asked: Some(rx),
            waker,
        })
    }

    /// The requests waiting for the loop.
    pub(crate) fn pending(&self) -> Vec<Asked> {
        self.asked
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    /// Woken whenever a request arrives.
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Requests still queued are dropped unanswered.
        drop(self.asked.take());
        // Ends a waiting accept (whether or not the socket file is still
        // there to connect to).
        // SAFETY: the listener is open (held here) for the duration of the call.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The user id of the process at the other end of `conn`.
fn peer_uid(conn: &UnixStream) -> Option<u32> {
    // SAFETY: an all-zero ucred is a valid value to be overwritten.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which lives
    // for the call; the descriptor is open.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// What serves one connection: where requests go, and to whom.
#[derive(Clone)]
struct Server {
    tx: mpsc::Sender<Asked>,
    waker: Waker,
    /// The only peer user id served.
    allowed: u32,
    /// How often to show that the round is still running.
    keepalive: Duration,
}

/// Writes `answer` as one line (failures are the caller's to notice: it
/// then syncs itself).
fn answer_now(writer: &mut UnixStream, answer: &Answer) {
    if let Ok(mut bytes) = serde_json::to_vec(answer) {
        bytes.push(b'\n');
        let _ = writer.write_all(&bytes);
    }
}

/// One connection counted among those served; given back when dropped
/// (however its thread ends).
struct Slot {
    serving: Arc<AtomicUsize>,
    /// Connections counted, this one included, when it was taken.
    held: usize,
}

impl Slot {
    fn take(serving: &Arc<AtomicUsize>) -> Slot {
        Slot {
            serving: Arc::clone(serving),
            held: serving.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// Serves `conn` on a thread of its own, counted in `serving`; past
    /// [`MAX_CONNECTIONS`] it is declined at once instead.
    fn spawn(self, mut conn: UnixStream, serving: &Arc<AtomicUsize>) {
        let slot = Slot::take(serving);
        if slot.held > MAX_CONNECTIONS {
            if peer_uid(&conn) == Some(self.allowed) {
                let _ = conn.set_write_timeout(Some(REQUEST_WAIT));
                let why = format!("it is already serving {MAX_CONNECTIONS} requests");
                answer_now(&mut conn, &Answer::Declined(why));
            }
            return;
        }
        // (Not started: the connection and the slot go with the closure, and
        // the caller syncs itself.)
        let _ = thread::Builder::new()
            .name("pe_failover-control-conn".into())
            .spawn(move || {
                let _slot = slot;
                self.serve(conn);
            });
    }

    /// One connection: reads the request, hands it to the loop and writes
    /// its answer, with keepalives meanwhile. A peer whose user id is not
    /// the one allowed is closed unanswered, as is anything that goes wrong.
    fn serve(&self, conn: UnixStream) {
        if peer_uid(&conn) != Some(self.allowed) {
            return;
        }
        let _ = conn.set_read_timeout(Some(REQUEST_WAIT));
        let _ = conn.set_write_timeout(Some(SILENCE));
        let Ok(mut writer) = conn.try_clone() else {
            return;
        };
        let mut line = String::new();
        if BufReader::new((&conn).take(MAX_REQUEST))
            .read_line(&mut line)
            .is_err()
        {
            return;
        }
        self.answer(&mut writer, &line);
    }

    /// Answers the request `line` on `writer`.
    fn answer(&self, writer: &mut UnixStream, line: &str) {
        let request: SyncRequest = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                answer_now(
                    writer,
                    &Answer::Declined(format!("not a sync request: {e}")),
                );
                return;
            }
        };
        if request.version != VERSION {
            answer_now(
                writer,
                &Answer::Declined(format!(
                    "request version {} (this watcher speaks {VERSION})",
                    request.version
                )),
            );
            return;
        }
        let (reply, answers) = mpsc::channel();
        if self.tx.send(Asked { request, reply }).is_err() {
            return;
        }
        self.waker.wake();
        loop {
            match answers.recv_timeout(self.keepalive) {
                Ok(answer) => {
                    answer_now(writer, &answer);
                    return;
                }
                // The caller may have gone; the round goes on regardless.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = writer.write_all(b"\n");
                }
                // The watcher stopped without an answer.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// What became of a request sent to the watcher (see [`ask`]).
#[derive(Debug)]
pub(crate) enum Reply {
    /// The watcher ran it: its run, or why it failed.
    Ran(Box<Result<SyncRun>>),
    /// No watcher serves the socket (none runs): the caller syncs itself.
    NoWatcher,
    /// A watcher was reached but did not run the request, for the reason
    /// given: the caller syncs itself, and says why.
    NotRun(String),
}

/// Asks the watcher serving `<state_dir>/watch.sock`, if one does, to run
/// `request`, waiting as long as [`Patience::default`] allows.
pub(crate) fn ask(state_dir: &Path, request: &SyncRequest) -> Reply {
    ask_with(state_dir, request, Patience::default())
}

/// [`ask`], waiting on the watcher as long as `patience` allows.
pub(crate) fn ask_with(state_dir: &Path, request: &SyncRequest, patience: Patience) -> Reply {
    let path = state_dir.join(SOCKET);
    let mut conn = match UnixStream::connect(&path) {
        Ok(conn) => conn,
        // No socket, or one a watcher that ended left behind.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Reply::NoWatcher
        }
        Err(e) => {
            return Reply::NotRun(format!(
                "its socket {} could not be reached: {e}",
                path.display()
            ))
        }
    };
    let sent = (|| {
        conn.set_read_timeout(Some(patience.silence))?;
        conn.set_write_timeout(Some(patience.silence))?;
        let mut bytes = serde_json::to_vec(request)?;
        bytes.push(b'\n');
        conn.write_all(&bytes)
    })();
    // A watcher that declines answers at once and closes the connection,
    // maybe before the request was written: its answer is still there to
    // read then.
    let unsent = match sent {
        Ok(()) => None,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Some(e)
        }
        Err(e) => return Reply::NotRun(format!("the request could not be sent: {e}")),
    };
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    let asked = std::time::Instant::now();
    loop {
        if asked.elapsed() > patience.round {
            return Reply::NotRun(format!(
                "it had not finished after {}",
                waited(patience.round)
            ));
        }
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) => {
                return Reply::NotRun(match unsent {
                    Some(e) => format!("the request could not be sent: {e}"),
                    None => {
                        "it closed the connection unanswered (stopping, or not this user's)".into()
                    }
                })
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Reply::NotRun(format!("it sent nothing for {}", waited(patience.silence)))
            }
            Err(e) => return Reply::NotRun(format!("its answer could not be read: {e}")),
        }
        if line.trim().is_empty() {
            continue;
        }
        return match serde_json::from_str::<Answer>(&line) {
            Ok(Answer::Run(run)) => Reply::Ran(Box::new(Ok(*run))),
            Ok(Answer::Failed { kind, message }) => Reply::Ran(Box::new(Err(Error::new(
                crate::protocol::kind_from_name(&kind),
                message,
            )))),
            Ok(Answer::Declined(why)) => Reply::NotRun(format!("it declined: {why}")),
            Err(e) => Reply::NotRun(format!("its answer could not be read: {e}")),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> SyncRun {
        SyncRun {
            ok: true,
            noop: false,
            digest: Some("d".repeat(64)),
            entries: 3,
            lines: vec!["a line".into()],
            replicas: Vec::new(),
            nc: None,
            via_watcher: false,
        }
    }

    /// A caller's patience: silence and round limit in milliseconds.
    fn patience(silence: u64, round: u64) -> Patience {
        Patience {
            silence: Duration::from_millis(silence),
            round: Duration::from_millis(round),
        }
    }

    /// A server on a fresh socket and a thread standing for the watcher's
    /// loop, answering each request with what `answer` makes of it.
    fn serving(
        answer: impl Fn(&SyncRequest) -> Option<Answer> + Send + 'static,
    ) -> (tempfile::TempDir, Arc<AtomicBool>, thread::JoinHandle<()>) {
        serving_batches(KEEPALIVE, move |asked| {
            for asked in asked.drain(..) {
                // None: dropped unanswered.
                if let Some(a) = answer(&asked.request) {
                    asked.answer(a);
                }
            }
        })
    }

    /// [`serving`] with keepalives every `keepalive`, by a loop that hands
    /// `each` the requests it holds (new ones added) every few
    /// milliseconds: those it leaves in place wait for a later turn.
    fn serving_batches(
        keepalive: Duration,
        mut each: impl FnMut(&mut Vec<Asked>) + Send + 'static,
    ) -> (tempfile::TempDir, Arc<AtomicBool>, thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let server = ControlServer::start_with(dir.path().join(SOCKET), keepalive).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let h = thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                held.extend(server.pending());
                each(&mut held);
                thread::sleep(Duration::from_millis(5));
            }
        });
        (dir, done, h)
    }

    #[test]
    fn callers_asking_at_once_all_wait_for_the_round() {
        // The round runs once three requests are in: a server that reads
        // one request at a time never gets there.
        let (dir, done, h) = serving_batches(KEEPALIVE, |asked| {
            if asked.len() == 3 {
                for a in asked.drain(..) {
                    a.answer(Answer::from_result(Ok(run())));
                }
            }
        });
        let patience = patience(10_000, 60_000);
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let dir = dir.path().to_path_buf();
                thread::spawn(move || ask_with(&dir, &SyncRequest::new("c", None, false), patience))
            })
            .collect();
        for caller in callers {
            match caller.join().unwrap() {
                Reply::Ran(run) => assert_eq!(run.unwrap().lines, vec!["a line"]),
                other => panic!("not run by the watcher: {other:?}"),
            }
        }
        done.store(true, Ordering::SeqCst);
        h.join().unwrap();
    }

    #[test]
    fn a_caller_gives_up_on_a_round_past_its_limit_or_a_silent_watcher() {
        // Why a caller with `patience` gave up on a watcher that sends a
        // keepalive every `keepalive` and never answers.
        let gave_up = |keepalive: Duration, patience: Patience| {
            let (dir, done, h) = serving_batches(keepalive, |_| {});
            let reply = ask_with(dir.path(), &SyncRequest::new("c", None, false), patience);
            done.store(true, Ordering::SeqCst);
            h.join().unwrap();
            match reply {
                Reply::NotRun(why) => why,
                other => panic!("{other:?}"),
            }
        };
        let ms = Duration::from_millis;
        // Keepalives all along: the round limit ends the wait.
        let why = gave_up(ms(20), patience(10_000, 300));
        assert_eq!(why, "it had not finished after 0.3s");
        // No keepalive within the silence allowed.
        let why = gave_up(ms(60_000), patience(200, 60_000));
        assert_eq!(why, "it sent nothing for 0.2s");
        assert_eq!(waited(ROUND_LIMIT), "30 minutes");
        assert_eq!(waited(SILENCE), "30s");
    }

    #[test]
    fn a_decline_sent_before_the_request_was_written_is_read() {
        // A watcher past its limit answers and closes at once: the request
        // written after that fails (the peer is gone), the answer is read.
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            answer_now(&mut conn, &Answer::Declined("it is busy".into()));
        });
        let mut request = SyncRequest::new("c", None, false);
        // (Larger than the socket's buffer, so that writing it meets the
        // closed end whatever the timing.)
        request.replica = Some("r".repeat(4 << 20));
        match ask_with(dir.path(), &request, patience(10_000, 60_000)) {
            Reply::NotRun(why) => assert_eq!(why, "it declined: it is busy"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn connections_past_the_limit_are_declined_at_once_until_some_end() {
        // The round ends (every request held is answered) once `release`.
        let release = Arc::new(AtomicBool::new(false));
        let released = Arc::clone(&release);
        let (dir, done, h) = serving_batches(KEEPALIVE, move |asked| {
            if released.load(Ordering::SeqCst) {
                for a in asked.drain(..) {
                    a.answer(Answer::from_result(Ok(run())));
                }
            }
        });
        let patience = patience(10_000, 60_000);
        // MAX_CONNECTIONS callers wait on a round that does not end...
        let mut waiting = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut conn = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
            let line = serde_json::to_string(&SyncRequest::new("c", None, false)).unwrap();
            conn.write_all(format!("{line}\n").as_bytes()).unwrap();
            waiting.push(conn);
        }
        // ...so one more is turned away (and syncs itself), not kept waiting.
        match ask_with(dir.path(), &SyncRequest::new("c", None, false), patience) {
            Reply::NotRun(why) => assert_eq!(
                why,
                format!("it declined: it is already serving {MAX_CONNECTIONS} requests")
            ),
            other => panic!("{other:?}"),
        }
        // Once the round has answered them, their places are free again.
        release.store(true, Ordering::SeqCst);
        for conn in waiting {
            // (Keepalives, empty lines, may come first.)
            let answer = BufReader::new(conn)
                .lines()
                .map(Result::unwrap)
                .find(|line| !line.trim().is_empty())
                .expect("an answer");
            assert!(answer.starts_with("{\"run\""), "{answer}");
        }
        let reply = (0..100).find_map(|_| {
            match ask_with(dir.path(), &SyncRequest::new("c", None, false), patience) {
                Reply::Ran(run) => Some(run),
                // (A serving thread may not have ended yet.)
                Reply::NotRun(why) if why.contains("already serving") => {
                    thread::sleep(Duration::from_millis(10));
                    None
                }
                other => panic!("{other:?}"),
            }
        });
        assert!(reply.is_some(), "still declined once the round had ended");
        done.store(true, Ordering::SeqCst);
        h.join().unwrap();
    }

    #[test]
    fn answers_reach_the_caller_and_the_rest_leaves_it_to_sync_itself() {
        let (dir, done, h) = serving(|r| match r.replica.as_deref() {
            Some("run") => Some(Answer::from_result(Ok(run()))),
            Some("failed") => Some(Answer::from_result(Err(Error::new(
                ErrorKind::Refused,
                "not now",
            )))),
            Some("declined") => Some(Answer::Declined("another configuration".into())),
            _ => None,
        });
        let ask_for = |replica: &str| ask(dir.path(), &SyncRequest::new("c", Some(replica), false));
        let not_run = |replica: &str| match ask_for(replica) {
            Reply::NotRun(why) => why,
            other => panic!("{replica}: {other:?}"),
        };
        let Reply::Ran(answer) = ask_for("run") else {
            panic!("not run")
        };
        let got = answer.unwrap();
        assert_eq!(got.lines, run().lines);
        assert_eq!(got.digest, run().digest);
        let Reply::Ran(answer) = ask_for("failed") else {
            panic!("no answer")
        };
        let err = answer.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("not now"), "{err}");
        let why = not_run("declined");
        assert_eq!(why, "it declined: another configuration");
        let why = not_run("dropped");
        assert!(why.contains("closed the connection unanswered"), "{why}");
        done.store(true, Ordering::SeqCst);
        h.join().unwrap();
        // The server is gone with the loop: its socket too.
        assert!(!dir.path().join(SOCKET).exists());
        assert!(matches!(ask_for("run"), Reply::NoWatcher));
    }

    #[test]
    fn a_request_of_another_version_or_shape_is_declined_unseen_by_the_loop() {
        let (dir, done, h) = serving(|_| panic!("the loop saw a bad request"));
        let talk = |line: &str| {
            let mut conn = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
            conn.write_all(line.as_bytes()).unwrap();
            let mut out = String::new();
            conn.read_to_string(&mut out).unwrap();
            out
        };
        let mut request = SyncRequest::new("c", None, false);
        request.version = VERSION + 1;
        let line = serde_json::to_string(&request).unwrap() + "\n";
        assert!(talk(&line).contains("declined"), "{}", talk(&line));
        assert!(talk("hello\n").contains("not a sync request"));
        done.store(true, Ordering::SeqCst);
        h.join().unwrap();
    }

    #[test]
    fn the_server_stops_even_when_its_socket_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let server = ControlServer::start(dir.path().join(SOCKET)).unwrap();
        std::fs::remove_file(dir.path().join(SOCKET)).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            drop(server);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the server did not stop"
        );
    }

    #[test]
    fn a_peer_with_another_user_id_is_closed_unanswered() {
        let (tx, rx) = mpsc::channel();
        let (mut client, server_end) = UnixStream::pair().unwrap();
        let line = serde_json::to_string(&SyncRequest::new("c", None, false)).unwrap() + "\n";
        client.write_all(line.as_bytes()).unwrap();
        // SAFETY: geteuid cannot fail.
        let other = unsafe { libc::geteuid() }.wrapping_add(1);
        let server = Server {
            tx,
            waker: Waker::new().unwrap(),
            allowed: other,
            keepalive: KEEPALIVE,
        };
        let h = thread::spawn(move || server.serve(server_end));
        // (Dropped if it came, so that the server thread ends either way.)
        let reached = rx.recv_timeout(Duration::from_secs(2)).is_ok();
        h.join().unwrap();
        assert!(!reached, "the request reached the loop");
        // Closed with the request unread: an end of file or a reset.
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out);
        assert!(out.is_empty());
    }
}
