//! The exec channel: the remote command's stdin and stdout as a byte stream,
//! its stderr collected (bounded) for error messages.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::{is_eagain, Deadline, Link};
use crate::{Error, ErrorKind, Result};

/// How much of the remote stderr is kept: its first and its last half of
/// this; anything between is counted and dropped.
pub const STDERR_LIMIT: usize = 64 * 1024;

/// How much remote stdout may be read ahead while a write waits for the
/// remote to accept data (so a command that echoes as it reads cannot
/// deadlock the pair). Past this, the write waits and eventually times out.
pub const READ_AHEAD_LIMIT: usize = 16 * 1024 * 1024;

/// How much of the remote stderr an error message quotes (its end).
const STDERR_IN_MESSAGES: usize = 2000;

const CHUNK: usize = 32 * 1024;

/// A command running on the remote host.
///
/// [`Read`] gives its stdout, [`Write`] feeds its stdin; both wait at most
/// the session's I/O timeout without progress, and their errors wrap a
/// [`crate::Error`] (get it back with [`Error::from_io_error`]): a broken
/// connection is [`ErrorKind::Network`] naming the host, a silent peer
/// [`ErrorKind::Timeout`]. Call [`send_eof`](Self::send_eof) when done
/// writing and [`finish`](Self::finish) for the exit status.
pub struct Channel {
    link: Arc<Link>,
    ch: ssh2::Channel,
    command: String,
    stderr: Captured,
    read_ahead: VecDeque<u8>,
    stdout_eof: bool,
    eof_sent: bool,
    status: Option<i32>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("host", &self.link.host)
            .field("port", &self.link.port)
            .field("command", &self.command)
            .field("status", &self.status)
            .finish()
    }
}

impl Channel {
    pub(super) fn new(link: Arc<Link>, ch: ssh2::Channel, command: &str) -> Channel {
        Channel {
            link,
            ch,
            command: command.to_string(),
            stderr: Captured::default(),
            read_ahead: VecDeque::new(),
            stdout_eof: false,
            eof_sent: false,
            status: None,
        }
    }

    /// The command that was asked for (the server may have run a forced
    /// command instead).
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Closes the remote command's stdin (it reads end of file). Further
    /// writes fail.
    pub fn send_eof(&mut self) -> Result<()> {
        if self.eof_sent {
            return Ok(());
        }
        let what = format!("closing the input of {}", shown_command(&self.command));
        let deadline = Deadline::after(self.link.io_timeout);
        loop {
            self.drain_stderr();
            match self.ch.send_eof() {
                Ok(()) => break,
                Err(e) if is_eagain(&e) => {
                    self.pump_read_ahead();
                    self.link
                        .wait(deadline, &what)
                        .map_err(|e| self.annotate(e))?;
                }
                Err(e) => return Err(self.annotate(self.link.ssh_error(&e, &what))),
            }
        }
        self.eof_sent = true;
        Ok(())
    }

    /// Waits for the remote command to end and returns its exit status.
    ///
    /// Sends end of file first if [`send_eof`](Self::send_eof) was not
    /// called, and discards stdout that was not read. A command killed by a
    /// signal is an [`ErrorKind::Io`] error; transport failures are
    /// `Network` or `Timeout`. Every error quotes the end of the remote
    /// stderr. A non-zero status is returned as is: the caller decides.
    pub fn finish(&mut self) -> Result<i32> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if !self.eof_sent {
            match self.send_eof() {
                Ok(()) => {}
                // The command may already have exited and closed the
                // channel; its status tells the rest.
                Err(e) if matches!(e.kind(), ErrorKind::Network | ErrorKind::Timeout) => {
                    return Err(e)
                }
                Err(_) => self.eof_sent = true,
            }
        }
        let mut sink = [0u8; CHUNK];
        while self.read_stdout(&mut sink)? > 0 {}
        let what = format!("waiting for {} to exit", shown_command(&self.command));
        let deadline = Deadline::after(self.link.io_timeout);
        loop {
            self.drain_stderr();
            match self.ch.wait_close() {
                Ok(()) => break,
                Err(e) if is_eagain(&e) => {
                    self.link
                        .wait(deadline, &what)
                        .map_err(|e| self.annotate(e))?;
                }
                Err(e) => return Err(self.annotate(self.link.ssh_error(&e, &what))),
            }
        }
        self.drain_stderr();
        if let Ok(signal) = self.ch.exit_signal() {
            if let Some(name) = signal.exit_signal {
                let err = Error::new(
                    ErrorKind::Io,
                    format!(
                        "{} on {}:{} was killed by signal {name}",
                        shown_command(&self.command),
                        self.link.host,
                        self.link.port
                    ),
                )
                .with_host(self.link.host.clone());
                return Err(self.annotate(err));
            }
        }
        let status = self.ch.exit_status().map_err(|e| {
            let err = self.link.ssh_error(&e, "reading the exit status");
            self.annotate(err)
        })?;
        self.status = Some(status);
        Ok(status)
    }

    /// The remote stderr received so far (at most 64 KiB, `STDERR_LIMIT`:
    /// its beginning and its end), as text.
    pub fn stderr(&mut self) -> String {
        if self.status.is_none() {
            self.drain_stderr();
        }
        self.stderr.text()
    }

    /// Drops the remote stderr received so far (a command that serves one
    /// request after another: what it said about the ones before).
    pub fn forget_stderr(&mut self) {
        self.drain_stderr();
        self.stderr = Captured::default();
    }

    /// Reads stdout: read-ahead first, then the channel, waiting up to the
    /// I/O timeout. `Ok(0)` at end of file.
    fn read_stdout(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.len());
            for (dst, src) in buf.iter_mut().zip(self.read_ahead.drain(..n)) {
                *dst = src;
            }
            return Ok(n);
        }
        if self.stdout_eof {
            return Ok(0);
        }
        let what = format!("reading from {}", shown_command(&self.command));
        let deadline = Deadline::after(self.link.io_timeout);
        loop {
            self.drain_stderr();
            match self.ch.read(buf) {
                Ok(0) if self.ch.eof() => {
                    self.stdout_eof = true;
                    return Ok(0);
                }
                Ok(0) => self
                    .link
                    .wait(deadline, &what)
                    .map_err(|e| self.annotate(e))?,
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.link
                        .wait(deadline, &what)
                        .map_err(|e| self.annotate(e))?;
                }
                Err(e) => {
                    let err = self.link.stream_error(&e, &what);
                    return Err(self.annotate(err));
                }
            }
        }
    }

    fn write_stdin(&mut self, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let shown = shown_command(&self.command);
        if self.eof_sent {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("cannot write to {shown}: its input was already closed"),
            )
            .with_host(self.link.host.clone()));
        }
        let what = format!("writing to {shown}");
        let deadline = Deadline::after(self.link.io_timeout);
        loop {
            self.drain_stderr();
            match self.ch.write(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    let err = self.link.stream_error(&e, &what);
                    return Err(self.annotate(err));
                }
            }
            // The remote is not taking data: keep its output flowing so it
            // can get back to reading, then wait for the socket.
            self.pump_read_ahead();
            if self.remote_exited() {
                let err = Error::new(
                    ErrorKind::Io,
                    format!(
                        "{shown} on {}:{} exited before reading all its input",
                        self.link.host, self.link.port
                    ),
                )
                .with_host(self.link.host.clone())
                .with_hint("its exit status and stderr tell why (Channel::finish)");
                return Err(self.annotate(err));
            }
            self.link
                .wait(deadline, &what)
                .map_err(|e| self.annotate(e))?;
        }
    }

    /// Whether the remote closed the channel (its command ended): it sent
    /// end of file, everything it sent was read, and it sent close.
    fn remote_exited(&mut self) -> bool {
        self.drain_stderr();
        if !self.read_ahead.is_empty() && !self.stdout_eof {
            return false;
        }
        // wait_close does not block here (non-blocking session): it only
        // reports whether the close already arrived.
        self.ch.eof() && self.ch.wait_close().is_ok()
    }

    /// Moves whatever stdout is already available into the read-ahead
    /// buffer, without waiting.
    fn pump_read_ahead(&mut self) {
        let mut buf = [0u8; CHUNK];
        while !self.stdout_eof && self.read_ahead.len() < READ_AHEAD_LIMIT {
            let want = CHUNK.min(READ_AHEAD_LIMIT - self.read_ahead.len());
            match self.ch.read(&mut buf[..want]) {
                Ok(0) => {
                    if self.ch.eof() {
                        self.stdout_eof = true;
                    }
                    break;
                }
                Ok(n) => self.read_ahead.extend(&buf[..n]),
                // Would block, or an error the next read or write reports.
                Err(_) => break,
            }
        }
    }

    /// Collects whatever stderr is available, without waiting.
    fn drain_stderr(&mut self) {
        let mut buf = [0u8; 4096];
        let mut stream = self.ch.stderr();
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.stderr.push(&buf[..n]),
            }
        }
    }

    /// Adds the end of the remote stderr to an error's message.
    fn annotate(&self, err: Error) -> Error {
        let Some(tail) = self.stderr.tail_for_message() else {
            return err;
        };
        let mut out = Error::new(
            err.kind(),
            format!("{}; remote stderr: {tail}", err.message()),
        );
        if let Some(host) = err.host() {
            out = out.with_host(host);
        }
        if let Some(path) = err.path() {
            out = out.with_path(path);
        }
        if let Some(hint) = err.hint() {
            out = out.with_hint(hint);
        }
        out
    }
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_stdout(buf).map_err(io::Error::from)
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_stdin(buf).map_err(io::Error::from)
    }

    /// Nothing to do: a write returns only once libssh2 handed its packet
    /// to the socket. (libssh2's own "flush" discards unread input, so it
    /// is deliberately not called.)
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The command as quoted in messages: backticks, shortened if long.
pub(super) fn shown_command(command: &str) -> String {
    const MAX: usize = 120;
    if command.chars().count() > MAX {
        let short: String = command.chars().take(MAX).collect();
        format!("`{short}...`")
    } else {
        format!("`{command}`")
    }
}

/// The first and last `STDERR_LIMIT / 2` bytes of a stream, and how many
/// bytes between them were dropped.
#[derive(Default)]
struct Captured {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl Captured {
    fn push(&mut self, mut data: &[u8]) {
        const HALF: usize = STDERR_LIMIT / 2;
        let room = HALF - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        self.tail.extend(data);
        if self.tail.len() > HALF {
            let excess = self.tail.len() - HALF;
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            out.push_str(&format!(
                "\n[... {} bytes of stderr not kept ...]\n",
                self.dropped
            ));
        }
        let (a, b) = self.tail.as_slices();
        out.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        out
    }

    /// The end of the text, on one line, for an error message.
    fn tail_for_message(&self) -> Option<String> {
        let text = self.text();
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let one_line = text.lines().map(str::trim).collect::<Vec<_>>().join(" | ");
        let count = one_line.chars().count();
        Some(if count > STDERR_IN_MESSAGES {
            let tail: String = one_line.chars().skip(count - STDERR_IN_MESSAGES).collect();
            format!("...{tail}")
        } else {
            one_line
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_keeps_head_and_tail() {
        let mut c = Captured::default();
        c.push(b"first line\n");
        assert_eq!(c.text(), "first line\n");
        c.push(&vec![b'x'; STDERR_LIMIT * 2]);
        c.push(b"\nlast line\n");
        let text = c.text();
        assert!(text.starts_with("first line\nxxx"));
        assert!(text.ends_with("xxx\nlast line\n"));
        assert!(text.contains("bytes of stderr not kept"));
        assert!(text.len() < STDERR_LIMIT + 100);
        let msg = c.tail_for_message().unwrap();
        assert!(msg.ends_with("xxx | last line"), "{msg}");
        assert!(msg.chars().count() <= STDERR_IN_MESSAGES + 3);
        assert!(Captured::default().tail_for_message().is_none());
    }

    #[test]
    fn long_commands_are_shortened() {
        assert_eq!(shown_command("cat"), "`cat`");
        assert!(shown_command(&"a".repeat(500)).ends_with("...`"));
    }
}
