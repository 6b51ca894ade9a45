use super::*;

fn image(entrypoint: &[&str], cmd: &[&str], user: &str) -> ImageRecord {
    ImageRecord {
        id: "sha256:0".into(),
        repo_tags: Vec::new(),
        repo_digests: Vec::new(),
        manifest_digest: String::new(),
        blobs: Vec::new(),
        layers: Vec::new(),
        size: 0,
        config: crate::store::ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/work".into(),
            user: user.into(),
        },
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn command_and_args_override_entrypoint_and_cmd_as_upstream() {
    let img = image(&["/ep"], &["c1"], "");
    let cfg = |command: &[&str], args: &[&str]| cri::ContainerConfig {
        command: strings(command),
        args: strings(args),
        ..Default::default()
    };
    assert_eq!(process_args(&cfg(&[], &[]), &img), strings(&["/ep", "c1"]));
    assert_eq!(
        process_args(&cfg(&[], &["a"]), &img),
        strings(&["/ep", "a"])
    );
    assert_eq!(process_args(&cfg(&["/x"], &[]), &img), strings(&["/x"]));
    assert_eq!(
        process_args(&cfg(&["/x"], &["a"]), &img),
        strings(&["/x", "a"])
    );
}

#[test]
fn users_resolve_from_config_image_and_passwd() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\nweb:x:33:44::/:/bin/sh\n",
    )
    .expect("write");
    let root = dir.path();
    assert_eq!(resolve_user(root, None, "").expect("none"), (0, 0));
    assert_eq!(resolve_user(root, None, "1000").expect("uid"), (1000, 0));
    assert_eq!(
        resolve_user(root, None, "1000:5").expect("uid:gid"),
        (1000, 5)
    );
    assert_eq!(resolve_user(root, None, "web").expect("name"), (33, 44));
    assert!(resolve_user(root, None, "nobody-here").is_err());
    let sc = cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 7 }),
        run_as_group: Some(cri::Int64Value { value: 8 }),
        ..Default::default()
    };
    assert_eq!(
        resolve_user(root, Some(&sc), "web").expect("config wins"),
        (7, 8)
    );
}

#[test]
fn spec_joins_the_sandbox_and_carries_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Sandbox {
        id: "s".into(),
        metadata: Default::default(),
        hostname: "pod".into(),
        log_directory: String::new(),
        labels: HashMap::new(),
        annotations: HashMap::new(),
        runtime_handler: String::new(),
        created_at: 0,
        state: crate::sandbox::State::Ready,
        host_network: false,
        dir: dir.path().join("sandbox"),
        ips: vec!["10.0.0.2".into()],
        cni_result: None,
        cgroup: "/pods/p".into(),
        cgroup_created: true,
        dns: None,
    };
    let config = cri::ContainerConfig {
        envs: vec![cri::KeyValue {
            key: "A".into(),
            value: "config".into(),
        }],
        mounts: vec![cri::Mount {
            container_path: "/data".into(),
            host_path: dir.path().join("data").display().to_string(),
            readonly: true,
            ..Default::default()
        }],
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: strings(&["NET_ADMIN"]),
                    drop_capabilities: strings(&["CAP_KILL"]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let record = Record {
        id: "c".into(),
        sandbox_id: "s".into(),
        name: "c".into(),
        attempt: 0,
        image: String::new(),
        image_id: String::new(),
        image_ref: String::new(),
        labels: HashMap::new(),
        annotations: HashMap::new(),
        created_at: 0,
        started_at: 0,
        log_path: String::new(),
        mounts: Vec::new(),
        cgroup: "/pods/p/c".into(),
        name_key: String::new(),
        stdin: false,
        stdin_once: false,
        tty: false,
    };
    let img = image(&["/bin/sleep"], &["1"], "");
    let spec = oci_spec(&sandbox, &config, &img, &record, dir.path(), &sandbox.dir).expect("spec");
    let json = serde_json::to_value(&spec).expect("json");
    assert!(
        json.get("hostname").is_none(),
        "a hostname would rename the pod"
    );
    assert_eq!(
        json["process"]["args"],
        serde_json::json!(["/bin/sleep", "1"])
    );
    assert_eq!(json["process"]["cwd"], "/work");
    let env = json["process"]["env"].as_array().expect("env");
    assert!(env.contains(&"A=config".into()) && !env.contains(&"A=image".into()));
    assert!(env.contains(&"HOSTNAME=pod".into()));
    let caps = json["process"]["capabilities"]["bounding"]
        .as_array()
        .expect("caps");
    assert!(caps.contains(&"CAP_NET_ADMIN".into()) && !caps.contains(&"CAP_KILL".into()));
    assert_eq!(
        json["process"]["capabilities"]["ambient"],
        serde_json::json!([])
    );
    assert!(json["process"].get("rlimits").is_none());
    let ns = json["linux"]["namespaces"].as_array().expect("namespaces");
    let path_of = |t: &str| {
        ns.iter()
            .find(|n| n["type"] == t)
            .map(|n| n["path"].clone())
    };
    assert_eq!(
        path_of("network"),
        Some(serde_json::json!(dir.path().join("sandbox/net")))
    );
    assert_eq!(path_of("pid"), Some(serde_json::Value::Null));
    assert_eq!(json["linux"]["cgroupsPath"], "/pods/p/c");
    assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 512);
    assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
    assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
    let mounts = json["mounts"].as_array().expect("mounts");
    let data = mounts
        .iter()
        .find(|m| m["destination"] == "/data")
        .expect("data");
    assert!(
        data["options"]
            .as_array()
            .expect("options")
            .contains(&"ro".into())
    );
    assert!(
        dir.path().join("data").is_dir(),
        "missing host path created"
    );
    assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts"));
}

#[test]
fn phase_comes_from_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("store");
    let containers =
        Containers::open(dir.path(), "runc".into(), "shim".into(), store).expect("open");
    let mut record = Record {
        id: "c1".into(),
        sandbox_id: "s".into(),
        name: "c".into(),
        attempt: 0,
        image: String::new(),
        image_id: String::new(),
        image_ref: String::new(),
        labels: HashMap::new(),
        annotations: HashMap::new(),
        created_at: 1,
        started_at: 0,
        log_path: String::new(),
        mounts: Vec::new(),
        cgroup: String::new(),
        name_key: "k".into(),
        stdin: false,
        stdin_once: false,
        tty: false,
    };
    let state = dir.path().join("containers/c1");
    std::fs::create_dir_all(&state).expect("mkdir");
    assert_eq!(containers.phase(&record), Phase::Created);
    record.started_at = 2;
    // Started, nobody alive, no exit recorded: the shim died.
    assert_eq!(containers.phase(&record), Phase::Unknown);
    std::fs::write(state.join("shim.pid"), std::process::id().to_string()).expect("pid");
    assert_eq!(containers.phase(&record), Phase::Running);
    let exit = Exit {
        code: 3,
        finished_at: 4,
        oom_killed: false,
    };
    std::fs::write(
        state.join("exit.json"),
        serde_json::to_vec(&exit).expect("json"),
    )
    .expect("exit");
    assert_eq!(containers.phase(&record), Phase::Exited(exit));
    // Records survive a reopen.
    containers.save(&record).expect("save");
    let store = ImageStore::open(dir.path()).expect("store");
    let reopened =
        Containers::open(dir.path(), "runc".into(), "shim".into(), store).expect("reopen");
    assert_eq!(reopened.get("c1").expect("get").started_at, 2);
}
