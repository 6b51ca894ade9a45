use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1::{self as meta, ObjectMeta};
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

/// Object metadata as Go's encoder writes it: every non-pointer field present, even empty.
fn go_meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: Some(name.into()),
        generate_name: Some(String::new()),
        namespace: Some(String::new()),
        uid: Some(String::new()),
        resource_version: Some(String::new()),
        generation: Some(0),
        creation_timestamp: Some(meta::Time {
            seconds: Some(0),
            nanos: Some(0),
        }),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    })
}

fn container(name: &str, image: &str) -> core::Container {
    core::Container {
        name: Some(name.into()),
        image: Some(image.into()),
        resources: Some(core::ResourceRequirements {
            limits: [(
                "memory".to_string(),
                Quantity {
                    string: Some("64Mi".into()),
                },
            )]
            .into(),
            ..Default::default()
        }),
        ports: vec![core::ContainerPort {
            container_port: Some(80),
            protocol: Some("TCP".into()),
            ..Default::default()
        }],
        termination_message_path: Some(String::new()),
        stdin: Some(false),
        ..Default::default()
    }
}

#[test]
fn deployments_decode_as_their_json_form() {
    let deployment = apps::Deployment {
        metadata: go_meta("web"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                match_expressions: vec![],
            }),
            template: Some(core::PodTemplateSpec {
                metadata: go_meta("web"),
                spec: Some(core::PodSpec {
                    containers: vec![container("nginx", "nginx:1.27")],
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: Some(String::new()),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("25%".into()),
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus::default()),
    };
    let json = decode(&envelope(
        "apps/v1",
        "Deployment",
        deployment.encode_to_vec(),
    ))
    .unwrap();
    // What upstream's JSON encoder gives for the same Go object (empty strings and the
    // zero creationTimestamp omitted, replicas 0 kept, IntOrString as int or string).
    let container = json!({
        "name": "nginx", "image": "nginx:1.27",
        "resources": {"limits": {"memory": "64Mi"}},
        "ports": [{"containerPort": 80, "protocol": "TCP"}],
        "stdin": false,
    });
    assert_eq!(
        json,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": 0, "labels": {"app": "web"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"name": "web", "generation": 0, "labels": {"app": "web"}},
                    "spec": {"containers": [container]},
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"},
                },
            },
            "status": {},
        })
    );
}

#[test]
fn acronym_fields_keep_their_upstream_spelling() {
    let service = core::Service {
        metadata: go_meta("svc"),
        spec: Some(core::ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: vec!["10.96.0.10".into()],
            external_ips: vec!["192.0.2.1".into()],
            ip_families: vec!["IPv4".into()],
            ports: vec![core::ServicePort {
                name: Some("http".into()),
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(1),
                    int_val: Some(0),
                    str_val: Some("web".into()),
                }),
                node_port: Some(30080),
                ..Default::default()
            }],
            r#type: Some("NodePort".into()),
            ..Default::default()
        }),
        status: None,
    };
    let json = decode(&envelope("v1", "Service", service.encode_to_vec())).unwrap();
    assert_eq!(json["spec"]["clusterIP"], json!("10.96.0.10"));
    assert_eq!(json["spec"]["clusterIPs"], json!(["10.96.0.10"]));
    assert_eq!(json["spec"]["externalIPs"], json!(["192.0.2.1"]));
    assert_eq!(json["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(json["spec"]["type"], json!("NodePort"));
    assert_eq!(
        json["spec"]["ports"],
        json!([{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080}])
    );
    let pod = core::Pod {
        metadata: go_meta("p"),
        spec: Some(core::PodSpec {
            host_ipc: Some(true),
            host_pid: Some(false),
            containers: vec![container("c", "busybox")],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            pod_ip: Some("10.244.0.5".into()),
            start_time: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
    };
    let json = decode(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap();
    assert_eq!(json["spec"]["hostIPC"], json!(true));
    assert_eq!(json["spec"]["hostPID"], json!(false));
    assert_eq!(json["status"]["podIP"], json!("10.244.0.5"));
    assert_eq!(json["status"]["startTime"], json!("2023-11-14T22:13:20Z"));
}

#[test]
fn secrets_configmaps_and_delete_options_decode() {
    let secret = core::Secret {
        metadata: Some(ObjectMeta {
            name: Some("s".into()),
            ..Default::default()
        }),
        data: [("pw".to_string(), b"hunter2".to_vec())].into(),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let json = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
    assert_eq!(
        json,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"pw": "aHVudGVyMg=="}, "type": "Opaque"})
    );
    let cm = core::ConfigMap {
        metadata: Some(ObjectMeta {
            name: Some("c".into()),
            ..Default::default()
        }),
        data: [("k".to_string(), String::new())].into(),
        binary_data: [("b".to_string(), vec![0, 1])].into(),
        ..Default::default()
    };
    let json = decode(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
    // An empty value inside a map is data, not an omitted field.
    assert_eq!(json["data"], json!({"k": ""}));
    assert_eq!(json["binaryData"], json!({"b": "AAE="}));
    let options = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: Some("Foreground".into()),
        preconditions: Some(meta::Preconditions {
            uid: Some("u-1".into()),
            resource_version: None,
        }),
        dry_run: vec!["All".into()],
        ..Default::default()
    };
    let json = decode(&envelope("v1", "DeleteOptions", options.encode_to_vec())).unwrap();
    assert_eq!(json["gracePeriodSeconds"], json!(0));
    assert_eq!(json["propagationPolicy"], json!("Foreground"));
    assert_eq!(json["preconditions"], json!({"uid": "u-1"}));
    assert_eq!(json["dryRun"], json!(["All"]));
}

#[test]
fn packed_and_unpacked_repeated_numbers_both_decode() {
    // EndpointSlice hints are strings; use PodSpec.securityContext.supplementalGroups
    // (repeated int64), written once unpacked (as Go does) and once packed.
    let ctx = core::PodSecurityContext {
        supplemental_groups: vec![1000, 2000],
        ..Default::default()
    };
    let unpacked = ctx.encode_to_vec();
    let mut packed = Vec::new();
    prost::encoding::encode_key(4, WireType::LengthDelimited, &mut packed);
    let mut run = Vec::new();
    prost::encoding::encode_varint(1000, &mut run);
    prost::encoding::encode_varint(2000, &mut run);
    prost::encoding::encode_varint(run.len() as u64, &mut packed);
    packed.extend(run);
    for body in [unpacked, packed] {
        let json = message(
            "api.core.v1.PodSecurityContext",
            "api.core.v1.PodSecurityContext",
            &body,
            0,
        )
        .unwrap();
        assert_eq!(json, json!({"supplementalGroups": [1000, 2000]}));
    }
}

#[test]
fn unknown_kinds_and_garbage_are_refused() {
    assert!(matches!(
        decode(&envelope("batch/v1", "Job", vec![])),
        Err(ApiError::UnsupportedMediaType(_))
    ));
    assert!(matches!(
        decode(b"not protobuf"),
        Err(ApiError::BadRequest(_))
    ));
    assert!(matches!(
        decode(b"k8s\0\xff\xff\xff"),
        Err(ApiError::BadRequest(_))
    ));
    // A Pod whose metadata claims more bytes than the body has.
    assert!(matches!(
        decode(&envelope("v1", "Pod", vec![0x0a, 0x7f, 0x0a])),
        Err(ApiError::BadRequest(_))
    ));
    // A string field that is not UTF-8.
    assert!(matches!(
        decode(&envelope("v1", "Pod", vec![0x0a, 0x03, 0x0a, 0x01, 0xff])),
        Err(ApiError::BadRequest(_))
    ));
}

/// Fields `k8s-pb` (generated from a newer Kubernetes) has and `k8s-openapi`'s schema
/// lacks; they fall back to lower camel case, which is upstream's name for them.
const NEWER_THAN_SCHEMA: &[&str] = &["api.core.v1.PodSpec.workload_ref"];

/// Checks every field reachable from `path` (named after `owner`'s schema).
fn check_names(
    path: &str,
    owner: &str,
    seen: &mut BTreeSet<(String, String)>,
    missing: &mut Vec<String>,
    inline: &mut BTreeSet<String>,
) {
    if OPAQUE.contains(&path) || !seen.insert((path.to_string(), owner.to_string())) {
        return;
    }
    let Some(props) = json_names().get(&schema_key(owner)) else {
        missing.push(format!("{path} (no schema)"));
        return;
    };
    for field in messages()[path].values() {
        let full = format!("{path}.{}", field.name);
        let inner = match &field.ty {
            Type::Message(inner) => Some(inner.as_str()),
            Type::Scalar(_) => None,
        };
        match json_field(owner, field) {
            JsonField::Named(name) => {
                if !props.contains_key(&normalise(&name))
                    && !NEWER_THAN_SCHEMA.contains(&full.as_str())
                {
                    missing.push(full);
                }
                if let Some(inner) = inner.filter(|i| !NEWER_THAN_SCHEMA_TYPES.contains(i)) {
                    check_names(inner, inner, seen, missing, inline);
                }
            }
            JsonField::Inline => {
                inline.insert(full);
                let inner = inner.unwrap();
                check_names(inner, names_owner(inner, owner), seen, missing, inline);
            }
        }
    }
}

/// Messages only reachable through [`NEWER_THAN_SCHEMA`] fields.
const NEWER_THAN_SCHEMA_TYPES: &[&str] = &["api.core.v1.WorkloadReference"];

#[test]
fn every_field_has_a_json_name() {
    let (mut seen, mut missing, mut inline) = (BTreeSet::new(), Vec::new(), BTreeSet::new());
    for r in ferrokube_api::registry::RESOURCES {
        let path = root_message(&r.api_version(), r.kind).unwrap();
        check_names(&path, &path, &mut seen, &mut missing, &mut inline);
    }
    for path in EXTRA_ROOTS {
        check_names(path, path, &mut seen, &mut missing, &mut inline);
    }
    assert!(
        missing.is_empty(),
        "fields without a JSON name: {missing:?}"
    );
    assert!(seen.len() > 150, "only {} messages checked", seen.len());
    // Exactly the structs upstream embeds inline.
    let inline: Vec<String> = inline.into_iter().collect();
    assert_eq!(
        inline,
        [
            "api.core.v1.ConfigMapEnvSource.local_object_reference",
            "api.core.v1.ConfigMapKeySelector.local_object_reference",
            "api.core.v1.ConfigMapProjection.local_object_reference",
            "api.core.v1.ConfigMapVolumeSource.local_object_reference",
            "api.core.v1.EphemeralContainer.ephemeral_container_common",
            "api.core.v1.Probe.handler",
            "api.core.v1.SecretEnvSource.local_object_reference",
            "api.core.v1.SecretKeySelector.local_object_reference",
            "api.core.v1.SecretProjection.local_object_reference",
            "api.core.v1.Volume.volume_source",
        ]
    );
}

#[test]
fn embedded_structs_are_inlined() {
    let pod = core::PodSpec {
        volumes: vec![core::Volume {
            name: Some("cfg".into()),
            volume_source: Some(core::VolumeSource {
                config_map: Some(core::ConfigMapVolumeSource {
                    local_object_reference: Some(core::LocalObjectReference {
                        name: Some("settings".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }],
        containers: vec![core::Container {
            name: Some("c".into()),
            readiness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    http_get: Some(core::HttpGetAction {
                        path: Some("/healthz".into()),
                        port: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(8080),
                            str_val: Some(String::new()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let json = message(
        "api.core.v1.PodSpec",
        "api.core.v1.PodSpec",
        &pod.encode_to_vec(),
        0,
    )
    .unwrap();
    assert_eq!(
        json["volumes"],
        json!([{"name": "cfg", "configMap": {"name": "settings"}}])
    );
    assert_eq!(
        json["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5})
    );
}

// ---- the table generator ----------------------------------------------------------------

/// k8s-pb's `src` directory and version, from `cargo metadata`.
fn k8s_pb_sources() -> (PathBuf, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only this platform's packages: offline, the lock's crates for other targets (e.g.
    // Windows ones pulled in by reqwest) were never downloaded.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "k8s-pb")
        .expect("k8s-pb in the dependency graph");
    let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap());
    (
        manifest.parent().unwrap().join("src"),
        package["version"].as_str().unwrap().to_string(),
    )
}

/// Every `mod.rs` under `dir`, with its module path (`api.core.v1`).
fn modules(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            modules(root, &path, out);
        } else if path.file_name().is_some_and(|n| n == "mod.rs") {
            let module = path
                .parent()
                .unwrap()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('/', ".");
            out.push((module, path));
        }
    }
}

/// The message a Rust type names, resolved against the module it is written in.
fn message_type(module: &str, rust_type: &str) -> String {
    const WRAPPERS: &[&str] = &["Option", "Vec", "Box", "BTreeMap", "String"];
    let compact: String = rust_type.chars().filter(|c| !c.is_whitespace()).collect();
    let last = compact
        .split(['<', '>', ','])
        .filter(|t| !t.is_empty())
        .rfind(|t| !WRAPPERS.contains(&t.rsplit("::").next().unwrap_or(t)))
        .unwrap_or_else(|| panic!("no message type in {rust_type}"));
    let mut segments: Vec<&str> = module.split('.').collect();
    let mut rest = last;
    while let Some(r) = rest.strip_prefix("super::") {
        segments.pop();
        rest = r;
    }
    segments.extend(rest.split("::"));
    segments.join(".")
}

/// Parses k8s-pb's generated sources: message path -> `(tag, table line)`.
fn parse_k8s_pb(src: &Path) -> BTreeMap<String, BTreeMap<u32, String>> {
    let mut files = Vec::new();
    modules(src, src, &mut files);
    let mut messages: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    for (module, path) in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let mut current: Option<String> = None;
        while let Some(line) = lines.next() {
            let line = line.trim();
            if let Some(name) = line
                .strip_prefix("pub struct ")
                .and_then(|l| l.strip_suffix(" {"))
            {
                let path = format!("{module}.{name}");
                messages.entry(path.clone()).or_default();
                current = Some(path);
                continue;
            }
            if line == "}" {
                current = None;
                continue;
            }
            let Some(attr) = line
                .strip_prefix("#[prost(")
                .and_then(|l| l.strip_suffix(")]"))
            else {
                continue;
            };
            let message = current.clone().expect("a field outside a message");
            // The declaration follows, possibly over several lines.
            let mut decl = String::new();
            for next in lines.by_ref() {
                decl.push_str(next.trim());
                let depth = decl.matches('<').count() as i64 - decl.matches('>').count() as i64;
                if depth == 0 && decl.ends_with(',') {
                    break;
                }
            }
            let (name, rust_type) = decl
                .strip_prefix("pub ")
                .and_then(|d| d.split_once(':'))
                .unwrap_or_else(|| panic!("unexpected declaration {decl}"));
            let tag: u32 = attr
                .split("tag = \"")
                .nth(1)
                .and_then(|t| t.split('"').next())
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no tag in {attr}"));
            let ty = |kind: &str| match kind {
                "message" => format!("msg:{}", message_type(&module, rust_type)),
                "bytes = \"vec\"" | "bytes" => "bytes".to_string(),
                scalar => scalar.to_string(),
            };
            let line = if let Some(map) = attr.strip_prefix("btree_map = \"") {
                let kinds = map.split('"').next().unwrap();
                let (key, value) = kinds.split_once(", ").unwrap();
                format!("{tag} {name} map {key} {}", ty(value))
            } else {
                let kind = attr.split(", ").next().unwrap();
                let card = if attr.contains("repeated") { "r" } else { "o" };
                format!("{tag} {name} {card} {}", ty(kind))
            };
            messages.entry(message).or_default().insert(tag, line);
        }
    }
    messages
}

/// The table text for everything reachable from the served kinds and [`EXTRA_ROOTS`].
fn generate() -> String {
    let (src, version) = k8s_pb_sources();
    let all = parse_k8s_pb(&src);
    let mut queue: VecDeque<String> = ferrokube_api::registry::RESOURCES
        .iter()
        .map(|r| {
            let av = r.api_version();
            let (group, v) = av.rsplit_once('/').unwrap_or(("", &av));
            let package = if group.is_empty() {
                "core"
            } else {
                group.split('.').next().unwrap()
            };
            format!("api.{package}.{v}.{}", r.kind)
        })
        .chain(EXTRA_ROOTS.iter().map(|s| s.to_string()))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let fields = all
            .get(&path)
            .unwrap_or_else(|| panic!("{path} is not in k8s-pb"));
        for line in fields.values() {
            if let Some(msg) = line.split_whitespace().find_map(|w| w.strip_prefix("msg:")) {
                queue.push_back(msg.to_string());
            }
        }
    }
    let mut out = format!(
        "# Generated from the sources of k8s-pb {version} by the test\n\
         # `protobuf::tests::schema_table_matches_k8s_pb`; rewrite it with\n\
         # UPDATE_PROTOBUF_SCHEMA=1 cargo test -p ferrokube-apiserver schema_table\n\
         # Lines: `M <message>`, then `<tag> <name> o|r <type>` or `<tag> <name> map <key> <value>`.\n"
    );
    for path in seen {
        out.push_str(&format!("M {path}\n"));
        for line in all[&path].values() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn schema_table_matches_k8s_pb() {
    let generated = generate();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protobuf_schema.txt");
    if std::env::var_os("UPDATE_PROTOBUF_SCHEMA").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    assert!(
        generated == TABLE,
        "src/protobuf_schema.txt is stale: run UPDATE_PROTOBUF_SCHEMA=1 cargo test -p ferrokube-apiserver schema_table"
    );
    let parsed = parse_table(&generated).unwrap();
    assert!(parsed.contains_key("api.core.v1.PodSpec"));
    assert!(parsed.contains_key("api.apps.v1.DaemonSetSpec"));
}
