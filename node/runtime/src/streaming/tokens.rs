//! Single-use, expiring tokens naming a pending streaming request, as upstream's request
//! cache does: 8 random bytes in URL-safe base64 without padding, valid for one minute,
//! at most 1000 in flight; taking a token removes it, so a URL works once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore as _;

/// How long a token stays valid (upstream: one minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most tokens pending at once (upstream: 1000).
pub const MAX_IN_FLIGHT: usize = 1000;

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Too many requests are pending.
    #[error("maximum number of in-flight streaming requests exceeded ({0})")]
    TooMany(usize),
}

/// Pending requests by token.
#[derive(Debug)]
pub struct Tokens<T> {
    ttl: Duration,
    pending: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Tokens<T> {
    /// An empty cache whose tokens live `ttl`.
    pub fn new(ttl: Duration) -> Tokens<T> {
        Tokens {
            ttl,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, T)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value` under a new random token and returns the token.
    pub fn insert(&self, value: T) -> Result<String, TokenError> {
        let mut pending = self.lock();
        let now = Instant::now();
        let ttl = self.ttl;
        pending.retain(|_, (created, _)| now.duration_since(*created) < ttl);
        if pending.len() >= MAX_IN_FLIGHT {
            return Err(TokenError::TooMany(MAX_IN_FLIGHT));
        }
        loop {
            let mut bytes = [0u8; 8];
            rand::rng().fill_bytes(&mut bytes);
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if !pending.contains_key(&token) {
                pending.insert(token.clone(), (now, value));
                return Ok(token);
            }
        }
    }

    /// Removes and returns the request named by `token` unless it expired.
    pub fn take(&self, token: &str) -> Option<T> {
        let (created, value) = self.lock().remove(token)?;
        (created.elapsed() < self.ttl).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let tokens = Tokens::new(TOKEN_TTL);
        let a = tokens.insert(1).expect("insert");
        let b = tokens.insert(2).expect("insert");
        assert_ne!(a, b);
        assert_eq!(a.len(), 11, "8 bytes, unpadded base64: {a}");
        assert_eq!(tokens.take(&b), Some(2));
        assert_eq!(tokens.take(&b), None);
        assert_eq!(tokens.take(&a), Some(1));
        assert_eq!(tokens.take("nosuchtoken"), None);
    }

    #[test]
    fn expired_tokens_are_refused_and_purged() {
        let tokens = Tokens::new(Duration::ZERO);
        let a = tokens.insert("x").expect("insert");
        assert_eq!(tokens.take(&a), None);
        for _ in 0..MAX_IN_FLIGHT + 1 {
            tokens.insert("y").expect("expired entries make room");
        }
    }

    #[test]
    fn in_flight_requests_are_bounded() {
        let tokens = Tokens::new(TOKEN_TTL);
        for _ in 0..MAX_IN_FLIGHT {
            tokens.insert(()).expect("insert");
        }
        assert!(matches!(tokens.insert(()), Err(TokenError::TooMany(_))));
    }
}
