//! The translation event stream: reads the pinned ring buffer `FK_EVENTS` (one event per
//! connection translated by `connect4` and per new flow recorded by tc or XDP) for
//! `ferrokube proxy events`. One reader at a time per node.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, RingBuf};
use ferrokube_ebpf_common::{
    Event, PROTO_TCP,
    event::{SOURCE_CONNECT4, SOURCE_TC, SOURCE_XDP},
    map_names,
};

/// Errors opening the event stream.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The pinned ring buffer could not be opened (no pins for the node, or an agent
    /// older than the event stream).
    #[error("opening {path}: {source}")]
    Open {
        /// The pin.
        path: PathBuf,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
}

/// A reader of one node's events.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl EventReader {
    /// Opens the ring buffer pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, EventsError> {
        let path = pin_dir.join(map_names::EVENTS);
        let open_error = |source| EventsError::Open {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open_error)?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(open_error)?;
        Ok(Self { ring })
    }

    /// The events waiting now (none: returns at once).
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(event) = parse(&item) {
                out.push(event);
            }
        }
        out
    }
}

/// An [`Event`] from the bytes the programs wrote (its `#[repr(C)]` layout, native byte
/// order); `None` when too short.
pub fn parse(bytes: &[u8]) -> Option<Event> {
    let u64_at = |o: usize| Some(u64::from_ne_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_ne_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u16_at = |o: usize| Some(u16::from_ne_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let addr_at = |o: usize| -> Option<[u32; 4]> {
        Some([u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?, u32_at(o + 12)?])
    };
    Some(Event {
        time_ns: u64_at(0)?,
        client: addr_at(8)?,
        frontend: addr_at(24)?,
        backend: addr_at(40)?,
        client_port: u16_at(56)?,
        frontend_port: u16_at(58)?,
        backend_port: u16_at(60)?,
        proto: *bytes.get(62)?,
        source: *bytes.get(63)?,
        service_id: u32_at(64)?,
        backend_id: u32_at(68)?,
    })
}

fn v4(words: [u32; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
}

/// Which program made an event.
pub fn source_name(source: u8) -> &'static str {
    match source {
        SOURCE_CONNECT4 => "connect4",
        SOURCE_TC => "tc",
        SOURCE_XDP => "xdp",
        _ => "?",
    }
}

/// One line: time (seconds since boot, `CLOCK_MONOTONIC`), program, protocol, client,
/// frontend, backend, ids.
pub fn render(event: &Event) -> String {
    let proto = if event.proto == PROTO_TCP {
        "TCP"
    } else {
        "UDP"
    };
    let client = if event.source == SOURCE_CONNECT4 {
        "(local socket)".to_string()
    } else {
        format!("{}:{}", v4(event.client), u16::from_be(event.client_port))
    };
    format!(
        "{:>14.6} {:<8} {proto} {client} -> {}:{} => {}:{}  service {} backend {}",
        event.time_ns as f64 / 1e9,
        source_name(event.source),
        v4(event.frontend),
        u16::from_be(event.frontend_port),
        v4(event.backend),
        u16::from_be(event.backend_port),
        event.service_id,
        event.backend_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_repr_c_layout() {
        let event = Event {
            time_ns: 0x0102_0304_0506_0708,
            client: [1, 0, 0, 0],
            frontend: [2, 0, 0, 0],
            backend: [3, 0, 0, 0],
            client_port: 4,
            frontend_port: 5,
            backend_port: 6,
            proto: 17,
            source: SOURCE_XDP,
            service_id: 7,
            backend_id: 8,
        };
        let mut bytes = Vec::new();
        bytes.extend(event.time_ns.to_ne_bytes());
        for a in [event.client, event.frontend, event.backend] {
            for w in a {
                bytes.extend(w.to_ne_bytes());
            }
        }
        for p in [event.client_port, event.frontend_port, event.backend_port] {
            bytes.extend(p.to_ne_bytes());
        }
        bytes.extend([event.proto, event.source]);
        bytes.extend(event.service_id.to_ne_bytes());
        bytes.extend(event.backend_id.to_ne_bytes());
        assert_eq!(bytes.len(), size_of::<Event>());
        assert_eq!(parse(&bytes), Some(event));
        assert_eq!(parse(&bytes[..71]), None);
    }
}
