//! Frames on the wire: `[type u8][length u32 big-endian][payload]`, with a
//! buffered connection that bounds every frame it reads and counts bytes.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{kind_from_name, violation, ErrorMsg, Limits, MAX_CONTROL_FRAME};
use crate::{Error, ErrorKind, Result};

/// Bytes of a frame header: type (1) and length (4).
pub const HEADER_LEN: usize = 5;

/// Exact payload length of an `OBJECT` frame: SHA-256 and size.
pub(crate) const OBJECT_HEADER_LEN: u32 = 40;

/// Exact payload length of an `EXTEND` frame: SHA-256 and size of the new
/// contents, SHA-256 and size of the base contents, SHA-256 of the suffix.
pub(crate) const EXTEND_HEADER_LEN: u32 = 112;

const WRITE_BUFFER: usize = 64 * 1024;
const READ_BUFFER: usize = 64 * 1024;

/// The type of a frame (see the [protocol table](super)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Sender → receiver: version, kind, sender host, transaction id.
    Hello = 1,
    /// Receiver → sender: base digest held, role.
    Welcome = 2,
    /// Either way: an error kind and message; ends the session.
    Error = 3,
    /// Sender → receiver: send me your manifest.
    ManifestRequest = 4,
    /// Receiver → sender: digest and entry count of its manifest.
    ManifestHead = 5,
    /// A batch of manifest entries.
    Entries = 6,
    /// Sender → receiver: base, new digest, upsert and remove counts.
    DeltaHead = 7,
    /// Sender → receiver: a batch of removed paths.
    Removes = 8,
    /// Receiver → sender: bitmap of the objects it lacks.
    Want = 9,
    /// Sender → receiver: the SHA-256 and size of the next object.
    Object = 10,
    /// Sender → receiver: a chunk of the current object.
    Data = 11,
    /// Sender → receiver: commit the transaction.
    Commit = 12,
    /// Receiver → sender: the transaction is stored.
    Ack = 13,
    /// Sender → receiver: nothing to send; end of session.
    Bye = 14,
    /// Sender → receiver: the next object is contents the receiver holds
    /// plus a suffix (sent in the `DATA` frames that follow).
    Extend = 15,
}

impl FrameType {
    /// The frame type with wire value `b`, if any.
    pub fn from_byte(b: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match b {
            1 => Hello,
            2 => Welcome,
            3 => Error,
            4 => ManifestRequest,
            5 => ManifestHead,
            6 => Entries,
            7 => DeltaHead,
            8 => Removes,
            9 => Want,
            10 => Object,
            11 => Data,
            12 => Commit,
            13 => Ack,
            14 => Bye,
            15 => Extend,
            _ => return None,
        })
    }

    /// The name used in the documentation and in errors (`"HELLO"`, ...).
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Hello => "HELLO",
            Welcome => "WELCOME",
            Error => "ERROR",
            ManifestRequest => "MANIFEST_REQUEST",
            ManifestHead => "MANIFEST_HEAD",
            Entries => "ENTRIES",
            DeltaHead => "DELTA_HEAD",
            Removes => "REMOVES",
            Want => "WANT",
            Object => "OBJECT",
            Data => "DATA",
            Commit => "COMMIT",
            Ack => "ACK",
            Bye => "BYE",
            Extend => "EXTEND",
        }
    }

    /// The largest payload a frame of this type may carry under `limits`.
    pub fn max_len(self, limits: &Limits) -> u32 {
        use FrameType::*;
        match self {
            Entries | Removes | Want | Data => limits.max_frame,
            Object => OBJECT_HEADER_LEN,
            Extend => EXTEND_HEADER_LEN,
            _ => MAX_CONTROL_FRAME,
        }
    }
}

/// Encodes one frame. `payload` must be shorter than 4 GiB (longer ones
/// are cut to a length the receiver will refuse anyway).
pub fn encode_frame(ty: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(ty as u8);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// One frame read from the wire.
#[derive(Debug)]
pub(crate) struct Frame {
    pub ty: FrameType,
    pub payload: Vec<u8>,
}

/// A framed, buffered, byte-counting connection over one stream.
pub(crate) struct Conn<S> {
    stream: S,
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
    sent: u64,
    received: u64,
    limits: Limits,
    /// Who is at the other end, for messages ("the receiver", "the sender").
    peer: &'static str,
    write_broken: bool,
    peer_sent_error: bool,
}

impl<S: Read + Write> Conn<S> {
    pub(crate) fn new(stream: S, limits: Limits, peer: &'static str) -> Self {
        Conn {
            stream,
            rbuf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(WRITE_BUFFER),
            sent: 0,
            received: 0,
            limits,
            peer,
            write_broken: false,
            peer_sent_error: false,
        }
    }

    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the peer ended the session with an `ERROR` frame (then there
    /// is no point answering it with one).
    pub(crate) fn peer_sent_error(&self) -> bool {
        self.peer_sent_error
    }

    /// Queues one frame (written when the buffer fills or on `flush`).
    pub(crate) fn send(&mut self, ty: FrameType, payload: &[u8]) -> Result<()> {
        let limit = ty.max_len(&self.limits) as usize;
        if payload.len() > limit {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "refusing to send a {} frame of {} bytes, more than its limit of {limit} bytes",
                    ty.name(),
                    payload.len()
                ),
            ));
        }
        let mut header = [0u8; HEADER_LEN];
        header[0] = ty as u8;
        header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        if payload.len() >= WRITE_BUFFER {
            self.flush_buffer()?;
            self.write_all_counted(&header)?;
            self.write_all_counted(payload)?;
            return Ok(());
        }
        self.wbuf.extend_from_slice(&header);
        self.wbuf.extend_from_slice(payload);
        if self.wbuf.len() >= WRITE_BUFFER {
            self.flush_buffer()?;
        }
        Ok(())
    }

    /// Queues one frame with a JSON payload.
    pub(crate) fn send_json<T: Serialize>(&mut self, ty: FrameType, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot encode a {} frame: {e}", ty.name()),
            )
        })?;
        self.send(ty, &bytes)
    }

    /// Sends an `ERROR` frame for `err` and flushes, ignoring failures (the
    /// connection may already be gone).
    pub(crate) fn send_error(&mut self, err: &Error) {
        let msg = ErrorMsg {
            kind: err.kind().as_str().to_string(),
            message: err.to_string(),
        };
        if self.send_json(FrameType::Error, &msg).is_ok() {
            let _ = self.flush();
        }
    }

    fn flush_buffer(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let result = self.write_all_counted(&buf);
        self.wbuf = buf;
        self.wbuf.clear();
        result
    }

    fn write_all_counted(&mut self, bytes: &[u8]) -> Result<()> {
        match self.stream.write_all(bytes) {
            Ok(()) => {
                self.sent += bytes.len() as u64;
                Ok(())
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn write_error(&mut self, e: io::Error) -> Error {
        if matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            self.write_broken = true;
        }
        Error::new(
            ErrorKind::Network,
            format!("cannot write to {}: {e}", self.peer),
        )
    }

    /// Writes everything queued and flushes the stream.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.flush_buffer()?;
        if let Err(e) = self.stream.flush() {
            return Err(self.write_error(e));
        }
        Ok(())
    }

    /// Fills `out` from the stream. `Ok(false)` on a clean end of stream
    /// before the first byte.
    fn read_exact_counted(&mut self, out: &mut [u8], waiting_for: &str) -> Result<bool> {
        let mut filled = 0;
        while filled < out.len() {
            if self.rpos == self.rend {
                let want = out.len() - filled;
                if want >= self.rbuf.len() {
                    // Large payloads go straight into `out`.
                    let n = self.read_some(&mut out[filled..], waiting_for)?;
                    if n == 0 {
                        return self.eof(filled, waiting_for);
                    }
                    filled += n;
                    continue;
                }
                let mut buf = std::mem::take(&mut self.rbuf);
                let n = self.read_some(&mut buf, waiting_for);
                self.rbuf = buf;
                let n = n?;
                if n == 0 {
                    return self.eof(filled, waiting_for);
                }
                self.rpos = 0;
                self.rend = n;
            }
            let n = (self.rend - self.rpos).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
            self.rpos += n;
            filled += n;
        }
        Ok(true)
    }

    fn read_some(&mut self, buf: &mut [u8], waiting_for: &str) -> Result<usize> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    self.received += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Network,
                        format!(
                            "the connection to {} broke while waiting for {waiting_for}: {e}",
                            self.peer
                        ),
                    ))
                }
            }
        }
    }

    fn eof(&self, filled: usize, waiting_for: &str) -> Result<bool> {
        if filled == 0 {
            return Ok(false);
        }
        Err(self.mid_frame_eof(waiting_for))
    }

    fn mid_frame_eof(&self, waiting_for: &str) -> Error {
        Error::new(
            ErrorKind::Network,
            format!(
                "{} closed the connection in the middle of a frame (while waiting for {waiting_for})",
                self.peer
            ),
        )
    }

    /// Reads the next frame, after flushing what is queued. The length is
    /// checked against the type's limit before the payload is read.
    pub(crate) fn recv(&mut self, waiting_for: &str) -> Result<Frame> {
        self.flush()?;
        self.recv_unflushed(waiting_for)
    }

    fn recv_unflushed(&mut self, waiting_for: &str) -> Result<Frame> {
        let mut header = [0u8; HEADER_LEN];
        if !self.read_exact_counted(&mut header, waiting_for)? {
            return Err(Error::new(
                ErrorKind::Network,
                format!(
                    "{} closed the connection (while waiting for {waiting_for})",
                    self.peer
                ),
            ));
        }
        let Some(ty) = FrameType::from_byte(header[0]) else {
            return Err(violation(format!(
                "{} sent an unknown frame type 0x{:02x} (while waiting for {waiting_for}); it speaks another protocol, or something else writes to the stream (a login banner or shell profile output on the receiving host?)",
                self.peer, header[0]
            )));
        };
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let limit = ty.max_len(&self.limits);
        if len > limit {
            return Err(violation(format!(
                "{} sent a {} frame of {len} bytes, more than the limit of {limit} bytes for that frame type",
                self.peer,
                ty.name()
            )));
        }
        if matches!(ty, FrameType::Object | FrameType::Extend) && len != limit {
            return Err(violation(format!(
                "{} sent an {} frame of {len} bytes; it must be exactly {limit}",
                self.peer,
                ty.name()
            )));
        }
        let mut payload = vec![0u8; len as usize];
        if len > 0 && !self.read_exact_counted(&mut payload, waiting_for)? {
            return Err(self.mid_frame_eof(waiting_for));
        }
        Ok(Frame { ty, payload })
    }

    /// Reads the next frame and requires one of `wanted`. An `ERROR` frame
    /// becomes an error of the kind it names.
    pub(crate) fn expect(&mut self, wanted: &[FrameType], waiting_for: &str) -> Result<Frame> {
        let frame = self.recv(waiting_for)?;
        self.check(frame, wanted, waiting_for)
    }

    fn check(&mut self, frame: Frame, wanted: &[FrameType], waiting_for: &str) -> Result<Frame> {
        if frame.ty == FrameType::Error && !wanted.contains(&FrameType::Error) {
            self.peer_sent_error = true;
            return Err(self.peer_error(&frame));
        }
        if !wanted.contains(&frame.ty) {
            return Err(violation(format!(
                "{} sent {} while {waiting_for} was expected",
                self.peer,
                frame.ty.name()
            )));
        }
        Ok(frame)
    }

    /// The error an `ERROR` frame from the peer stands for.
    pub(crate) fn peer_error(&self, frame: &Frame) -> Error {
        match serde_json::from_slice::<ErrorMsg>(&frame.payload) {
            Ok(msg) => Error::new(
                kind_from_name(&msg.kind),
                format!("{} answered: {}", self.peer, msg.message),
            ),
            Err(e) => violation(format!("{} sent a malformed ERROR frame: {e}", self.peer)),
        }
    }

    /// After a write failed because the peer closed its end: the error the
    /// peer sent before closing, if it sent one.
    pub(crate) fn pending_peer_error(&mut self) -> Option<Error> {
        if !self.write_broken {
            return None;
        }
        self.wbuf.clear();
        // Frames the peer sent before its ERROR (none in this protocol's
        // turns, but be lenient) are skipped.
        for _ in 0..4 {
            match self.recv_unflushed("an error report") {
                Ok(f) if f.ty == FrameType::Error => return Some(self.peer_error(&f)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Parses a JSON payload.
    pub(crate) fn parse<T: DeserializeOwned>(&self, frame: &Frame) -> Result<T> {
        serde_json::from_slice(&frame.payload).map_err(|e| {
            violation(format!(
                "{} sent a malformed {} frame: {e}",
                self.peer,
                frame.ty.name()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn frames_round_trip_and_oversize_ones_are_refused_unread() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut raw = a.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut tx = Conn::new(a, Limits::default(), "the test peer");
            tx.send(FrameType::Data, &[7u8; 100_000]).unwrap();
            tx.send(FrameType::Bye, b"{}").unwrap();
            tx.flush().unwrap();
            tx.sent()
        });
        let mut rx = Conn::new(b, Limits::default(), "the test peer");
        let f = rx.recv("data").unwrap();
        assert_eq!((f.ty, f.payload.len()), (FrameType::Data, 100_000));
        assert_eq!(rx.recv("bye").unwrap().ty, FrameType::Bye);
        assert_eq!(writer.join().unwrap(), rx.received());

        raw.write_all(&[FrameType::Hello as u8, 0, 1, 0, 1])
            .unwrap();
        let err = rx.recv("hello").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.to_string().contains("limit of 65536 bytes"), "{err}");

        raw.write_all(&[0x42, 0, 0, 0, 0]).unwrap();
        let err = rx.recv("hello").unwrap_err();
        assert!(err.to_string().contains("unknown frame type 0x42"), "{err}");
    }
}
