//! The agent's metrics in the Prometheus text format, and a minimal HTTP server that
//! serves them at `/metrics` (`ferrokube proxy --metrics-addr ADDR`).
//!
//! - `ferrokube_proxy_map_full_total{map}`: frontends left out because a map was full;
//! - `ferrokube_proxy_map_entries{map}` / `ferrokube_proxy_map_capacity{map}`: entries
//!   the sync layer holds in each map, and each map's size;
//! - `ferrokube_proxy_syncs_total{result="ok"|"error"}`: inputs applied or failed;
//! - `ferrokube_proxy_sockets_destroyed_total`: sockets destroyed because their backend
//!   went away.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferrokube_ebpf_common::map_names;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::sync::EntryCounts;

/// Errors serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Accepting a connection failed.
    #[error("metrics server: {0}")]
    Io(#[from] std::io::Error),
}

/// What the metrics are rendered from.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Frontends left out per full map.
    pub map_full: BTreeMap<&'static str, u64>,
    /// Entries held per map.
    pub entries: EntryCounts,
    /// Map sizes: services, slots, backends.
    pub capacity: [u32; 3],
    /// Inputs applied.
    pub syncs_ok: u64,
    /// Inputs that failed (a full map included).
    pub syncs_failed: u64,
    /// Sockets destroyed.
    pub sockets_destroyed: u64,
}

/// The maps the metrics name, in order.
const MAPS: [&str; 3] = [map_names::SERVICES, map_names::SLOTS, map_names::BACKENDS];

/// Renders `snapshot` in the Prometheus text format (0.0.4).
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let entries = [
        snapshot.entries.services,
        snapshot.entries.slots,
        snapshot.entries.backends,
    ];
    out.push_str(
        "# HELP ferrokube_proxy_map_full_total Frontends left out because a map was full.\n\
         # TYPE ferrokube_proxy_map_full_total counter\n",
    );
    for map in MAPS {
        let n = snapshot.map_full.get(map).copied().unwrap_or(0);
        let _ = writeln!(out, "ferrokube_proxy_map_full_total{{map=\"{map}\"}} {n}");
    }
    out.push_str(
        "# HELP ferrokube_proxy_map_entries Entries the sync layer holds in each map.\n\
         # TYPE ferrokube_proxy_map_entries gauge\n",
    );
    for (map, n) in MAPS.iter().zip(entries) {
        let _ = writeln!(out, "ferrokube_proxy_map_entries{{map=\"{map}\"}} {n}");
    }
    out.push_str(
        "# HELP ferrokube_proxy_map_capacity Each map's size (max entries).\n\
         # TYPE ferrokube_proxy_map_capacity gauge\n",
    );
    for (map, n) in MAPS.iter().zip(snapshot.capacity) {
        let _ = writeln!(out, "ferrokube_proxy_map_capacity{{map=\"{map}\"}} {n}");
    }
    let _ = write!(
        out,
        "# HELP ferrokube_proxy_syncs_total Inputs applied, by result.\n\
         # TYPE ferrokube_proxy_syncs_total counter\n\
         ferrokube_proxy_syncs_total{{result=\"ok\"}} {}\n\
         ferrokube_proxy_syncs_total{{result=\"error\"}} {}\n\
         # HELP ferrokube_proxy_sockets_destroyed_total Sockets destroyed because their backend went away.\n\
         # TYPE ferrokube_proxy_sockets_destroyed_total counter\n\
         ferrokube_proxy_sockets_destroyed_total {}\n",
        snapshot.syncs_ok, snapshot.syncs_failed, snapshot.sockets_destroyed
    );
    out
}

/// The latest rendered metrics, shared between the agent (writer) and the server.
#[derive(Debug, Clone, Default)]
pub struct Published(Arc<RwLock<String>>);

impl Published {
    /// Replaces the text.
    pub fn set(&self, text: String) {
        if let Ok(mut current) = self.0.write() {
            *current = text;
        }
    }

    /// The current text.
    pub fn get(&self) -> String {
        self.0.read().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped; anything else is 404.
pub async fn serve(listener: TcpListener, published: Published) -> Result<(), MetricsError> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let published = published.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &published).await {
                debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, published: &Published) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // The request head only, bounded in size and time.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => ("200 OK", published.get()),
        _ => ("404 Not Found", "not found: try GET /metrics\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_map_with_its_full_count() {
        let snapshot = Snapshot {
            map_full: BTreeMap::from([(map_names::SERVICES, 2)]),
            entries: EntryCounts {
                services: 4,
                slots: 8,
                backends: 8,
            },
            capacity: [4, 80, 80],
            syncs_ok: 1,
            syncs_failed: 1,
            sockets_destroyed: 0,
        };
        let text = render(&snapshot);
        assert!(text.contains("ferrokube_proxy_map_full_total{map=\"FK_SERVICES\"} 2\n"));
        assert!(text.contains("ferrokube_proxy_map_full_total{map=\"FK_BACKENDS\"} 0\n"));
        assert!(text.contains("ferrokube_proxy_map_entries{map=\"FK_SLOTS\"} 8\n"));
        assert!(text.contains("ferrokube_proxy_map_capacity{map=\"FK_SERVICES\"} 4\n"));
        assert!(text.contains("ferrokube_proxy_syncs_total{result=\"error\"} 1\n"));
    }
}
