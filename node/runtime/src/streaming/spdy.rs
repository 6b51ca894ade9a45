//! SPDY/3.1 framing and a minimal session, the transport the kubelet's streaming
//! protocols used before WebSocket (and kubectl < 1.30 still uses).
//!
//! Frames: the control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY,
//! HEADERS and WINDOW_UPDATE, and DATA (with FIN). Header blocks are zlib streams primed
//! with the SPDY/3 dictionary, one compression context per direction for the whole
//! connection (flushed with SYNC_FLUSH after each block); flate2's miniz backend cannot set
//! a dictionary, which is why the workspace enables flate2's `zlib-rs` backend.
//!
//! [`Session`] is the server side: streams are opened by the client (every kubelet
//! streaming protocol works that way); each SYN_STREAM is answered with a SYN_REPLY and
//! reported as [`Event::Open`], its data as [`Event::Data`] and its half-close as
//! [`Event::Fin`]. PINGs are answered. Received DATA is acknowledged with WINDOW_UPDATE so
//! a flow-controlling peer never stalls; our own sends do not wait for the peer's window,
//! as `moby/spdystream` (the Go implementation every kubelet client and server uses) never
//! sends WINDOW_UPDATE and ignores it on receipt.

use std::collections::HashMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// The protocol version in control frames.
pub const VERSION: u16 = 3;
/// DATA / control frame flag: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: protocol error.
pub const PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: the stream is refused.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: cancel.
pub const CANCEL: u32 = 5;
/// SETTINGS id of the initial window size.
const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// Largest frame payload accepted (SPDY's length field is 24 bits; nothing we speak needs
/// more than this).
const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed header block accepted.
const MAX_HEADERS: usize = 256 * 1024;
/// How long closing waits for queued frames to go out.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest DATA payload we send.
pub const MAX_DATA: usize = 32 * 1024;

/// SPDY errors; any of them ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// Reading or writing the connection failed.
    #[error("spdy connection: {0}")]
    Io(#[from] std::io::Error),
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame whose payload does not fit its type, or is too large.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// A header block that does not decompress or decode.
    #[error("header block: {0}")]
    Headers(String),
}

/// Header name/value pairs (names lower-case, as SPDY/3 requires).
pub type Headers = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream.
        id: u32,
        /// Flags (FIN, UNIDIRECTIONAL).
        flags: u8,
        /// Its headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream.
        id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream.
        id: u32,
        /// Why.
        status: u32,
    },
    /// Settings: (id, value) pairs.
    Settings(Vec<(u32, u32)>),
    /// A ping to echo.
    Ping(u32),
    /// The sender will open no more streams.
    GoAway {
        /// The last stream the sender processed.
        last: u32,
        /// Why.
        status: u32,
    },
    /// More headers on a stream.
    HeadersFrame {
        /// The stream.
        id: u32,
        /// Flags (FIN).
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// The receiver consumed `delta` more bytes of the stream.
    WindowUpdate {
        /// The stream.
        id: u32,
        /// Bytes.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// The stream.
        id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Payload.
        data: Vec<u8>,
    },
    /// A control frame type we do not know (ignored, as the spec asks).
    Unknown(u16),
}

/// The SPDY/3 header compression dictionary (a protocol constant: length-prefixed common
/// header names and values, then raw common strings).
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
        "charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dict = Vec::with_capacity(1500);
    for word in WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(TAIL.as_bytes());
    dict
}

/// The header (de)compression contexts of one direction pair of a connection.
pub struct HeaderCodec {
    compress: Compress,
    decompress: Decompress,
    dictionary: Vec<u8>,
    primed: bool,
}

impl std::fmt::Debug for HeaderCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderCodec")
    }
}

impl Default for HeaderCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCodec {
    /// Fresh contexts for a new connection.
    pub fn new() -> Self {
        HeaderCodec {
            compress: Compress::new(Compression::default(), true),
            decompress: Decompress::new(true),
            dictionary: dictionary(),
            primed: false,
        }
    }

    /// Encodes and compresses a header block.
    pub fn encode(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        if !self.primed {
            self.compress
                .set_dictionary(&self.dictionary)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            let used = (self.compress.total_in() - before) as usize;
            input = &input[used..];
            // Done once all input is in and the flush left spare room in `out`.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// Decompresses and decodes a header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let bad = |what: &str| SpdyError::Headers(what.to_string());
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if raw.len() > MAX_HEADERS {
                return Err(bad("too large"));
            }
            raw.reserve(1024);
            let before = self.decompress.total_in();
            let result = self
                .decompress
                .decompress_vec(input, &mut raw, FlushDecompress::Sync);
            let used = (self.decompress.total_in() - before) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if input.is_empty() && raw.len() < raw.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.decompress
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| SpdyError::Headers(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Headers(e.to_string())),
            }
        }
        let mut cursor = &raw[..];
        let take_u32 = |cursor: &mut &[u8]| -> Result<u32, SpdyError> {
            let (head, rest) = cursor.split_first_chunk::<4>().ok_or(bad("truncated"))?;
            *cursor = rest;
            Ok(u32::from_be_bytes(*head))
        };
        let count = take_u32(&mut cursor)?;
        let mut headers = Vec::new();
        for _ in 0..count {
            let field = |cursor: &mut &[u8]| -> Result<String, SpdyError> {
                let len = take_u32(cursor)? as usize;
                if cursor.len() < len {
                    return Err(bad("truncated"));
                }
                let (value, rest) = cursor.split_at(len);
                *cursor = rest;
                String::from_utf8(value.to_vec()).map_err(|_| bad("not UTF-8"))
            };
            let name = field(&mut cursor)?.to_ascii_lowercase();
            let value = field(&mut cursor)?;
            // Several values of one name are NUL-separated.
            for v in value.split('\0') {
                headers.push((name.clone(), v.to_string()));
            }
        }
        Ok(headers)
    }
}

fn stream_id(bytes: &[u8]) -> Option<u32> {
    let head = bytes.first_chunk::<4>()?;
    Some(u32::from_be_bytes(*head) & 0x7fff_ffff)
}

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes(slice.try_into().ok()?))
}

/// Reads one frame; `None` at a clean end of the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    codec: &mut HeaderCodec,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match reader.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let len = (usize::from(head[5]) << 16) | (usize::from(head[6]) << 8) | usize::from(head[7]);
    if len > MAX_FRAME {
        return Err(SpdyError::Malformed("oversized"));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    if head[0] & 0x80 == 0 {
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        return Ok(Some(Frame::Data {
            id,
            flags,
            data: payload,
        }));
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    if version != VERSION {
        return Err(SpdyError::Version(version));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let p = &payload[..];
    let frame = match kind {
        1 => {
            let id = stream_id(p).ok_or(SpdyError::Malformed("SYN_STREAM"))?;
            let block = p.get(10..).ok_or(SpdyError::Malformed("SYN_STREAM"))?;
            Frame::SynStream {
                id,
                flags,
                headers: codec.decode(block)?,
            }
        }
        2 | 8 => {
            let name = if kind == 2 { "SYN_REPLY" } else { "HEADERS" };
            let id = stream_id(p).ok_or(SpdyError::Malformed(name))?;
            let headers = codec.decode(p.get(4..).ok_or(SpdyError::Malformed(name))?)?;
            if kind == 2 {
                Frame::SynReply { id, flags, headers }
            } else {
                Frame::HeadersFrame { id, flags, headers }
            }
        }
        3 => Frame::RstStream {
            id: stream_id(p).ok_or(SpdyError::Malformed("RST_STREAM"))?,
            status: word(p, 4).ok_or(SpdyError::Malformed("RST_STREAM"))?,
        },
        4 => {
            let count = word(p, 0).ok_or(SpdyError::Malformed("SETTINGS"))? as usize;
            if p.len() != 4 + count.saturating_mul(8) {
                return Err(SpdyError::Malformed("SETTINGS"));
            }
            let settings = (0..count)
                .filter_map(|i| {
                    let at = 4 + i * 8;
                    Some((word(p, at)? & 0x00ff_ffff, word(p, at + 4)?))
                })
                .collect();
            Frame::Settings(settings)
        }
        6 => Frame::Ping(word(p, 0).ok_or(SpdyError::Malformed("PING"))?),
        7 => Frame::GoAway {
            last: stream_id(p).ok_or(SpdyError::Malformed("GOAWAY"))?,
            status: word(p, 4).unwrap_or(0),
        },
        9 => Frame::WindowUpdate {
            id: stream_id(p).ok_or(SpdyError::Malformed("WINDOW_UPDATE"))?,
            delta: word(p, 4).ok_or(SpdyError::Malformed("WINDOW_UPDATE"))? & 0x7fff_ffff,
        },
        other => Frame::Unknown(other),
    };
    Ok(Some(frame))
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Result<Vec<u8>, SpdyError> {
    if payload.len() >= 1 << 24 {
        return Err(SpdyError::Malformed("oversized"));
    }
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encodes a frame (header blocks through `codec`).
pub fn encode_frame(frame: &Frame, codec: &mut HeaderCodec) -> Result<Vec<u8>, SpdyError> {
    let pair = |a: u32, b: u32| {
        let mut p = a.to_be_bytes().to_vec();
        p.extend_from_slice(&b.to_be_bytes());
        p
    };
    match frame {
        Frame::SynStream { id, flags, headers } => {
            let mut p = pair(*id, 0);
            p.extend_from_slice(&[0, 0]);
            p.extend(codec.encode(headers)?);
            control(1, *flags, &p)
        }
        Frame::SynReply { id, flags, headers } | Frame::HeadersFrame { id, flags, headers } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                2
            } else {
                8
            };
            let mut p = id.to_be_bytes().to_vec();
            p.extend(codec.encode(headers)?);
            control(kind, *flags, &p)
        }
        Frame::RstStream { id, status } => control(3, 0, &pair(*id, *status)),
        Frame::Settings(settings) => {
            let mut p = (settings.len() as u32).to_be_bytes().to_vec();
            for (id, value) in settings {
                p.extend_from_slice(&pair(*id & 0x00ff_ffff, *value));
            }
            control(4, 0, &p)
        }
        Frame::Ping(id) => control(6, 0, &id.to_be_bytes()),
        Frame::GoAway { last, status } => control(7, 0, &pair(*last, *status)),
        Frame::WindowUpdate { id, delta } => control(9, 0, &pair(*id, *delta)),
        Frame::Data { id, flags, data } => {
            if data.len() >= 1 << 24 {
                return Err(SpdyError::Malformed("oversized"));
            }
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            out.push(*flags);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
            Ok(out)
        }
        Frame::Unknown(kind) => control(*kind, 0, &[]),
    }
}

/// What the client did on the session.
#[derive(Debug)]
pub enum Event {
    /// Opened (and we accepted) a stream.
    Open {
        /// The stream.
        id: u32,
        /// Its headers.
        headers: Headers,
    },
    /// Data on a stream.
    Data {
        /// The stream.
        id: u32,
        /// Payload.
        data: Vec<u8>,
    },
    /// The client will send no more on the stream (FIN or reset).
    Fin {
        /// The stream.
        id: u32,
    },
}

/// The value of header `name` (lower-case) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A server-side session: send frames through [`Session::send`], receive the client's
/// stream events from [`Session::events`].
#[derive(Debug)]
pub struct Session {
    out: mpsc::Sender<Frame>,
    /// The client's streams and data, in order; ends with the connection.
    pub events: mpsc::Receiver<Event>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A handle that sends frames on a session.
#[derive(Debug, Clone)]
pub struct Sender(mpsc::Sender<Frame>);

impl Sender {
    /// Sends `data` on stream `id` in frames of at most [`MAX_DATA`] bytes; false once the
    /// connection is gone.
    pub async fn data(&self, id: u32, data: &[u8]) -> bool {
        for chunk in data.chunks(MAX_DATA) {
            let frame = Frame::Data {
                id,
                flags: 0,
                data: chunk.to_vec(),
            };
            if self.0.send(frame).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes stream `id` (an empty DATA frame with FIN).
    pub async fn fin(&self, id: u32) {
        let _ = self
            .0
            .send(Frame::Data {
                id,
                flags: FLAG_FIN,
                data: Vec::new(),
            })
            .await;
    }

    /// Resets stream `id`.
    pub async fn reset(&self, id: u32, status: u32) {
        let _ = self.0.send(Frame::RstStream { id, status }).await;
    }
}

impl Session {
    /// Starts serving SPDY on `io`, whose HTTP upgrade is already answered.
    pub fn start<S>(io: S) -> Session
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(io);
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let (event_tx, events) = mpsc::channel::<Event>(64);
        let write_task = tokio::spawn(async move {
            let mut codec = HeaderCodec::new();
            while let Some(frame) = out_rx.recv().await {
                let bytes = match encode_frame(&frame, &mut codec) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        tracing::debug!(error = %e, "encoding a spdy frame");
                        break;
                    }
                };
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
                // Flush when nothing else is queued.
                if out_rx.is_empty() && writer.flush().await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        let replies = out_tx.clone();
        let read_task = tokio::spawn(async move {
            let mut codec = HeaderCodec::new();
            let mut open: HashMap<u32, ()> = HashMap::new();
            loop {
                let frame = match read_frame(&mut reader, &mut codec).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading a spdy frame");
                        let _ = replies
                            .send(Frame::GoAway {
                                last: 0,
                                status: PROTOCOL_ERROR,
                            })
                            .await;
                        break;
                    }
                };
                match frame {
                    Frame::SynStream { id, flags, headers } => {
                        // Client streams are odd and new.
                        if id % 2 == 0 || open.contains_key(&id) {
                            let _ = replies
                                .send(Frame::RstStream {
                                    id,
                                    status: PROTOCOL_ERROR,
                                })
                                .await;
                            continue;
                        }
                        open.insert(id, ());
                        let reply = Frame::SynReply {
                            id,
                            flags: 0,
                            headers: Vec::new(),
                        };
                        if replies.send(reply).await.is_err()
                            || event_tx.send(Event::Open { id, headers }).await.is_err()
                        {
                            break;
                        }
                        if flags & FLAG_FIN != 0 && event_tx.send(Event::Fin { id }).await.is_err()
                        {
                            break;
                        }
                    }
                    Frame::Data { id, flags, data } => {
                        if !open.contains_key(&id) {
                            continue;
                        }
                        if !data.is_empty() {
                            let delta = data.len() as u32;
                            let _ = replies.send(Frame::WindowUpdate { id, delta }).await;
                            if event_tx.send(Event::Data { id, data }).await.is_err() {
                                break;
                            }
                        }
                        if flags & FLAG_FIN != 0 && event_tx.send(Event::Fin { id }).await.is_err()
                        {
                            break;
                        }
                    }
                    Frame::HeadersFrame { id, flags, .. } => {
                        if flags & FLAG_FIN != 0
                            && open.contains_key(&id)
                            && event_tx.send(Event::Fin { id }).await.is_err()
                        {
                            break;
                        }
                    }
                    Frame::RstStream { id, .. } => {
                        if open.remove(&id).is_some()
                            && event_tx.send(Event::Fin { id }).await.is_err()
                        {
                            break;
                        }
                    }
                    // Client pings are odd; answer them.
                    Frame::Ping(id) if id % 2 == 1 => {
                        let _ = replies.send(Frame::Ping(id)).await;
                    }
                    Frame::GoAway { .. } => break,
                    Frame::Settings(settings) => {
                        tracing::trace!(?settings, initial_window = ?settings.iter().find(|(k, _)| *k == SETTINGS_INITIAL_WINDOW_SIZE), "spdy settings");
                    }
                    Frame::Ping(_)
                    | Frame::SynReply { .. }
                    | Frame::WindowUpdate { .. }
                    | Frame::Unknown(_) => {}
                }
            }
        });
        Session {
            out: out_tx,
            events,
            tasks: vec![read_task, write_task],
        }
    }

    /// A handle for sending.
    pub fn sender(&self) -> Sender {
        Sender(self.out.clone())
    }

    /// Stops accepting frames, lets queued frames go out and closes the connection.
    pub async fn close(self) {
        let Session {
            out,
            events,
            mut tasks,
        } = self;
        let _ = out.send(Frame::GoAway { last: 0, status: 0 }).await;
        drop(out);
        drop(events);
        if let Some(reader) = tasks.first() {
            reader.abort();
        }
        // The writer ends once every sender is gone; a peer that stopped reading gets a
        // bounded wait, then the connection is dropped.
        for mut task in tasks.drain(..) {
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        let dict = dictionary();
        assert_eq!(&dict[..11], b"\0\0\0\x07options");
        assert!(dict.ends_with(b",*,enq=0."));
        assert_eq!(dict.len(), 1423);
    }

    #[tokio::test]
    async fn frames_round_trip_with_one_compression_context() {
        let mut sender = HeaderCodec::new();
        let frames = vec![
            Frame::SynStream {
                id: 1,
                flags: 0,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynStream {
                id: 3,
                flags: FLAG_FIN,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "80".into()),
                ],
            },
            Frame::SynReply {
                id: 3,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                id: 1,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
            Frame::RstStream {
                id: 5,
                status: CANCEL,
            },
            Frame::Settings(vec![(SETTINGS_INITIAL_WINDOW_SIZE, 65536)]),
            Frame::Ping(7),
            Frame::WindowUpdate { id: 1, delta: 10 },
            Frame::GoAway { last: 3, status: 0 },
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend(encode_frame(frame, &mut sender).unwrap());
        }
        let mut receiver = HeaderCodec::new();
        let mut reader = &wire[..];
        for frame in &frames {
            assert_eq!(
                read_frame(&mut reader, &mut receiver)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(frame)
            );
        }
        assert_eq!(read_frame(&mut reader, &mut receiver).await.unwrap(), None);
    }

    #[tokio::test]
    async fn malformed_frames_are_errors() {
        let mut codec = HeaderCodec::new();
        // A SYN_STREAM whose header block is garbage.
        let mut wire = control(1, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]).unwrap();
        assert!(read_frame(&mut &wire[..], &mut codec).await.is_err());
        // A PING too short.
        wire = control(6, 0, &[0, 0]).unwrap();
        assert!(matches!(
            read_frame(&mut &wire[..], &mut HeaderCodec::new()).await,
            Err(SpdyError::Malformed("PING"))
        ));
        // Another version.
        wire = control(6, 0, &[0, 0, 0, 1]).unwrap();
        wire[1] = 2;
        assert!(matches!(
            read_frame(&mut &wire[..], &mut HeaderCodec::new()).await,
            Err(SpdyError::Version(2))
        ));
    }
}
