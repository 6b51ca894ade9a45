//! The two runtimes under test, started by the test in a lab network namespace with
//! their own state, socket and CNI directories (CNI: our plugin via `ferrokube cni
//! install`), plus the test image built from Debian's static busybox.
//!
//! Drop guards stop every process the runtime started (found by our unique directory in
//! their command line, killed by PID), unmount what is mounted under that directory and
//! remove it; the namespace goes with the [`Netns`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ferrokube_testkit::netns::Netns;
use ferrokube_testkit::wait_for;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferrokube");
pub const POD_CIDR: &str = "10.67.0.0/24";
/// The lab registry's address, inside the lab namespace (see [`Lab::start_registry`]):
/// loopback, plain HTTP, marked insecure for both runtimes.
pub const REGISTRY: &str = "127.0.0.1:5000";
/// A non-loopback address the lab namespace gets on `lo` for the registries that are
/// NOT marked insecure: neither runtime treats it specially (containerd would default a
/// loopback registry to plain HTTP), so it is reached the way a registry on the network
/// is, over HTTPS verified against the system roots.
pub const REMOTE_HOST: &str = "10.68.0.1";
/// HTTPS with a certificate from the lab CA, which both daemons trust
/// ([`Serving::Trusted`]).
pub const TLS_REGISTRY: &str = "10.68.0.1:5443";
/// HTTPS with a certificate from a CA nobody trusts ([`Serving::Untrusted`]).
pub const UNTRUSTED_REGISTRY: &str = "10.68.0.1:5444";
/// Plain HTTP, not marked insecure ([`Serving::PlainUnmarked`]).
pub const PLAIN_REGISTRY: &str = "10.68.0.1:5080";

/// The image every case can use: `docker.io/library/fkbusybox:latest`, busybox with
/// `sleep infinity` as its entrypoint.
pub const IMAGE: &str = "docker.io/library/fkbusybox:latest";

pub fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256(path: &Path) -> Result<(String, u64)> {
    let out = run(Command::new("sha256sum").arg(path))?;
    let digest = out.split_whitespace().next().context("sha256sum output")?;
    Ok((digest.to_string(), std::fs::metadata(path)?.len()))
}

/// An OCI-layout tarball built by the test.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub archive: PathBuf,
    /// `sha256:<hex>` of the config: the image ID both runtimes report.
    pub config_digest: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
}

/// Builds an OCI-layout tarball at `dir/<tag>.tar` named `name`: Debian's static busybox
/// with its applet links, an `/etc/marker` holding `marker` (so different markers give
/// different images), and `sleep infinity` as the entrypoint.
pub fn build_image(dir: &Path, name: &str, marker: &str) -> Result<TestImage> {
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.exists(),
        "/bin/busybox missing: the CRI tests need Debian's busybox-static (run `cargo xtask setup`)"
    );
    let work = tempfile::Builder::new().prefix("image").tempdir_in(dir)?;
    let w = work.path();
    let rootfs = w.join("rootfs");
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in [
        "sh", "sleep", "echo", "cat", "ls", "nc", "hostname", "id", "env", "head", "tr", "true",
        "stty",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    std::fs::write(rootfs.join("etc/marker"), marker)?;
    let oci = w.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = w.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let add_blob = |path: &Path| -> Result<(String, u64)> {
        let (digest, size) = sha256(path)?;
        std::fs::copy(path, blobs.join(&digest))?;
        Ok((digest, size))
    };
    let (layer_digest, layer_size) = add_blob(&layer)?;
    let config = w.join("config.json");
    std::fs::write(
        &config,
        json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Entrypoint": ["/bin/sleep", "infinity"],
                        "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        })
        .to_string(),
    )?;
    let (config_digest, config_size) = add_blob(&config)?;
    let manifest = w.join("manifest.json");
    std::fs::write(
        &manifest,
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": format!("sha256:{config_digest}"), "size": config_size },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                         "digest": format!("sha256:{layer_digest}"), "size": layer_size }],
        })
        .to_string(),
    )?;
    let (manifest_digest, manifest_size) = add_blob(&manifest)?;
    std::fs::write(
        oci.join("index.json"),
        json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                "annotations": { "io.containerd.image.name": name },
            }],
        })
        .to_string(),
    )?;
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = dir.join(format!("{marker}.tar"));
    run(Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg("."))?;
    Ok(TestImage {
        archive,
        config_digest: format!("sha256:{config_digest}"),
        manifest_digest: format!("sha256:{manifest_digest}"),
    })
}

/// Which runtime a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ferrokube runtime`.
    Ours,
    /// Debian's containerd 1.6 with its CRI plugin and runc.
    Containerd,
}

/// A running runtime: its lab namespace, directory, daemon and clients.
pub struct Lab {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    /// The lab node namespace the runtime runs in (dropped last).
    pub node: Netns,
    child: Child,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    /// The standard test image, imported.
    pub image: TestImage,
}

impl Lab {
    pub async fn start(kind: Kind) -> Result<Lab> {
        let node = Netns::new("cri")?;
        node.enable_forwarding()?;
        let dir = tempfile::Builder::new().prefix("fk-cri").tempdir()?;
        let d = dir.path();
        let (bin_dir, conf_dir) = (d.join("cni/bin"), d.join("cni/net.d"));
        run(Command::new(BIN)
            .args(["cni", "install", "--pod-cidr", POD_CIDR])
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--conf-dir")
            .arg(&conf_dir)
            .arg("--data-dir")
            .arg(d.join("ipam")))?;
        make_lab_ca(d)?;
        let child = spawn_daemon(kind, &node, d)?;
        let socket = d.join("cri.sock");
        let waited = wait_for("the runtime's socket", Duration::from_secs(30), || {
            Ok(socket.exists().then_some(()))
        });
        let image = build_image(d, IMAGE, "standard");
        // From here on a failure drops the lab, which cleans up.
        let connect = async {
            let channel = connect(&socket).await?;
            Ok::<_, anyhow::Error>(channel)
        };
        let (channel, image) = match (waited, image) {
            (Ok(()), Ok(image)) => match connect.await {
                Ok(channel) => (channel, image),
                Err(e) => {
                    let mut partial = Partial { dir, child };
                    return Err(e.context(partial.log_tail()));
                }
            },
            (Err(e), _) | (_, Err(e)) => {
                let mut partial = Partial { dir, child };
                return Err(e.context(partial.log_tail()));
            }
        };
        let lab = Lab {
            kind,
            dir,
            node,
            child,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            image: image.clone(),
        };
        lab.import(&image.archive).with_context(|| lab.log_tail())?;
        Ok(lab)
    }

    /// Kills the daemon (SIGKILL: no chance to tidy up) and starts it again on the same
    /// state; reconnects the clients once it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.child = spawn_daemon(self.kind, &self.node, self.dir.path())?;
        let socket = self.dir.path().join("cri.sock");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = async {
                let channel = connect(&socket).await?;
                let mut runtime = RuntimeServiceClient::new(channel.clone());
                runtime
                    .version(k8s_cri::v1::VersionRequest::default())
                    .await?;
                Ok::<_, anyhow::Error>(channel)
            };
            match attempt.await {
                Ok(channel) => {
                    self.runtime = RuntimeServiceClient::new(channel.clone());
                    self.images = ImageServiceClient::new(channel);
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context("the restarted runtime never answered"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Starts Debian's docker-registry on [`REGISTRY`] inside the lab namespace (plain
    /// HTTP: containerd is told so by `certs.d/<host>/hosts.toml`, ours by
    /// `--insecure-registry`). Stopped on drop (and by the lab's cleanup).
    pub fn start_registry(&self) -> Result<Registry> {
        self.start_registry_serving(Serving::Insecure, None)
    }

    /// [`Lab::start_registry`], with htpasswd auth when `htpasswd` (a `user:bcrypt-hash`
    /// line) is given; `credentials` (`user:password`) is what the readiness probe uses.
    pub fn start_registry_with(&self, auth: Option<(&str, &str)>) -> Result<Registry> {
        self.start_registry_serving(Serving::Insecure, auth)
    }

    /// Starts a docker-registry serving as `serving` says (with `auth` as in
    /// [`Lab::start_registry_with`]); ready once curl, trusting the registry's CA, gets
    /// an answer from `/v2/`.
    pub fn start_registry_serving(
        &self,
        serving: Serving,
        auth: Option<(&str, &str)>,
    ) -> Result<Registry> {
        let bin = "/usr/bin/docker-registry";
        ensure!(
            Path::new(bin).exists(),
            "{bin} missing: the pull test needs Debian's docker-registry (run `cargo xtask setup`)"
        );
        let d = self.dir.path();
        let host = serving.host();
        let name = host.replace([':', '.'], "-");
        let mut cacert = None;
        let mut tls = String::new();
        match serving {
            Serving::Insecure => {
                let hosts = d.join("certs.d").join(REGISTRY);
                std::fs::create_dir_all(&hosts)?;
                std::fs::write(
                    hosts.join("hosts.toml"),
                    format!(
                        "server = \"http://{REGISTRY}\"\n[host.\"http://{REGISTRY}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                    ),
                )?;
            }
            Serving::PlainUnmarked => self.add_remote_host()?,
            Serving::Trusted | Serving::Untrusted => {
                self.add_remote_host()?;
                let tls_dir = d.join("tls");
                let (ca_pem, ca_key) = if serving == Serving::Trusted {
                    (
                        std::fs::read_to_string(tls_dir.join("ca.crt"))?,
                        std::fs::read_to_string(tls_dir.join("ca.key"))?,
                    )
                } else {
                    new_ca("ferrokube-lab-untrusted-ca")?
                };
                let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)?;
                let (cert, key) = server_cert(&issuer, REMOTE_HOST)?;
                let (cert_file, key_file) = (
                    tls_dir.join(format!("{name}.crt")),
                    tls_dir.join(format!("{name}.key")),
                );
                std::fs::write(&cert_file, cert)?;
                std::fs::write(&key_file, key)?;
                let ca_file = tls_dir.join(format!("{name}-ca.crt"));
                std::fs::write(&ca_file, &ca_pem)?;
                cacert = Some(ca_file);
                tls = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert_file.display(),
                    key_file.display()
                );
            }
        }
        let config = d.join(format!("registry-{name}.yml"));
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n{tls}",
            d.join(format!("registry-{name}")).display()
        );
        if let Some((htpasswd, _)) = auth {
            let file = d.join(format!("htpasswd-{name}"));
            std::fs::write(&file, format!("{htpasswd}\n"))?;
            text.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ferrokube-lab\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(d.join(format!("registry-{name}.log")))?;
        let child = self
            .node
            .command(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let scheme = if cacert.is_some() { "https" } else { "http" };
        let registry = Registry {
            child,
            base: format!("{scheme}://{host}"),
            cacert,
        };
        wait_for("the registry", Duration::from_secs(30), || {
            Ok(self
                .curl(&registry, auth.map_or("", |(_, credentials)| credentials))
                .arg(format!("{}/v2/", registry.base))
                .output()?
                .status
                .success()
                .then_some(()))
        })?;
        Ok(registry)
    }

    /// Gives the lab namespace [`REMOTE_HOST`] (on `lo`; idempotent).
    fn add_remote_host(&self) -> Result<()> {
        self.node
            .ip(&["addr", "replace", &format!("{REMOTE_HOST}/32"), "dev", "lo"])?;
        Ok(())
    }

    /// Pushes a test image (its OCI archive) to `registry` as `repo:tag` with curl
    /// (blob uploads, then the manifest).
    pub fn push(
        &self,
        registry: &Registry,
        image: &TestImage,
        repo: &str,
        tag: &str,
    ) -> Result<()> {
        self.push_as(registry, image, repo, tag, "")
    }

    /// `curl -sf` in the lab namespace, trusting `registry`'s CA (curl is the operator
    /// here, not a runtime under test), with `-u credentials` unless they are empty.
    fn curl(&self, registry: &Registry, credentials: &str) -> Command {
        let mut curl = self.node.command("curl");
        curl.arg("-sf");
        if let Some(ca) = &registry.cacert {
            curl.arg("--cacert").arg(ca);
        }
        if !credentials.is_empty() {
            curl.args(["-u", credentials]);
        }
        curl
    }

    /// [`Lab::push`] with `credentials` (`user:password`, or empty for none).
    pub fn push_as(
        &self,
        registry: &Registry,
        image: &TestImage,
        repo: &str,
        tag: &str,
        credentials: &str,
    ) -> Result<()> {
        let base = &registry.base;
        let dir = tempfile::Builder::new()
            .prefix("push")
            .tempdir_in(self.dir.path())?;
        run(Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-xf")
            .arg(&image.archive))?;
        let blob = |digest: &str| dir.path().join("blobs/sha256").join(&digest[7..]);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob(&image.manifest_digest))?)?;
        let mut digests = vec![
            manifest["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ];
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            digests.push(layer["digest"].as_str().unwrap_or_default().to_string());
        }
        for digest in digests {
            let headers = run(self.curl(registry, credentials).args([
                "-X",
                "POST",
                "-D",
                "-",
                "-o",
                "/dev/null",
                &format!("{base}/v2/{repo}/blobs/uploads/"),
            ]))?;
            let location = headers
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                        .map(|(_, v)| v.trim().to_string())
                })
                .context("no upload location")?;
            let url = if location.starts_with("http") {
                location
            } else {
                format!("{base}{location}")
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            run(self.curl(registry, credentials).args([
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{}", blob(&digest).display()),
                &format!("{url}{sep}digest={digest}"),
            ]))?;
        }
        run(self.curl(registry, credentials).args([
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", blob(&image.manifest_digest).display()),
            &format!("{base}/v2/{repo}/manifests/{tag}"),
        ]))?;
        Ok(())
    }

    /// Imports an archive the way each runtime's operator would.
    pub fn import(&self, archive: &Path) -> Result<()> {
        match self.kind {
            Kind::Ours => run(Command::new(BIN)
                .args(["images", "import", "--root"])
                .arg(self.dir.path().join("root"))
                .arg(archive))?,
            Kind::Containerd => run(self
                .ctr()
                .args(["images", "import", "--snapshotter", "native"])
                .arg(archive))?,
        };
        Ok(())
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("-a")
            .arg(self.dir.path().join("cri.sock"))
            .args(["-n", "k8s.io"]);
        command
    }

    /// The runtime daemon's PID (ours or containerd); `benches/runtime.rs` samples its
    /// memory (the suite itself does not use it).
    #[allow(dead_code)]
    pub fn daemon_pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        tail(self.dir.path())
    }

    /// The cgroup parent the cases give their pods: unique to this lab, removed on drop.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", cgroup_name(self.dir.path()))
    }

    /// The IPAM directory of the lab's CNI plugin.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
}

fn cgroup_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fk-cri".into())
}

/// Removes `/<name>` and everything below it from every cgroup hierarchy: the v1
/// controllers and the v2 (unified) mount, where runc makes the same directories on this
/// hybrid layout.
fn remove_cgroups(name: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !matches!(right.split_whitespace().next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        let Some(mount) = left.split_whitespace().nth(4) else {
            continue;
        };
        remove_tree(&Path::new(mount).join(name));
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A self-signed CA named `cn`: its certificate and key, PEM.
fn new_ca(cn: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A server certificate for the IP address `ip`, signed by `issuer`: certificate and key,
/// PEM.
fn server_cert(issuer: &Issuer<'_, KeyPair>, ip: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ip);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::IpAddress(ip.parse()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// From the start of last year to the start of the year after next (whole years around
/// now, so the calendar arithmetic need not be exact).
fn set_validity(params: &mut CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
}

/// Makes the lab's throwaway CA (`tls/ca.crt`, `tls/ca.key`) and the root bundle both
/// daemons get as `SSL_CERT_FILE` (`tls/roots.pem`): the system's roots plus the lab CA.
/// `SSL_CERT_FILE` is how the system roots are extended for one process on Linux, and
/// both verifiers read it: ours (reqwest's rustls-platform-verifier, which on Linux loads
/// the roots through rustls-native-certs) and containerd's (Go's crypto/x509). It
/// *replaces* the system bundle file for both, hence the copy of the system roots.
fn make_lab_ca(d: &Path) -> Result<()> {
    let dir = d.join("tls");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = new_ca("ferrokube-lab-ca")?;
    std::fs::write(dir.join("ca.crt"), &cert)?;
    std::fs::write(dir.join("ca.key"), key)?;
    let mut roots = std::fs::read_to_string(SYSTEM_ROOTS).unwrap_or_default();
    if !roots.is_empty() && !roots.ends_with('\n') {
        roots.push('\n');
    }
    roots.push_str(&cert);
    std::fs::write(dir.join("roots.pem"), roots)?;
    Ok(())
}

/// Debian's system root bundle (ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The daemon's command line (for containerd, its config file is written too).
fn daemon_command(kind: Kind, node: &Netns, d: &Path) -> Result<Command> {
    let (bin_dir, conf_dir) = (d.join("cni/bin"), d.join("cni/net.d"));
    let command = match kind {
        Kind::Ours => {
            let mut command = node.command(BIN);
            command
                .arg("runtime")
                .arg("--socket")
                .arg(d.join("cri.sock"))
                .arg("--root")
                .arg(d.join("root"))
                .arg("--cni-conf-dir")
                .arg(&conf_dir)
                .arg("--cni-bin-dir")
                .arg(&bin_dir)
                .arg("--cgroup-root")
                .arg(cgroup_name(d))
                .args(["--insecure-registry", REGISTRY])
                .env("SSL_CERT_FILE", d.join("tls/roots.pem"))
                .env("FERROKUBE_LOG", "debug");
            command
        }
        Kind::Containerd => {
            for bin in ["/usr/bin/containerd", "/usr/sbin/runc", "/usr/bin/ctr"] {
                ensure!(
                    Path::new(bin).exists(),
                    "{bin} missing: the CRI tests need Debian's containerd and runc (run `cargo xtask setup`)"
                );
            }
            std::fs::write(
                d.join("config.toml"),
                format!(
                    r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/cri.sock"
[ttrpc]
  address = "{d}/cri.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
snapshotter = "native"
default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "{bin}"
conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
config_path = "{d}/certs.d"
"#,
                    d = d.display(),
                    bin = bin_dir.display(),
                    conf = conf_dir.display(),
                ),
            )?;
            let mut command = node.command("/usr/bin/containerd");
            command
                .arg("--config")
                .arg(d.join("config.toml"))
                .env("SSL_CERT_FILE", d.join("tls/roots.pem"));
            command
        }
    };
    Ok(command)
}

/// Starts the daemon with its output appended to `runtime.log`.
fn spawn_daemon(kind: Kind, node: &Netns, d: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("runtime.log"))?;
    Ok(daemon_command(kind, node, d)?
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

fn tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("runtime.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(25).collect();
    format!(
        "runtime log tail:\n{}",
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

async fn connect(socket: &Path) -> Result<Channel> {
    let socket = socket.to_path_buf();
    Ok(Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?)
}

/// How a lab registry serves (see [`Lab::start_registry_serving`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Plain HTTP on [`REGISTRY`], marked insecure for both runtimes.
    Insecure,
    /// Plain HTTP on [`PLAIN_REGISTRY`], NOT marked insecure.
    PlainUnmarked,
    /// HTTPS on [`TLS_REGISTRY`] with a certificate from the lab CA, which both daemons
    /// trust through `SSL_CERT_FILE` (see [`make_lab_ca`]).
    Trusted,
    /// HTTPS on [`UNTRUSTED_REGISTRY`] with a certificate from a throwaway CA that only
    /// the pushing curl trusts.
    Untrusted,
}

impl Serving {
    fn host(self) -> &'static str {
        match self {
            Serving::Insecure => REGISTRY,
            Serving::PlainUnmarked => PLAIN_REGISTRY,
            Serving::Trusted => TLS_REGISTRY,
            Serving::Untrusted => UNTRUSTED_REGISTRY,
        }
    }
}

/// The lab registry process.
pub struct Registry {
    child: Child,
    /// `scheme://host[:port]`.
    base: String,
    /// The CA that signed the registry's certificate (HTTPS only).
    cacert: Option<PathBuf>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime that failed to come up: still cleaned up.
struct Partial {
    dir: tempfile::TempDir,
    child: Child,
}

impl Partial {
    fn log_tail(&mut self) -> String {
        tail(self.dir.path())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        cleanup(self.dir.path(), &mut self.child, None);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let ctr = (self.kind == Kind::Containerd).then(|| self.ctr());
        cleanup(self.dir.path(), &mut self.child, ctr);
    }
}

/// Stops the daemon and everything it started (processes whose command line names our
/// directory), unmounts our mounts, leaves the directory to its TempDir.
fn cleanup(dir: &Path, child: &mut Child, ctr: Option<Command>) {
    // Our runtime's containers (their processes do not name our directory).
    let runc_root = dir.join("root/runc");
    if runc_root.exists()
        && let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", id])
                .output();
        }
    }
    if let Some(mut ctr) = ctr {
        // Tasks first (the sandboxes' processes), while containerd still runs.
        let ls = ctr.args(["tasks", "ls", "-q"]).output();
        if let Ok(out) = ls {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let mut kill = Command::new("ctr");
                kill.arg("-a")
                    .arg(dir.join("cri.sock"))
                    .args(["-n", "k8s.io", "tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let _ = kill.output();
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for pid in our_pids(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let marker = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&marker))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in ours {
        let _ = Command::new("umount").arg("-l").arg(mount).output();
    }
    remove_cgroups(&cgroup_name(dir));
}

fn our_pids(dir: &Path) -> Vec<i32> {
    let marker = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            *pid != std::process::id() as i32
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
        })
        .collect()
}
