//! Buffered SMTP I/O over any stream: command lines (through smtp-wire's `LineFramer`), DATA
//! content (through `DataReceiver`), BDAT chunks, and replies. Generic over the stream so the
//! same code runs before and after STARTTLS.

use smtp_wire::{DataLimits, DataReceiver, DataSummary, Framed, LineFramer, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 5321 §4.5.3.1.4: 512 octets with CRLF. AUTH lines carry tokens far longer than that
/// (an XOAUTH2 initial response is often 2–3 KB), and Exchange takes them, so we allow 16 KB.
const MAX_LINE: usize = 16 * 1024;

/// One unit of client input.
pub(crate) enum Input {
    /// A line, without its terminator.
    Line(Vec<u8>),
    /// A line over [`MAX_LINE`], discarded.
    TooLong,
    /// The client closed the connection.
    Eof,
}

pub(crate) struct Io<S> {
    stream: S,
    buf: Vec<u8>,
    framer: LineFramer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    pub(crate) fn new(stream: S) -> Self {
        Io { stream, buf: Vec::with_capacity(4096), framer: LineFramer::new(MAX_LINE) }
    }

    /// The stream, throwing away anything buffered: after STARTTLS, bytes the client sent
    /// before the handshake must not be read as commands (RFC 3207 §5, the command-injection bug).
    pub(crate) fn into_inner(self) -> S {
        self.stream
    }

    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next command line.
    pub(crate) async fn line(&mut self) -> std::io::Result<Input> {
        loop {
            match self.framer.poll(&self.buf) {
                Framed::Line { len, consumed } => {
                    let line = self.buf[..len].to_vec();
                    self.buf.drain(..consumed);
                    return Ok(Input::Line(line));
                }
                Framed::TooLong { consumed } => {
                    self.buf.drain(..consumed);
                    return Ok(Input::TooLong);
                }
                Framed::NeedMore { consumed } => {
                    self.buf.drain(..consumed);
                    if !self.fill().await? {
                        return Ok(Input::Eof);
                    }
                }
            }
        }
    }

    /// Sends a reply and flushes it (we answer each command as it comes, which is also what
    /// a PIPELINING client expects of a server that does not batch).
    pub(crate) async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        self.stream.write_all(&reply.to_bytes()).await?;
        self.stream.flush().await
    }

    /// The DATA content up to CRLF.CRLF; `None` if the client went away first.
    pub(crate) async fn data(&mut self, limits: DataLimits) -> std::io::Result<Option<(Vec<u8>, DataSummary)>> {
        let mut rx = DataReceiver::new(limits);
        let mut out = Vec::new();
        loop {
            let feed = rx.feed(&self.buf, &mut out);
            self.buf.drain(..feed.consumed);
            if feed.done {
                return Ok(Some((out, rx.summary())));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// A BDAT chunk of `size` octets, appended to `out` while `out` stays within `cap` (the
    /// rest is read and dropped); false if the client went away first.
    pub(crate) async fn chunk(&mut self, size: u64, out: &mut Vec<u8>, cap: u64) -> std::io::Result<bool> {
        let mut left = size;
        loop {
            let take = (self.buf.len() as u64).min(left) as usize;
            let room = cap.saturating_sub(out.len() as u64) as usize;
            out.extend_from_slice(&self.buf[..take.min(room)]);
            self.buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                return Ok(true);
            }
            if !self.fill().await? {
                return Ok(false);
            }
        }
    }
}
