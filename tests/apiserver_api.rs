//! Raw HTTP behaviour of the apiserver that kubectl does not show directly: bearer
//! tokens, Status codes for bad requests (401, 404, 405, 413, 415, 422), YAML bodies,
//! generateName, deletecollection, watch from a version, BOOKMARK events, WatchList
//! (`sendInitialEvents`), Table output in watches, and `/version`.

mod common;

use std::process::Command;

use anyhow::{Context, Result};
use common::Server;
use ferrokube_testkit::Etcd;
use serde_json::{Value, json};

struct Reply {
    code: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }

    /// Watch events, one JSON object per line.
    fn events(&self) -> Result<Vec<Value>> {
        self.body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }
}

fn token(server: &Server) -> Result<String> {
    let csv = std::fs::read_to_string(server.path().join("tokens.csv"))?;
    Ok(csv
        .split(',')
        .next()
        .context("empty tokens.csv")?
        .to_string())
}

fn call(
    server: &Server,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&[u8]>,
    extra: &[&str],
) -> Result<Reply> {
    let dir = tempfile::tempdir()?;
    let headers_file = dir.path().join("headers");
    let mut command = Command::new("curl");
    command
        .args(["-sk", "--max-time", "30", "-X", method, "-D"])
        .arg(&headers_file)
        .args(["-H", &format!("Authorization: Bearer {}", token(server)?)])
        .args(["-H", &format!("Content-Type: {content_type}")])
        .args(extra);
    if let Some(body) = body {
        let file = dir.path().join("body");
        std::fs::write(&file, body)?;
        command
            .arg("--data-binary")
            .arg(format!("@{}", file.display()));
    }
    let out = command
        .arg("-w")
        .arg("\n%{http_code}")
        .arg(server.url(path))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status")?;
    Ok(Reply {
        code: code.trim().parse()?,
        headers: std::fs::read_to_string(&headers_file).unwrap_or_default(),
        body: body.to_string(),
    })
}

fn get(server: &Server, path: &str) -> Result<Reply> {
    call(server, "GET", path, "application/json", None, &[])
}

fn post(server: &Server, path: &str, object: &Value) -> Result<Reply> {
    call(
        server,
        "POST",
        path,
        "application/json",
        Some(&serde_json::to_vec(object)?),
        &[],
    )
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn status_reason(reply: &Reply) -> Result<(u16, String)> {
    let status = reply.json()?;
    assert_eq!(status["kind"], "Status", "{}", reply.body);
    assert_eq!(status["code"].as_u64(), Some(u64::from(reply.code)));
    Ok((
        reply.code,
        status["reason"].as_str().unwrap_or_default().to_string(),
    ))
}

fn errors_are_status_objects(server: &Server) -> Result<()> {
    // A wrong token is 401; the right one works.
    let out = Command::new("curl")
        .args([
            "-sk",
            "-H",
            "Authorization: Bearer wrong",
            "-w",
            "\n%{http_code}",
        ])
        .arg(server.url("/api/v1/namespaces"))
        .output()?;
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("401"));
    assert_eq!(get(server, "/api/v1/namespaces")?.code, 200);
    assert_eq!(
        status_reason(&get(server, "/api/v1/bogus")?)?,
        (404, "NotFound".into())
    );
    assert_eq!(
        status_reason(&call(
            server,
            "PUT",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            Some(b"{}"),
            &[]
        )?)?,
        (405, "MethodNotAllowed".into())
    );
    assert_eq!(
        status_reason(&call(
            server,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "text/plain",
            Some(b"x"),
            &[]
        )?)?,
        (415, "UnsupportedMediaType".into())
    );
    let huge = serde_json::to_vec(
        &json!({"metadata": {"name": "huge"}, "data": {"k": "x".repeat(4 * 1024 * 1024)}}),
    )?;
    assert_eq!(
        status_reason(&call(
            server,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            Some(&huge),
            &[]
        )?)?,
        (413, "RequestEntityTooLarge".into())
    );
    assert_eq!(
        get(server, "/api/v1/namespaces/default/configmaps/huge")?.code,
        404
    );
    assert_eq!(
        status_reason(&call(
            server,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            Some(b"{not json"),
            &[]
        )?)?,
        (400, "BadRequest".into())
    );
    let invalid = post(
        server,
        "/api/v1/namespaces/default/pods",
        &json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
    )?;
    assert_eq!(status_reason(&invalid)?, (422, "Invalid".into()));
    assert_eq!(
        invalid.json()?["details"]["causes"][0]["field"],
        "spec.containers"
    );
    assert_eq!(get(server, "/api/v1/namespaces/default/pods/p")?.code, 404);
    assert_eq!(
        status_reason(&post(
            server,
            "/api/v1/namespaces/nowhere/configmaps",
            &cm("x", json!({}))
        )?)?,
        (404, "NotFound".into())
    );
    Ok(())
}

fn delete_options_are_checked(server: &Server) -> Result<()> {
    let reply = post(
        server,
        "/api/v1/namespaces/default/configmaps",
        &cm("opts", json!({})),
    )?;
    assert_eq!(reply.code, 201, "{}", reply.body);
    let path = "/api/v1/namespaces/default/configmaps/opts";
    for options in [
        json!({"propagationPolicy": "Sideways"}),
        json!({"propagationPolicy": "Orphan", "orphanDependents": true}),
    ] {
        let reply = call(
            server,
            "DELETE",
            path,
            "application/json",
            Some(&serde_json::to_vec(&options)?),
            &[],
        )?;
        assert_eq!(
            status_reason(&reply)?,
            (422, "Invalid".into()),
            "{}",
            reply.body
        );
        assert_eq!(
            get(server, path)?.code,
            200,
            "a refused delete removed the object"
        );
    }
    // A body that is not DeleteOptions at all is refused as upstream refuses it (400), and
    // deletes nothing (it used to be read as empty options and delete).
    for (content_type, body) in [
        ("application/json", &b"{not json"[..]),
        ("application/json", &b"[1, 2]"[..]),
        ("application/yaml", &b"propagationPolicy: [unclosed"[..]),
    ] {
        let reply = call(server, "DELETE", path, content_type, Some(body), &[])?;
        assert_eq!(
            status_reason(&reply)?,
            (400, "BadRequest".into()),
            "{}",
            reply.body
        );
        assert_eq!(
            get(server, path)?.code,
            200,
            "a malformed delete removed the object"
        );
    }
    // Orphan marks the object with the collector's finalizer (these servers run without
    // controllers, so it stays marked); removing the finalizer completes the deletion.
    let reply = call(
        server,
        "DELETE",
        &format!("{path}?propagationPolicy=Orphan"),
        "application/json",
        None,
        &[],
    )?;
    assert_eq!(reply.code, 200, "{}", reply.body);
    let marked = reply.json()?;
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    assert_eq!(marked["metadata"]["finalizers"], json!(["orphan"]));
    assert_eq!(
        get(server, path)?.json()?["metadata"]["finalizers"],
        json!(["orphan"])
    );
    let reply = call(
        server,
        "PATCH",
        path,
        "application/merge-patch+json",
        Some(br#"{"metadata":{"finalizers":null}}"#),
        &[],
    )?;
    assert_eq!(reply.code, 200, "{}", reply.body);
    assert_eq!(get(server, path)?.code, 404);
    Ok(())
}

fn per_kind_validation_refuses_and_stores_nothing(server: &Server) -> Result<()> {
    let cases = [
        (
            "/apis/apps/v1/namespaces/default/deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"},
                   "spec": {"selector": {"matchLabels": {"a": "b"}},
                            "strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}},
                            "template": {"metadata": {"labels": {"a": "b"}},
                                         "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            "spec.strategy.rollingUpdate",
        ),
        (
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "bad"},
                   "endpoints": [{"addresses": ["10.0.0.1"]}]}),
            "addressType",
        ),
        (
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"},
                   "spec": {"ports": [{"port": 80}, {"port": 81, "name": "b"}]}}),
            "spec.ports[0].name",
        ),
        (
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad"},
                   "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
            "data[tls.key]",
        ),
    ];
    for (path, object, field) in cases {
        let reply = post(server, path, &object)?;
        assert_eq!(
            status_reason(&reply)?,
            (422, "Invalid".into()),
            "{}",
            reply.body
        );
        let causes = reply.json()?["details"]["causes"].clone();
        assert!(
            causes
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["field"] == field)),
            "{path}: no cause for {field}: {causes}"
        );
        assert_eq!(
            get(server, &format!("{path}/bad"))?.code,
            404,
            "{path}: stored"
        );
    }
    Ok(())
}

fn bodies_names_and_collections(server: &Server) -> Result<()> {
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: '1'\n";
    let created = call(
        server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/yaml",
        Some(yaml),
        &[],
    )?;
    assert_eq!(created.code, 201, "{}", created.body);
    assert_eq!(created.json()?["data"]["a"], "1");
    let generated = post(
        server,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"generateName": "gen-"}}),
    )?;
    let name = generated.json()?["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    for (n, tier) in [("a", "x"), ("b", "x"), ("c", "y")] {
        assert_eq!(
            post(
                server,
                "/api/v1/namespaces/default/configmaps",
                &cm(n, json!({"tier": tier}))
            )?
            .code,
            201
        );
    }
    let deleted = call(
        server,
        "DELETE",
        "/api/v1/namespaces/default/configmaps?labelSelector=tier%3Dx",
        "application/json",
        None,
        &[],
    )?;
    assert_eq!(deleted.code, 200);
    let left = get(
        server,
        "/api/v1/namespaces/default/configmaps?labelSelector=tier",
    )?
    .json()?;
    let names: Vec<&str> = left["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["c"]);
    let metrics = get(server, "/metrics")?;
    assert_eq!(metrics.code, 200);
    for needle in [
        r#"apiserver_request_total{verb="POST",resource="configmaps",code="201"} 5"#,
        r#"apiserver_request_total{verb="DELETECOLLECTION",resource="configmaps",code="200"} 1"#,
        r#"apiserver_request_duration_seconds_bucket{"#,
        r#"apiserver_storage_request_duration_seconds_count{operation="txn"}"#,
    ] {
        assert!(
            metrics.body.contains(needle),
            "missing {needle} in\n{}",
            metrics.body
        );
    }
    let version = get(server, "/version")?.json()?;
    assert_eq!(
        (version["major"].as_str(), version["minor"].as_str()),
        (Some("1"), Some("35"))
    );
    assert!(
        version["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("v1.35."))
    );
    Ok(())
}

fn watches(server: &Server) -> Result<()> {
    let start = get(server, "/api/v1/namespaces/default/configmaps")?.json()?["metadata"]["resourceVersion"].as_str().context("rv")?.to_string();
    post(
        server,
        "/api/v1/namespaces/default/configmaps",
        &cm("w1", json!({})),
    )?;
    post(
        server,
        "/api/v1/namespaces/default/configmaps",
        &cm("w2", json!({"keep": "yes"})),
    )?;
    // From a version: exactly the changes after it; the server ends the stream on timeout.
    let events = get(
        server,
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start}&timeoutSeconds=2"
        ),
    )?
    .events()?;
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(seen, [("ADDED", "w1"), ("ADDED", "w2")]);
    // Label-filtered, with bookmarks (the test server sends one every second).
    let events = get(server, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start}&labelSelector=keep&allowWatchBookmarks=true&timeoutSeconds=3"))?.events()?;
    assert_eq!(events[0]["object"]["metadata"]["name"], "w2");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .context("no BOOKMARK event")?;
    assert!(
        bookmark["object"]["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| !rv.is_empty())
    );
    // WatchList: initial state, then a bookmark marking its end.
    let events = get(server, "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1")?.events()?;
    let added: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "ADDED")
        .filter_map(|e| e["object"]["metadata"]["name"].as_str())
        .collect();
    assert_eq!(added, ["w1", "w2"]);
    let end = events.iter().position(|e| {
        e["type"] == "BOOKMARK"
            && e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
    });
    assert_eq!(end, Some(2), "{events:?}");
    let refused = get(
        server,
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true",
    )?;
    assert_eq!(status_reason(&refused)?, (422, "Invalid".into()));
    // Watch in Table form, as `kubectl get -w` asks.
    let table = call(
        server,
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start}&timeoutSeconds=1"
        ),
        "application/json",
        None,
        &["-H", "Accept: application/json;as=Table;v=v1;g=meta.k8s.io"],
    )?;
    let events = table.events()?;
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert_eq!(events[0]["object"]["rows"][0]["cells"][0], "w1");
    assert!(
        table
            .headers
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    Ok(())
}

fn watch_fan_out_uses_one_store_watch(server: &Server) -> Result<()> {
    let token = token(server)?;
    let url = server.url("/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=4");
    let watchers: Vec<_> = (0..10)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sk",
                    "-N",
                    "--max-time",
                    "20",
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    &url,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    ferrokube_testkit::wait_for(
        "10 open watches",
        std::time::Duration::from_secs(20),
        || {
            let metrics = get(server, "/metrics")?.body;
            Ok(metrics
                .contains(r#"apiserver_registered_watchers{resource="configmaps"} 10"#)
                .then_some(()))
        },
    )?;
    for name in ["f1", "f2", "f3"] {
        post(
            server,
            "/api/v1/namespaces/default/configmaps",
            &cm(name, json!({})),
        )?;
    }
    let mut orders = Vec::new();
    for watcher in watchers {
        let out = watcher.wait_with_output()?;
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "ADDED")
            .filter_map(|e| e["object"]["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        orders.push(names);
    }
    for order in &orders {
        assert_eq!(order, &["f1", "f2", "f3"]);
    }
    let metrics = get(server, "/metrics")?.body;
    assert!(
        metrics.contains(r#"apiserver_storage_watches_total{resource="configmaps"} 1"#),
        "{metrics}"
    );
    Ok(())
}

fn with_server(etcd: Option<Etcd>, case: fn(&Server) -> Result<()>) -> Result<()> {
    let server = Server::start_with(
        tempfile::tempdir()?,
        etcd,
        // The API alone: no in-process controllers adding watches or acting on objects.
        &["--watch-bookmark-interval=1s", "--controllers=false"],
    )?;
    case(&server)
}

macro_rules! both_backends {
    ($($case:ident),*) => {
        mod embedded {
            $(#[test] fn $case() -> anyhow::Result<()> { super::with_server(None, super::$case) })*
        }
        mod etcd {
            $(#[test] fn $case() -> anyhow::Result<()> { super::with_server(Some(super::Etcd::start()?), super::$case) })*
        }
    };
}

both_backends!(
    errors_are_status_objects,
    delete_options_are_checked,
    per_kind_validation_refuses_and_stores_nothing,
    bodies_names_and_collections,
    watches,
    watch_fan_out_uses_one_store_watch
);
