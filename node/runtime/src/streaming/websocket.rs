//! The kubelet's WebSocket channel protocols: every binary message starts with a channel
//! byte. For exec and attach: 0 stdin, 1 stdout, 2 stderr, 3 error (a `metav1.Status` as
//! JSON, written once at the end), 4 resize (`{"Width":w,"Height":h}`); `v5` adds 255
//! "close" (payload: the channel the client closed, i.e. stdin half-close). For port
//! forwarding, each requested port gets a data and an error channel (2i, 2i+1).
//!
//! The subprotocol is picked in the client's order of preference from
//! `Sec-WebSocket-Protocol`, as upstream's `wsstream` does; the base64 text variants and
//! the pre-v4 protocols are not offered.

use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;

/// Exec/attach channel protocol v4 (status on the error channel, resize channel).
pub const V4: &str = "v4.channel.k8s.io";
/// Exec/attach channel protocol v5 (v4 plus the close channel).
pub const V5: &str = "v5.channel.k8s.io";
/// Port-forward protocol (data/error channel pair per port).
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// Channel numbers.
pub const STDIN: u8 = 0;
/// Standard output (and a terminal's output).
pub const STDOUT: u8 = 1;
/// Standard error.
pub const STDERR: u8 = 2;
/// The final status.
pub const ERROR: u8 = 3;
/// Terminal size changes.
pub const RESIZE: u8 = 4;
/// v5: the client closed the channel in the payload.
pub const CLOSE: u8 = 255;

/// The first protocol in the client's `Sec-WebSocket-Protocol` list that `supported`
/// has.
pub fn negotiate(headers: &HeaderMap, supported: &[&'static str]) -> Option<&'static str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| supported.iter().copied().find(|s| *s == offered))
}

/// A binary message on `channel`.
pub fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut data = Vec::with_capacity(payload.len() + 1);
    data.push(channel);
    data.extend_from_slice(payload);
    Message::Binary(data.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    #[test]
    fn negotiation_follows_the_clients_preference() {
        let mut headers = HeaderMap::new();
        headers.append(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io, v4.channel.k8s.io"),
        );
        headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(V5));
        assert_eq!(negotiate(&headers, &[V5, V4]), Some(V4));
        assert_eq!(negotiate(&headers, &[V5]), Some(V5));
        assert_eq!(negotiate(&headers, &[PORT_FORWARD]), None);
        assert_eq!(negotiate(&HeaderMap::new(), &[V4]), None);
    }

    #[test]
    fn frames_carry_the_channel_first() {
        assert_eq!(frame(STDERR, b"x").into_data().as_ref(), &[2, b'x']);
    }
}
