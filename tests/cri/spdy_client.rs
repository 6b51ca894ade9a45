//! A small SPDY/3.1 client for the CRI streaming server, written from the protocol (its
//! framing does not share code with the runtime's; only the SPDY/3 compression dictionary,
//! a protocol constant, is taken from there), so it checks both runtimes: containerd's
//! server validates this client, this client validates ours.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::Lab;
use crate::stream::{ExecOutput, Input};

const FIN: u8 = 1;

struct Conn {
    tcp: TcpStream,
    deflate: Compress,
    inflate: Decompress,
    dict: Vec<u8>,
    primed: bool,
    next_id: u32,
}

enum Frame {
    Reply(u32),
    Data(u32, u8, Vec<u8>),
    Reset(u32),
    Other,
}

impl Conn {
    /// Connects (from the lab's netns) and upgrades `url` offering `protocols`; returns
    /// the connection and the protocol the server picked.
    async fn open(lab: &Lab, url: &str, protocols: &[&str]) -> Result<(Conn, String)> {
        let rest = url.strip_prefix("http://").context("not an http URL")?;
        let (host, path) = rest.split_once('/').context("URL without path")?;
        let host = host.to_string();
        let connect_to = host.clone();
        let std_stream = lab.node.run_in(move || {
            let stream = std::net::TcpStream::connect(&connect_to)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })?;
        let mut tcp = TcpStream::from_std(std_stream)?;
        let mut request = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        );
        for p in protocols {
            request.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tcp
                .read_u8()
                .await
                .context("reading the upgrade response")?;
            head.push(byte);
            ensure!(head.len() < 16384, "response head too long");
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        ensure!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade refused: {head:?}"
        );
        let protocol = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("x-stream-protocol-version"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let conn = Conn {
            tcp,
            deflate: Compress::new(Compression::default(), true),
            inflate: Decompress::new(true),
            dict: ferrokube_runtime::streaming::spdy::dictionary(),
            primed: false,
            next_id: 1,
        };
        Ok((conn, protocol))
    }

    fn block(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (n, v) in headers {
            for s in [n, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        if !self.primed {
            self.deflate.set_dictionary(&self.dict)?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 1024);
        self.deflate
            .compress_vec(&raw, &mut out, FlushCompress::Sync)?;
        ensure!(out.len() < out.capacity(), "header block did not fit");
        Ok(out)
    }

    async fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) -> Result<()> {
        let mut frame = vec![0x80, 3];
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.push(flags);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(payload);
        self.tcp.write_all(&frame).await?;
        Ok(())
    }

    /// Opens a stream with `headers`; returns its ID.
    async fn syn(&mut self, headers: &[(&str, &str)]) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 2;
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend(self.block(headers)?);
        self.control(1, 0, &payload).await?;
        Ok(id)
    }

    async fn data(&mut self, id: u32, flags: u8, data: &[u8]) -> Result<()> {
        let mut frame = id.to_be_bytes().to_vec();
        frame.push(flags);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(data);
        self.tcp.write_all(&frame).await?;
        Ok(())
    }

    /// The next frame; `None` at the end of the connection.
    async fn read(&mut self) -> Result<Option<Frame>> {
        let mut head = [0u8; 8];
        if let Err(e) = self.tcp.read_exact(&mut head).await {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => Ok(None),
                _ => Err(e.into()),
            };
        }
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut payload = vec![0u8; len];
        self.tcp.read_exact(&mut payload).await?;
        let id = |p: &[u8]| -> Result<u32> {
            Ok(u32::from_be_bytes(p.get(..4).context("short frame")?.try_into()?) & 0x7fff_ffff)
        };
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data(id(&head)?, head[4], payload)));
        }
        let frame = match u16::from_be_bytes([head[2], head[3]]) {
            2 => {
                // Keep the inflate context in step even though reply headers are unused.
                self.inflate_block(payload.get(4..).context("short SYN_REPLY")?)?;
                Frame::Reply(id(&payload)?)
            }
            3 => Frame::Reset(id(&payload)?),
            8 => {
                self.inflate_block(payload.get(4..).context("short HEADERS")?)?;
                Frame::Other
            }
            6 => {
                // Answer server pings.
                self.control(6, 0, &payload).await?;
                Frame::Other
            }
            1 => bail!("the server opened a stream"),
            _ => Frame::Other,
        };
        Ok(Some(frame))
    }

    fn inflate_block(&mut self, block: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() * 8 + 4096);
        let before = self.inflate.total_in();
        match self
            .inflate
            .decompress_vec(block, &mut out, FlushDecompress::Sync)
        {
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                self.inflate.set_dictionary(&self.dict)?;
                let used = (self.inflate.total_in() - before) as usize;
                self.inflate.decompress_vec(
                    block.get(used..).context("inflate")?,
                    &mut out,
                    FlushDecompress::Sync,
                )?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(out)
    }

    /// Reads until every stream in `ids` got its SYN_REPLY.
    async fn replies(&mut self, ids: &[u32]) -> Result<()> {
        let mut missing: Vec<u32> = ids.to_vec();
        while !missing.is_empty() {
            match self.read().await? {
                Some(Frame::Reply(id)) => missing.retain(|m| *m != id),
                Some(Frame::Reset(id)) => bail!("stream {id} reset"),
                Some(_) => {}
                None => bail!("connection closed before the replies"),
            }
        }
        Ok(())
    }
}

/// Which exec streams to open.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Runs an exec URL over SPDY to completion: opens the streams, sends `input` in order,
/// reads until the error stream and the output streams are finished.
pub async fn exec(
    lab: &Lab,
    url: &str,
    protocols: &[&str],
    streams: Streams,
    input: &[Input],
) -> Result<ExecOutput> {
    let (mut conn, protocol) = Conn::open(lab, url, protocols).await?;
    let mut out = ExecOutput {
        protocol,
        status: Value::Null,
        ..Default::default()
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run_exec(&mut conn, streams, input, &mut out),
    )
    .await
    {
        Ok(result) => result.map(|()| out),
        Err(_) => bail!("spdy exec did not end within 30s; so far {out:?}"),
    }
}

async fn run_exec(
    conn: &mut Conn,
    streams: Streams,
    input: &[Input],
    out: &mut ExecOutput,
) -> Result<()> {
    let error = conn.syn(&[("streamtype", "error")]).await?;
    let mut ids = vec![error];
    let mut kinds = HashMap::new();
    for (wanted, kind) in [
        (streams.stdin, "stdin"),
        (streams.stdout, "stdout"),
        (streams.stderr, "stderr"),
        (streams.tty, "resize"),
    ] {
        if wanted {
            let id = conn.syn(&[("streamtype", kind)]).await?;
            ids.push(id);
            kinds.insert(kind, id);
        }
    }
    conn.replies(&ids).await?;
    let mut error_data = Vec::new();
    // Streams the server has not finished yet.
    let mut pending: Vec<u32> = [
        Some(error),
        kinds.get("stdout").copied(),
        kinds.get("stderr").copied(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let stdout = kinds.get("stdout").copied();
    let stderr = kinds.get("stderr").copied();
    let step = async |conn: &mut Conn,
                      out: &mut ExecOutput,
                      pending: &mut Vec<u32>,
                      error_data: &mut Vec<u8>|
           -> Result<bool> {
        match conn.read().await? {
            None => Ok(false),
            Some(Frame::Data(id, flags, data)) => {
                if Some(id) == stdout {
                    out.stdout.extend_from_slice(&data);
                } else if Some(id) == stderr {
                    out.stderr.extend_from_slice(&data);
                } else if id == error {
                    error_data.extend_from_slice(&data);
                }
                if flags & FIN != 0 {
                    pending.retain(|p| *p != id);
                }
                Ok(true)
            }
            Some(Frame::Reset(id)) => {
                pending.retain(|p| *p != id);
                Ok(true)
            }
            Some(_) => Ok(true),
        }
    };
    for item in input {
        match item {
            Input::Stdin(bytes) => {
                let id = *kinds.get("stdin").context("no stdin stream")?;
                conn.data(id, 0, bytes).await?;
            }
            Input::CloseStdin => {
                let id = *kinds.get("stdin").context("no stdin stream")?;
                conn.data(id, FIN, &[]).await?;
            }
            Input::Resize(width, height) => {
                let id = *kinds.get("resize").context("no resize stream")?;
                let size = serde_json::json!({"Width": width, "Height": height}).to_string();
                conn.data(id, 0, format!("{size}\n").as_bytes()).await?;
            }
            Input::WaitFor(needle) => {
                while !out
                    .stdout
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
                {
                    if !step(conn, out, &mut pending, &mut error_data).await? {
                        bail!("stream ended before stdout showed {needle:?}: {out:?}");
                    }
                }
            }
        }
    }
    while !pending.is_empty() {
        if !step(conn, out, &mut pending, &mut error_data).await? {
            break;
        }
    }
    if !error_data.is_empty() {
        out.status = serde_json::from_slice(&error_data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&error_data).into_owned()));
    } else if pending.is_empty() {
        // Pre-v4 protocols write nothing on success.
        out.status = serde_json::json!({"status": "Success"});
    }
    Ok(())
}

/// One port-forward request over SPDY (`portforward.k8s.io`): an error and a data stream
/// for `port`; sends `send` and reads the data stream until it holds `expect`.
pub async fn port_forward(
    lab: &Lab,
    url: &str,
    port: u16,
    send: &[u8],
    expect: &[u8],
) -> Result<Vec<u8>> {
    let (mut conn, protocol) = Conn::open(lab, url, &["portforward.k8s.io"]).await?;
    ensure!(protocol == "portforward.k8s.io", "protocol {protocol:?}");
    let port_s = port.to_string();
    let run = async {
        let error = conn
            .syn(&[
                ("streamtype", "error"),
                ("port", &port_s),
                ("requestid", "0"),
            ])
            .await?;
        let data_id = conn
            .syn(&[
                ("streamtype", "data"),
                ("port", &port_s),
                ("requestid", "0"),
            ])
            .await?;
        conn.replies(&[error, data_id]).await?;
        conn.data(data_id, 0, send).await?;
        let mut data = Vec::new();
        while !data.windows(expect.len()).any(|w| w == expect) {
            match conn.read().await? {
                Some(Frame::Data(id, _, payload)) if id == data_id => data.extend(payload),
                Some(Frame::Data(id, _, payload)) if id == error && !payload.is_empty() => {
                    bail!("port-forward error: {}", String::from_utf8_lossy(&payload))
                }
                Some(Frame::Data(_, flags, _)) if flags & FIN != 0 => {
                    bail!("port-forward closed early; data so far {data:?}")
                }
                Some(_) => {}
                None => bail!("port-forward closed early; data so far {data:?}"),
            }
        }
        Ok(data)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(20), run).await {
        Ok(result) => result,
        Err(_) => bail!("spdy port-forward did not answer within 20s"),
    }
}
