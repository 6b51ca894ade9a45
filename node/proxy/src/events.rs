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
            if item.len() >= size_of::<Event>() {
                // SAFETY: the programs write whole `Event`s (plain integers, any bit
                // pattern valid); read unaligned from the ring's bytes.
                #[allow(unsafe_code)]
                let event = unsafe { item.as_ptr().cast::<Event>().read_unaligned() };
                out.push(event);
            }
        }
        out
    }
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
