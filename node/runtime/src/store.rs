//! The content-addressed image store under `<root>/images`:
//!
//! ```text
//! content/sha256/<hex>   blobs (manifests, configs, layer tarballs) by digest
//! layers/<diff-id hex>/  each layer unpacked once (overlayfs whiteouts), shared by images
//! index.json             the image records (id = config digest, tags, digests, layers)
//! lock                   flock held while the index is read-modify-written
//! tmp/                   imports in progress (removed on failure: nothing half-made)
//! ```
//!
//! Imports take OCI image-layout and docker-archive tarballs (`docker save`, `ctr export`).
//! Every blob is verified against its digest and every layer against its diff ID before
//! anything becomes visible.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::reference::{Reference, ReferenceError};

/// What can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The archive is neither an OCI layout nor a docker archive, or one of its documents
    /// is malformed.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// A blob's content does not match its digest, or a layer its diff ID.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob or layer.
        what: String,
        /// The digest the archive claims.
        expected: String,
        /// The digest of the content.
        actual: String,
    },
    /// An image name in the archive is not a valid reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The index file is corrupt.
    #[error("image index {0}: {1}")]
    Index(String, #[source] serde_json::Error),
    /// The image is used by a container and cannot be removed.
    #[error("image {0} is in use by a container")]
    InUse(String),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.to_string();
    move |e| StoreError::Io(what, e)
}

/// The parts of an image's config a container needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env` (`KEY=value`).
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: String,
    /// `User`.
    #[serde(default)]
    pub user: String,
}

/// One image in the index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the config blob (the image ID, as containerd's CRI plugin).
    pub id: String,
    /// Normalised `repo:tag` names.
    pub repo_tags: Vec<String>,
    /// `repo@sha256:<manifest digest>` names.
    pub repo_digests: Vec<String>,
    /// Digest of the manifest.
    pub manifest_digest: String,
    /// Every blob the image holds (manifest, config, layers).
    pub blobs: Vec<String>,
    /// Diff IDs of the layers, bottom first.
    pub layers: Vec<String>,
    /// Sum of the blob sizes.
    pub size: u64,
    /// Entrypoint, command, env, working dir, user.
    pub config: ImageConfig,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<ImageRecord>,
}

/// The image store rooted at a directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// Removes a directory tree on drop unless disarmed.
pub(crate) struct TempDir(Option<PathBuf>);

impl TempDir {
    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_dir_all(&path)
        {
            tracing::warn!(path = %path.display(), "removing temporary directory: {e}");
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// `sha256:<hex>` of a reader's content and its length.
fn digest_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let n = std::io::copy(&mut reader, &mut hasher)?;
    Ok((format!("sha256:{:x}", hasher.finalize()), n))
}

pub(crate) fn hex_of(digest: &str) -> Result<&str, StoreError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(hex)
        }
        _ => Err(StoreError::InvalidArchive(format!(
            "unsupported digest {digest:?}"
        ))),
    }
}

/// A manifest found in an archive (or pulled), with the names it should carry.
pub(crate) struct Found {
    /// The manifest's bytes.
    pub(crate) manifest: Vec<u8>,
    /// References to tag it with.
    pub(crate) names: Vec<String>,
}

/// Reads a hashing wrapper's digest once the inner reader is drained.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl ImageStore {
    /// Opens (creating when missing) the store under `root/images`.
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        let dir = root.join("images");
        for sub in ["content/sha256", "layers", "tmp"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(path.display()))?;
        }
        Ok(ImageStore { dir })
    }

    /// The directory holding the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unpacked directory of a layer.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.dir.join("layers").join(hex_of(diff_id)?))
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, StoreError> {
        let path = self.dir.join("lock");
        let file = File::create(&path).map_err(io(path.display()))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| StoreError::Io(path.display().to_string(), e.into()))
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.dir.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Index(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(StoreError::Io(path.display().to_string(), e)),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let path = self.dir.join("index.json");
        let tmp = self.dir.join("index.json.tmp");
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| StoreError::Index(path.display().to_string(), e))?;
        std::fs::write(&tmp, bytes).map_err(io(tmp.display()))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(io(path.display()))
    }

    /// All images.
    pub fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self.read_index()?.images)
    }

    /// Finds an image by ID (`sha256:<hex>`, the bare hex, or an unambiguous hex prefix
    /// of at least 12), by a name (normalised) or by `repo@digest`.
    pub fn find(&self, spec: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(find_in(&self.read_index()?.images, spec))
    }

    /// Removes an image (all its names) and the blobs and layers no other image uses.
    /// `in_use` lists image IDs that containers hold. Returns whether it existed.
    pub fn remove(&self, spec: &str, in_use: &BTreeSet<String>) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let Some(image) = find_in(&index.images, spec) else {
            return Ok(false);
        };
        if in_use.contains(&image.id) {
            return Err(StoreError::InUse(image.id));
        }
        index.images.retain(|i| i.id != image.id);
        self.write_index(&index)?;
        self.collect_garbage(&index)?;
        Ok(true)
    }

    /// Deletes blobs and layers no image references.
    fn collect_garbage(&self, index: &Index) -> Result<(), StoreError> {
        let blobs: BTreeSet<&str> = index
            .images
            .iter()
            .flat_map(|i| i.blobs.iter())
            .filter_map(|d| hex_of(d).ok())
            .collect();
        let layers: BTreeSet<&str> = index
            .images
            .iter()
            .flat_map(|i| i.layers.iter())
            .filter_map(|d| hex_of(d).ok())
            .collect();
        for (sub, keep) in [("content/sha256", &blobs), ("layers", &layers)] {
            let dir = self.dir.join(sub);
            for entry in std::fs::read_dir(&dir).map_err(io(dir.display()))? {
                let entry = entry.map_err(io(dir.display()))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if keep.contains(name) {
                    continue;
                }
                let path = entry.path();
                let result = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                result.map_err(io(path.display()))?;
                tracing::debug!(path = %path.display(), "removed unreferenced content");
            }
        }
        Ok(())
    }

    /// Bytes and inodes used by the store.
    pub fn usage(&self) -> Result<(u64, u64), StoreError> {
        let mut bytes = 0;
        let mut inodes = 0;
        let mut seen = BTreeSet::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(io(dir.display()))?;
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                inodes += 1;
                bytes += meta.blocks() * 512;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok((bytes, inodes))
    }

    /// Imports every image of an OCI-layout or docker-archive tarball (optionally gzip
    /// compressed). Returns the imported records.
    pub fn import(&self, archive: &Path) -> Result<Vec<ImageRecord>, StoreError> {
        let work = TempDir(Some(self.dir.join("tmp").join(unique("import"))));
        let tmp = work.0.clone().unwrap_or_default();
        let extracted = tmp.join("archive");
        std::fs::create_dir_all(&extracted).map_err(io(extracted.display()))?;
        unpack_archive(archive, &extracted)?;

        let blobs = tmp.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(blobs.display()))?;
        let found = if extracted.join("index.json").is_file() {
            read_oci_layout(&extracted, &blobs)?
        } else if extracted.join("manifest.json").is_file() {
            read_docker_archive(&extracted, &blobs)?
        } else {
            return Err(StoreError::InvalidArchive(
                "neither index.json (OCI layout) nor manifest.json (docker archive) at the top"
                    .into(),
            ));
        };
        if found.is_empty() {
            return Err(StoreError::InvalidArchive(
                "the archive holds no image".into(),
            ));
        }
        self.commit(&found, &blobs)
    }

    /// A directory under `tmp/` removed when the guard drops.
    pub(crate) fn scratch(&self, prefix: &str) -> Result<TempDir, StoreError> {
        let path = self.dir.join("tmp").join(unique(prefix));
        std::fs::create_dir_all(&path).map_err(io(path.display()))?;
        Ok(TempDir(Some(path)))
    }

    /// Verifies and unpacks the images whose blobs (by hex digest) are in `blobs`, then
    /// publishes them in one index update.
    pub(crate) fn commit(
        &self,
        found: &[Found],
        blobs: &Path,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        // Verify and unpack everything before touching the index.
        let mut records = Vec::new();
        for found in found {
            let record = self.prepare(found, blobs)?;
            records.push(record);
        }

        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        for record in &records {
            for digest in &record.blobs {
                let from = blobs.join(hex_of(digest)?);
                let to = self.dir.join("content/sha256").join(hex_of(digest)?);
                if !to.exists() {
                    std::fs::copy(&from, &to).map_err(io(to.display()))?;
                }
            }
            // A name moves to the newly imported image, as upstream.
            for other in &mut index.images {
                other.repo_tags.retain(|t| !record.repo_tags.contains(t));
                other
                    .repo_digests
                    .retain(|t| !record.repo_digests.contains(t));
            }
            match index.images.iter_mut().find(|i| i.id == record.id) {
                Some(existing) => {
                    for tag in &record.repo_tags {
                        existing.repo_tags.push(tag.clone());
                    }
                    for digest in &record.repo_digests {
                        existing.repo_digests.push(digest.clone());
                    }
                }
                None => index.images.push(record.clone()),
            }
        }
        self.write_index(&index)?;
        for record in &records {
            tracing::info!(id = %record.id, tags = ?record.repo_tags, "imported image");
        }
        Ok(records)
    }

    /// Reads the manifest's config, verifies blobs, unpacks layers not yet present.
    fn prepare(&self, found: &Found, blobs: &Path) -> Result<ImageRecord, StoreError> {
        let manifest: Value = serde_json::from_slice(&found.manifest)
            .map_err(|e| StoreError::InvalidArchive(format!("manifest: {e}")))?;
        let (manifest_digest, manifest_size) =
            digest_reader(found.manifest.as_slice()).map_err(io("hashing the manifest"))?;
        std::fs::write(blobs.join(hex_of(&manifest_digest)?), &found.manifest)
            .map_err(io("writing the manifest"))?;
        let descriptor = |v: &Value, what: &str| -> Result<(String, u64, String), StoreError> {
            let digest = v["digest"].as_str().ok_or_else(|| {
                StoreError::InvalidArchive(format!("{what} descriptor without digest"))
            })?;
            hex_of(digest)?;
            Ok((
                digest.to_string(),
                v["size"].as_u64().unwrap_or(0),
                v["mediaType"].as_str().unwrap_or_default().to_string(),
            ))
        };
        let (config_digest, _, _) = descriptor(&manifest["config"], "config")?;
        let config_path = blobs.join(hex_of(&config_digest)?);
        let config_bytes = std::fs::read(&config_path)
            .map_err(|e| StoreError::InvalidArchive(format!("config blob {config_digest}: {e}")))?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| StoreError::InvalidArchive(format!("image config: {e}")))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let layers = manifest["layers"]
            .as_array()
            .ok_or_else(|| StoreError::InvalidArchive("manifest without layers".into()))?;
        if layers.len() != diff_ids.len() {
            return Err(StoreError::InvalidArchive(format!(
                "{} layers in the manifest, {} diff IDs in the config",
                layers.len(),
                diff_ids.len()
            )));
        }
        let mut all_blobs = vec![manifest_digest.clone(), config_digest.clone()];
        let mut size = manifest_size + config_bytes.len() as u64;
        for (layer, diff_id) in layers.iter().zip(&diff_ids) {
            let (digest, _, media_type) = descriptor(layer, "layer")?;
            let path = blobs.join(hex_of(&digest)?);
            size += std::fs::metadata(&path)
                .map_err(|e| StoreError::InvalidArchive(format!("layer blob {digest}: {e}")))?
                .len();
            self.unpack_layer(&path, &media_type, diff_id)?;
            all_blobs.push(digest);
        }
        let c = &config["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for name in &found.names {
            let reference = Reference::parse(name)?;
            repo_digests.push(format!("{}@{manifest_digest}", reference.repository()));
            if reference.tag.is_some() {
                repo_tags.push(
                    Reference {
                        digest: None,
                        ..reference
                    }
                    .to_string(),
                );
            }
        }
        repo_digests.sort();
        repo_digests.dedup();
        Ok(ImageRecord {
            id: config_digest,
            repo_tags,
            repo_digests,
            manifest_digest,
            blobs: all_blobs,
            layers: diff_ids,
            size,
            config: ImageConfig {
                entrypoint: strings(&c["Entrypoint"]),
                cmd: strings(&c["Cmd"]),
                env: strings(&c["Env"]),
                working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
                user: c["User"].as_str().unwrap_or_default().to_string(),
            },
        })
    }

    /// Unpacks a layer blob into `layers/<diff id>` unless it is there; the content must
    /// hash to `diff_id`.
    fn unpack_layer(&self, blob: &Path, media_type: &str, diff_id: &str) -> Result<(), StoreError> {
        let target = self.layer_dir(diff_id)?;
        if target.is_dir() {
            return Ok(());
        }
        let staging = TempDir(Some(self.dir.join("tmp").join(unique("layer"))));
        let dest = staging.0.clone().unwrap_or_default();
        std::fs::create_dir_all(&dest).map_err(io(dest.display()))?;
        let file = File::open(blob).map_err(io(blob.display()))?;
        let mut reader = BufReader::new(file);
        let gzip = media_type.ends_with("gzip") || is_gzip(&mut reader)?;
        let source: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(reader))
        } else if media_type.ends_with("zstd") {
            return Err(StoreError::InvalidArchive(format!(
                "layer {diff_id}: zstd layers are not supported"
            )));
        } else {
            Box::new(reader)
        };
        let mut hashing = HashingReader {
            inner: source,
            hasher: Sha256::new(),
        };
        unpack_layer_tar(&mut hashing, &dest)?;
        // Drain the tar's trailing padding so the digest covers every byte.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io(blob.display()))?;
        let actual = format!("sha256:{:x}", hashing.hasher.finalize());
        if actual != diff_id {
            return Err(StoreError::DigestMismatch {
                what: format!("layer {}", blob.display()),
                expected: diff_id.to_string(),
                actual,
            });
        }
        match std::fs::rename(&dest, &target) {
            Ok(()) => {}
            // Another import unpacked it meanwhile.
            Err(_) if target.is_dir() => {}
            Err(e) => return Err(StoreError::Io(target.display().to_string(), e)),
        }
        Ok(())
    }
}

/// An error with its causes (the tar crate hides the cause from `Display`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn is_gzip(reader: &mut BufReader<File>) -> Result<bool, StoreError> {
    use std::io::BufRead;
    let head = reader.fill_buf().map_err(io("reading a layer"))?;
    Ok(head.starts_with(&[0x1f, 0x8b]))
}

fn find_in(images: &[ImageRecord], spec: &str) -> Option<ImageRecord> {
    let bare = spec.strip_prefix("sha256:").unwrap_or(spec);
    if bare.len() >= 12 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<&ImageRecord> = images
            .iter()
            .filter(|i| i.id.trim_start_matches("sha256:").starts_with(bare))
            .collect();
        if matches.len() == 1 {
            return matches.first().map(|i| (*i).clone());
        }
    }
    let reference = Reference::parse(spec).ok()?;
    let name = reference.to_string();
    images
        .iter()
        .find(|i| {
            if reference.digest.is_some() {
                i.repo_digests.contains(&name)
                    || (reference.tag.is_some() && i.repo_tags.contains(&name))
            } else {
                i.repo_tags.contains(&name)
            }
        })
        .cloned()
}

fn unpack_archive(archive: &Path, dest: &Path) -> Result<(), StoreError> {
    let file = File::open(archive).map_err(io(archive.display()))?;
    let mut reader = BufReader::new(file);
    let source: Box<dyn Read> = if is_gzip(&mut reader)? {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut tar = tar::Archive::new(source);
    tar.set_preserve_permissions(false);
    tar.set_overwrite(true);
    // `unpack` refuses entries that would land outside `dest`.
    tar.unpack(dest)
        .map_err(|e| StoreError::InvalidArchive(format!("{}: {}", archive.display(), chain(&e))))
}

/// Verifies a blob file against its digest and hard-links it into `blobs`.
fn take_blob(path: &Path, digest: &str, blobs: &Path) -> Result<(), StoreError> {
    let hex = hex_of(digest)?;
    let file = File::open(path)
        .map_err(|e| StoreError::InvalidArchive(format!("blob {digest} missing: {e}")))?;
    let (actual, _) = digest_reader(BufReader::new(file)).map_err(io(path.display()))?;
    if actual != digest {
        return Err(StoreError::DigestMismatch {
            what: format!("blob {}", path.display()),
            expected: digest.to_string(),
            actual,
        });
    }
    let to = blobs.join(hex);
    if !to.exists() {
        std::fs::hard_link(path, &to).map_err(io(to.display()))?;
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value, StoreError> {
    let bytes = std::fs::read(path)
        .map_err(|e| StoreError::InvalidArchive(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::InvalidArchive(format!("{}: {e}", path.display())))
}

fn read_oci_layout(dir: &Path, blobs: &Path) -> Result<Vec<Found>, StoreError> {
    let index = read_json(&dir.join("index.json"))?;
    let blob_path = |digest: &str| -> Result<PathBuf, StoreError> {
        Ok(dir.join("blobs/sha256").join(hex_of(digest)?))
    };
    let mut found = Vec::new();
    // (descriptor, names inherited from the index entry)
    let mut queue: Vec<(Value, Vec<String>)> = index["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d, Vec::new()))
        .collect();
    let mut depth = 0;
    while let Some((descriptor, inherited)) = queue.pop() {
        depth += 1;
        if depth > 64 {
            return Err(StoreError::InvalidArchive("index nesting too deep".into()));
        }
        let digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| StoreError::InvalidArchive("descriptor without digest".into()))?
            .to_string();
        let mut names = inherited;
        let annotations = &descriptor["annotations"];
        if let Some(name) = annotations["io.containerd.image.name"].as_str() {
            names.push(name.to_string());
        } else if let Some(name) = annotations["org.opencontainers.image.ref.name"].as_str() {
            // A bare tag ("latest") names nothing on its own; a full reference does.
            if name.contains('/') || name.contains(':') {
                names.push(name.to_string());
            }
        }
        let path = blob_path(&digest)?;
        take_blob(&path, &digest, blobs)?;
        let doc = read_json(&path)?;
        let media_type = doc["mediaType"]
            .as_str()
            .or(descriptor["mediaType"].as_str())
            .unwrap_or_default();
        if media_type.contains("index") || media_type.contains("manifest.list") {
            let children = doc["manifests"].as_array().cloned().unwrap_or_default();
            let chosen = children
                .into_iter()
                .find(|m| {
                    m["platform"]["os"] == "linux"
                        && m["platform"]["architecture"]
                            == std::env::consts::ARCH
                                .replace("x86_64", "amd64")
                                .replace("aarch64", "arm64")
                })
                .ok_or_else(|| {
                    StoreError::InvalidArchive(format!("index {digest} has no linux/amd64 image"))
                })?;
            queue.push((chosen, names));
            continue;
        }
        let manifest = std::fs::read(&path).map_err(io(path.display()))?;
        let config = doc["config"]["digest"].as_str().unwrap_or_default();
        take_blob(&blob_path(config)?, config, blobs)?;
        for layer in doc["layers"].as_array().cloned().unwrap_or_default() {
            let digest = layer["digest"].as_str().unwrap_or_default();
            take_blob(&blob_path(digest)?, digest, blobs)?;
        }
        found.push(Found { manifest, names });
    }
    Ok(found)
}

/// `docker save` layout: `manifest.json` = `[{Config, RepoTags, Layers}]`, paths relative
/// to the archive. A manifest is synthesised (docker v2 schema 2, as containerd does).
fn read_docker_archive(dir: &Path, blobs: &Path) -> Result<Vec<Found>, StoreError> {
    let manifest = read_json(&dir.join("manifest.json"))?;
    let entries = manifest
        .as_array()
        .ok_or_else(|| StoreError::InvalidArchive("manifest.json is not a list".into()))?;
    let safe = |p: &str| -> Result<PathBuf, StoreError> {
        let path = Path::new(p);
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(StoreError::InvalidArchive(format!("unsafe path {p:?}")));
        }
        Ok(dir.join(path))
    };
    let mut found = Vec::new();
    for entry in entries {
        let config_path = safe(entry["Config"].as_str().unwrap_or_default())?;
        let config_file = File::open(&config_path)
            .map_err(|e| StoreError::InvalidArchive(format!("{}: {e}", config_path.display())))?;
        let (config_digest, config_size) =
            digest_reader(BufReader::new(config_file)).map_err(io(config_path.display()))?;
        take_blob(&config_path, &config_digest, blobs)?;
        let mut layers = Vec::new();
        for layer in entry["Layers"].as_array().cloned().unwrap_or_default() {
            let path = safe(layer.as_str().unwrap_or_default())?;
            let file = File::open(&path)
                .map_err(|e| StoreError::InvalidArchive(format!("{}: {e}", path.display())))?;
            let mut reader = BufReader::new(file);
            let gzip = is_gzip(&mut reader)?;
            let (digest, size) = digest_reader(reader).map_err(io(path.display()))?;
            take_blob(&path, &digest, blobs)?;
            let media_type = if gzip {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                "application/vnd.docker.image.rootfs.diff.tar"
            };
            layers
                .push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": layers,
        });
        let names = entry["RepoTags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        found.push(Found {
            manifest: serde_json::to_vec(&manifest)
                .map_err(|e| StoreError::InvalidArchive(e.to_string()))?,
            names,
        });
    }
    Ok(found)
}

/// Unpacks one layer tarball into `dest`, turning OCI whiteouts into overlayfs ones
/// (`.wh.NAME` -> a 0/0 character device NAME; `.wh..wh..opq` -> the directory's
/// `trusted.overlay.opaque` xattr).
fn unpack_layer_tar(reader: &mut impl Read, dest: &Path) -> Result<(), StoreError> {
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_unpack_xattrs(true);
    tar.set_overwrite(true);
    let bad = |e: std::io::Error| StoreError::InvalidArchive(format!("layer: {}", chain(&e)));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(StoreError::InvalidArchive(format!(
                "layer entry {} escapes the layer",
                path.display()
            )));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = dest.join(path.parent().unwrap_or(Path::new("")));
            std::fs::create_dir_all(&parent).map_err(io(parent.display()))?;
            if hidden == ".wh..opq" {
                xattr::set(&parent, "trusted.overlay.opaque", b"y")
                    .map_err(io(parent.display()))?;
            } else {
                let target = parent.join(hidden);
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )
                .map_err(|e| StoreError::Io(target.display().to_string(), e.into()))?;
            }
            continue;
        }
        entry.unpack_in(dest).map_err(bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
