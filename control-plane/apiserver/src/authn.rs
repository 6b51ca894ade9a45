//! Authentication: client certificates signed by the cluster CA (CN is the user, O the
//! groups) and bearer tokens from `DATA_DIR/tokens.csv` (`token,user,uid,"group1,group2"`,
//! the upstream static token file format).

use std::collections::HashMap;
use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// The identity of a verified client certificate (DER), if it names a user.
pub fn from_certificate(der: &[u8]) -> Option<Identity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(Identity { user, groups })
}

/// Static bearer tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, Identity>,
}

impl Tokens {
    /// Reads the token file; a missing file means no tokens.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tokens::default()),
            Err(e) => return Err(e),
        };
        let mut by_token = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut fields = line.splitn(4, ',');
            let (Some(token), Some(user)) = (fields.next(), fields.next()) else {
                continue;
            };
            let _uid = fields.next();
            let mut groups: Vec<String> = fields
                .next()
                .map(|g| {
                    g.trim_matches('"')
                        .split(',')
                        .map(str::to_string)
                        .filter(|g| !g.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            groups.push("system:authenticated".into());
            by_token.insert(
                token.to_string(),
                Identity {
                    user: user.to_string(),
                    groups,
                },
            );
        }
        Ok(Tokens { by_token })
    }

    /// The identity of an `Authorization` header value.
    pub fn authenticate(&self, authorization: &str) -> Option<Identity> {
        let token = authorization.strip_prefix("Bearer ")?.trim();
        self.by_token.get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines_map_to_users_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "abc,alice,1,\"dev,ops\"\nxyz,bob,2\n").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let alice = tokens.authenticate("Bearer abc").unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, vec!["dev", "ops", "system:authenticated"]);
        assert_eq!(tokens.authenticate("Bearer xyz").unwrap().user, "bob");
        assert!(tokens.authenticate("Bearer nope").is_none());
        assert!(tokens.authenticate("Basic abc").is_none());
    }
}
