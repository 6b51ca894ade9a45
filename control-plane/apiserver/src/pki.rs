//! The cluster's certificates and credentials, made on first start and reused after
//! (as k3s does): a CA, a serving certificate for the apiserver's names and addresses,
//! an admin client certificate (CN `admin`, O `system:masters`), an admin bearer token,
//! and `admin.kubeconfig`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why the credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Making or parsing a certificate or key failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Paths and contents of the cluster credentials.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Directory holding the files (`DATA_DIR/pki`).
    pub dir: PathBuf,
    /// CA certificate (PEM).
    pub ca_pem: String,
    /// Serving certificate chain (PEM).
    pub server_cert_pem: String,
    /// Serving key (PEM).
    pub server_key_pem: String,
    /// Admin client certificate (PEM).
    pub admin_cert_pem: String,
    /// Admin client key (PEM).
    pub admin_key_pem: String,
    /// Admin bearer token.
    pub admin_token: String,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    org: Option<&str>,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Pki {
    /// Loads the credentials under `data_dir/pki`, making whatever is missing. The
    /// serving certificate covers `names` and `ips` besides the usual in-cluster names.
    pub fn load_or_create(
        data_dir: &Path,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<Self, PkiError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
            path: dir.clone(),
            source,
        })?;
        let (ca_pem, ca_key) = match (read(&dir.join("ca.crt"))?, read(&dir.join("ca.key"))?) {
            (Some(cert), Some(key)) => (cert, KeyPair::from_pem(&key)?),
            _ => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "ferrokube-ca");
                params.distinguished_name = dn;
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                params.not_before = rcgen::date_time_ymd(2024, 1, 1);
                params.not_after = rcgen::date_time_ymd(2036, 1, 1);
                let cert = params.self_signed(&key)?;
                write(&dir.join("ca.crt"), &cert.pem(), false)?;
                write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
                (cert.pem(), key)
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

        let (server_cert_pem, server_key_pem) = match (
            read(&dir.join("apiserver.crt"))?,
            read(&dir.join("apiserver.key"))?,
        ) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let mut sans = Vec::new();
                for name in [
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain(names.iter().cloned())
                {
                    if let Ok(dns) = name.clone().try_into() {
                        sans.push(SanType::DnsName(dns));
                    }
                }
                for ip in ips {
                    sans.push(SanType::IpAddress(*ip));
                }
                let (c, k) = leaf(
                    &issuer,
                    "kube-apiserver",
                    None,
                    sans,
                    ExtendedKeyUsagePurpose::ServerAuth,
                )?;
                write(&dir.join("apiserver.crt"), &c, false)?;
                write(&dir.join("apiserver.key"), &k, true)?;
                (c, k)
            }
        };
        let (admin_cert_pem, admin_key_pem) =
            match (read(&dir.join("admin.crt"))?, read(&dir.join("admin.key"))?) {
                (Some(c), Some(k)) => (c, k),
                _ => {
                    let (c, k) = leaf(
                        &issuer,
                        "admin",
                        Some("system:masters"),
                        vec![],
                        ExtendedKeyUsagePurpose::ClientAuth,
                    )?;
                    write(&dir.join("admin.crt"), &c, false)?;
                    write(&dir.join("admin.key"), &k, true)?;
                    (c, k)
                }
            };
        let token_path = data_dir.join("tokens.csv");
        let admin_token = match read(&token_path)? {
            Some(csv) => csv
                .lines()
                .find(|l| l.split(',').nth(1) == Some("admin"))
                .and_then(|l| l.split(',').next())
                .map(str::to_string),
            None => None,
        };
        let admin_token = match admin_token {
            Some(token) => token,
            None => {
                let token = format!("{:032x}", rand::random::<u128>());
                write(
                    &token_path,
                    &format!("{token},admin,admin,\"system:masters\"\n"),
                    true,
                )?;
                token
            }
        };
        Ok(Pki {
            dir,
            ca_pem,
            server_cert_pem,
            server_key_pem,
            admin_cert_pem,
            admin_key_pem,
            admin_token,
        })
    }

    /// An admin kubeconfig for `server` (`https://host:port`).
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ferrokube\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: ferrokube\n  context:\n    cluster: ferrokube\n    user: admin\ncurrent-context: ferrokube\n",
            b64(&self.ca_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem),
        )
    }
}
