use super::*;

/// Builds a tarball from (path, content) pairs; `None` content makes a directory.
fn tarball(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        match content {
            Some(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
            }
        }
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.unwrap_or_default())
            .expect("append");
    }
    builder.into_inner().expect("finish")
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// An OCI layout tarball with one image of the given layers, named `name`.
fn oci_archive(name: &str, layers: &[Vec<u8>], break_layer_digest: bool) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let digest = sha(layer);
        diff_ids.push(digest.clone());
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest, "size": layer.len()}));
        let mut content = layer.clone();
        if break_layer_digest {
            content.push(0);
        }
        files.push((format!("blobs/sha256/{}", &digest[7..]), content));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Env": ["A=b"], "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
    .expect("json");
    let config_digest = sha(&config);
    files.push((
        format!("blobs/sha256/{}", &config_digest[7..]),
        config.clone(),
    ));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": descriptors}))
    .expect("json");
    let manifest_digest = sha(&manifest);
    files.push((
        format!("blobs/sha256/{}", &manifest_digest[7..]),
        manifest.clone(),
    ));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": name}}]}))
    .expect("json");
    files.push(("index.json".into(), index));
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    let entries: Vec<(&str, Option<&[u8]>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_slice())))
        .collect();
    tarball(&entries)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn imports_oci_layout_shares_layers_and_collects_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open");
    let base = tarball(&[("bin", None), ("bin/tool", Some(b"tool"))]);
    let top = tarball(&[("etc", None), ("etc/conf", Some(b"conf"))]);
    let a = write(
        dir.path(),
        "a.tar",
        &oci_archive("app", std::slice::from_ref(&base), false),
    );
    let b = write(
        dir.path(),
        "b.tar",
        &oci_archive("example.com/team/app:v2", &[base.clone(), top], false),
    );
    let imported = store.import(&a).expect("import a");
    assert_eq!(imported.len(), 1);
    let image = &imported[0];
    assert_eq!(image.repo_tags, vec!["docker.io/library/app:latest"]);
    assert_eq!(
        image.repo_digests,
        vec![format!("docker.io/library/app@{}", image.manifest_digest)]
    );
    assert_eq!(image.config.entrypoint, vec!["/bin/sh"]);
    assert_eq!(image.config.user, "1000");
    let layer = store.layer_dir(&sha(&base)).expect("layer");
    assert_eq!(
        std::fs::read(layer.join("bin/tool")).expect("read"),
        b"tool"
    );
    store.import(&b).expect("import b");
    assert_eq!(store.list().expect("list").len(), 2);
    // Lookups: short name, ID, ID hex prefix, repo digest.
    assert!(store.find("app").expect("find").is_some());
    assert!(store.find(&image.id).expect("find").is_some());
    assert!(store.find(&image.id[7..19]).expect("find").is_some());
    assert!(store.find(&image.repo_digests[0]).expect("find").is_some());
    assert!(store.find("nothere").expect("find").is_none());
    // The shared layer survives removing one of its images.
    assert!(store.remove("app", &BTreeSet::new()).expect("remove"));
    assert!(layer.join("bin/tool").exists());
    assert!(!store.remove("app", &BTreeSet::new()).expect("remove again"));
    let in_use: BTreeSet<String> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(matches!(
        store.remove("example.com/team/app:v2", &in_use),
        Err(StoreError::InUse(_))
    ));
    assert!(
        store
            .remove("example.com/team/app:v2", &BTreeSet::new())
            .expect("remove")
    );
    assert!(!layer.exists());
    assert_eq!(
        std::fs::read_dir(store.dir().join("content/sha256"))
            .expect("dir")
            .count(),
        0
    );
}

#[test]
fn a_broken_archive_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open");
    let layer = tarball(&[("f", Some(b"x"))]);
    let broken = write(dir.path(), "bad.tar", &oci_archive("bad", &[layer], true));
    assert!(matches!(
        store.import(&broken),
        Err(StoreError::DigestMismatch { .. })
    ));
    let garbage = write(dir.path(), "garbage.tar", &tarball(&[("x", Some(b"y"))]));
    assert!(matches!(
        store.import(&garbage),
        Err(StoreError::InvalidArchive(_))
    ));
    assert!(store.list().expect("list").is_empty());
    for sub in ["content/sha256", "layers", "tmp"] {
        assert_eq!(
            std::fs::read_dir(store.dir().join(sub))
                .expect("dir")
                .count(),
            0,
            "{sub} not empty"
        );
    }
}

#[test]
fn imports_docker_archives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open");
    let layer = tarball(&[("hello", Some(b"world"))]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]}}))
    .expect("json");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json", "RepoTags": ["busybox:1.0"], "Layers": ["abc/layer.tar"]}]))
    .expect("json");
    let archive = tarball(&[
        ("manifest.json", Some(&manifest)),
        ("config.json", Some(&config)),
        ("abc", None),
        ("abc/layer.tar", Some(&layer)),
    ]);
    let path = write(dir.path(), "docker.tar", &archive);
    let imported = store.import(&path).expect("import");
    assert_eq!(imported[0].id, sha(&config));
    assert_eq!(imported[0].repo_tags, vec!["docker.io/library/busybox:1.0"]);
    assert_eq!(imported[0].config.cmd, vec!["/hello"]);
    assert!(store.find("busybox:1.0").expect("find").is_some());
}

/// Needs root (mknod, trusted.* xattrs); CI runs as root.
#[test]
fn whiteouts_become_overlay_whiteouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = tarball(&[
        ("d", None),
        ("d/.wh..wh..opq", Some(b"")),
        (".wh.gone", Some(b"")),
    ]);
    let dest = dir.path().join("out");
    std::fs::create_dir(&dest).expect("mkdir");
    unpack_layer_tar(&mut layer.as_slice(), &dest).expect("unpack");
    let meta = std::fs::symlink_metadata(dest.join("gone")).expect("whiteout");
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), 0);
    assert_eq!(
        xattr::get(dest.join("d"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );
}
