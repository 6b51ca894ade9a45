//! The apiserver judged by the real kubectl 1.35, against the embedded store and a real
//! etcd: apply (create, unchanged, strategic merge), every get form, watch, label,
//! annotate, the three patch types, scale, describe, delete --wait, namespace deletion,
//! explain, and the error cases.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{Backend, Server, kubectl_path};
use serde_json::Value;

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: demo
data:
  a: "1"
---
apiVersion: v1
kind: Secret
metadata:
  name: sec
  namespace: demo
data:
  password: aHVudGVyMg==
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
      - name: sidecar
        image: busybox:1.36
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

fn apply(server: &Server, yaml: &str) -> Result<String> {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))?;
    if !out.status.success() {
        bail!("apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).context("kubectl printed invalid JSON")
}

fn apply_create_unchanged_and_strategic_merge(server: Server) -> Result<()> {
    let out = apply(&server, APP)?;
    for line in [
        "namespace/demo created",
        "configmap/cfg created",
        "secret/sec created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(out.contains(line), "missing {line:?} in {out}");
    }
    let out = apply(&server, APP)?;
    assert_eq!(out.matches("unchanged").count(), 5, "{out}");
    // Changed: replicas, one container's image, a new env var; the other container stays.
    let changed = APP.replace("replicas: 2", "replicas: 3").replace(
        "image: nginx:1.27",
        "image: nginx:1.28\n        env:\n        - {name: MODE, value: fast}",
    );
    let out = apply(&server, &changed)?;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let deploy = json(&server.ok(&["-n", "demo", "get", "deploy", "web", "-o", "json"])?)?;
    assert_eq!(deploy["spec"]["replicas"], 3);
    let containers = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("containers")?;
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["image"], "nginx:1.28");
    assert_eq!(containers[0]["env"][0]["name"], "MODE");
    assert_eq!(containers[1]["image"], "busybox:1.36");
    assert_eq!(deploy["metadata"]["generation"], 2);
    assert!(
        deploy["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    // A Secret's stringData is stored base64-encoded in data.
    apply(
        &server,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: plain, namespace: demo}\nstringData: {password: hunter2}\n",
    )?;
    let secret = json(&server.ok(&["-n", "demo", "get", "secret", "plain", "-o", "json"])?)?;
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    assert!(secret.get("stringData").is_none());
    Ok(())
}

fn get_in_every_form(server: Server) -> Result<()> {
    apply(&server, APP)?;
    let table = server.ok(&["-n", "demo", "get", "deploy"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .context("no header")?
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(table.lines().nth(1).context("no row")?.starts_with("web "));
    let wide = server.ok(&["-n", "demo", "get", "deploy", "-o", "wide"])?;
    assert!(
        wide.contains("CONTAINERS") && wide.contains("nginx:1.27,busybox:1.36"),
        "{wide}"
    );
    let services = server.ok(&["-n", "demo", "get", "svc"])?;
    let header: Vec<&str> = services
        .lines()
        .next()
        .context("no header")?
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{services}"
    );
    let yaml: Value =
        serde_norway::from_str(&server.ok(&["-n", "demo", "get", "cm", "cfg", "-o", "yaml"])?)?;
    assert_eq!(
        (yaml["kind"].as_str(), yaml["data"]["a"].as_str()),
        (Some("ConfigMap"), Some("1"))
    );
    let list = json(&server.ok(&["get", "ns", "-o", "json"])?)?;
    assert_eq!(list["kind"], "List");
    let names: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    for ns in [
        "default",
        "demo",
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ] {
        assert!(names.contains(&ns), "{names:?}");
    }
    let value = server.ok(&[
        "-n",
        "demo",
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[1].name}",
    ])?;
    assert_eq!(value, "sidecar");
    let all_ns = server.ok(&["get", "cm", "-A"])?;
    assert!(
        all_ns
            .lines()
            .any(|l| l.starts_with("demo ") && l.contains("cfg")),
        "{all_ns}"
    );
    let labelled = server.ok(&["get", "deploy", "-A", "-l", "app=web", "-o", "name"])?;
    assert_eq!(labelled.trim(), "deployment.apps/web");
    assert_eq!(
        server
            .ok(&["get", "deploy", "-A", "-l", "app notin (web)", "-o", "name"])?
            .trim(),
        ""
    );
    Ok(())
}

fn watch_sees_a_concurrent_change(server: Server) -> Result<()> {
    apply(&server, APP)?;
    let mut child = Command::new(kubectl_path()?)
        .args(["-n", "demo", "get", "cm", "-w", "-o", "name"])
        .env("KUBECONFIG", server.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let result = (|| -> Result<()> {
        let first = rx.recv_timeout(Duration::from_secs(20))?;
        assert_eq!(first, "configmap/cfg");
        server.ok(&[
            "-n",
            "demo",
            "patch",
            "cm",
            "cfg",
            "--type=merge",
            "-p",
            r#"{"data":{"b":"2"}}"#,
        ])?;
        let second = rx.recv_timeout(Duration::from_secs(20))?;
        assert_eq!(second, "configmap/cfg");
        apply(
            &server,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, namespace: demo}\n",
        )?;
        assert_eq!(rx.recv_timeout(Duration::from_secs(20))?, "configmap/late");
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn label_annotate_patch_scale_describe(server: Server) -> Result<()> {
    apply(&server, APP)?;
    server.ok(&["-n", "demo", "label", "cm", "cfg", "tier=web"])?;
    server.ok(&["-n", "demo", "annotate", "cm", "cfg", "note=hello"])?;
    assert_eq!(
        server
            .ok(&["-n", "demo", "get", "cm", "-l", "tier=web", "-o", "name"])?
            .trim(),
        "configmap/cfg"
    );
    server.ok(&["-n", "demo", "label", "cm", "cfg", "tier-"])?;
    assert_eq!(
        server
            .ok(&["-n", "demo", "get", "cm", "-l", "tier", "-o", "name"])?
            .trim(),
        ""
    );
    server.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type=merge",
        "-p",
        r#"{"data":{"b":"2"}}"#,
    ])?;
    server.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/c","value":"3"},{"op":"remove","path":"/data/a"}]"#,
    ])?;
    server.ok(&["-n", "demo", "patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.37"}]}}}}"#])?;
    let cm = json(&server.ok(&["-n", "demo", "get", "cm", "cfg", "-o", "json"])?)?;
    assert_eq!(cm["data"], serde_json::json!({"b": "2", "c": "3"}));
    assert_eq!(cm["metadata"]["annotations"]["note"], "hello");
    let deploy = json(&server.ok(&["-n", "demo", "get", "deploy", "web", "-o", "json"])?)?;
    let images: Vec<&str> = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("containers")?
        .iter()
        .filter_map(|c| c["image"].as_str())
        .collect();
    assert_eq!(images, ["nginx:1.27", "busybox:1.37"]);
    let failed = server.fails(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/b","value":"9"}]"#,
    ])?;
    assert!(failed.contains("is invalid"), "{failed}");
    let out = server.ok(&["-n", "demo", "scale", "deploy", "web", "--replicas=5"])?;
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(
        server.ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ])?,
        "5"
    );
    let described = server.ok(&["-n", "demo", "describe", "deploy", "web"])?;
    assert!(
        described.contains("Name:")
            && described.contains("web")
            && described.contains("nginx:1.27"),
        "{described}"
    );
    let described = server.ok(&["-n", "demo", "describe", "cm", "cfg"])?;
    assert!(described.contains("note: hello"), "{described}");
    Ok(())
}

fn delete_wait_and_namespace_deletion(server: Server) -> Result<()> {
    apply(&server, APP)?;
    let out = server.ok(&["-n", "demo", "delete", "cm", "cfg", "--wait"])?;
    assert!(out.contains("configmap \"cfg\" deleted"), "{out}");
    let err = server.fails(&["-n", "demo", "get", "cm", "cfg"])?;
    assert!(
        err.contains("NotFound") && err.contains("configmaps \"cfg\" not found"),
        "{err}"
    );
    // An object with a finalizer is only marked; removing the finalizer completes it.
    apply(
        &server,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: demo, finalizers: [example.com/hold]}\n",
    )?;
    server.ok(&["-n", "demo", "delete", "cm", "held", "--wait=false"])?;
    let held = json(&server.ok(&["-n", "demo", "get", "cm", "held", "-o", "json"])?)?;
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    server.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])?;
    server.fails(&["-n", "demo", "get", "cm", "held"])?;
    // Deleting the namespace removes what is in it.
    server.ok(&["delete", "ns", "demo", "--wait"])?;
    let err = server.fails(&["get", "ns", "demo"])?;
    assert!(err.contains("not found"), "{err}");
    assert_eq!(
        server
            .ok(&["-n", "demo", "get", "deploy,svc,secret,cm", "-o", "name"])?
            .trim(),
        ""
    );
    let err = server.fails(&["delete", "ns", "default"])?;
    assert!(err.contains("may not be deleted"), "{err}");
    Ok(())
}

fn explain_and_errors(server: Server) -> Result<()> {
    let explained = server.ok(&["explain", "deployment.spec.replicas"])?;
    assert!(
        explained.contains("KIND:       Deployment") && explained.contains("replicas <integer>"),
        "{explained}"
    );
    let explained = server.ok(&["explain", "pods.spec.containers.image"])?;
    assert!(explained.contains("image <string>"), "{explained}");
    // Unknown field: refused under kubectl's default strict validation.
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: u, namespace: default, bogus: 1}\ndata: {a: '1'}\n";
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(bad))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"metadata.bogus\""), "{err}");
    server.fails(&["get", "cm", "u"])?;
    // ... and accepted with a warning under --validate=warn.
    let out = server.kubectl_stdin(&["apply", "--validate=warn", "-f", "-"], Some(bad))?;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Warning: unknown field \"metadata.bogus\"")
    );
    // Invalid object: 422 with the field.
    let invalid = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\ndata: {a: '1'}\n";
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(invalid))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is invalid") && err.contains("metadata.name"),
        "{err}"
    );
    // Missing object.
    let err = server.fails(&["get", "deploy", "nope"])?;
    assert!(err.contains("deployments.apps \"nope\" not found"), "{err}");
    // Stale update: 409 Conflict.
    apply(
        &server,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {a: '1'}\n",
    )?;
    let current = json(&server.ok(&["get", "cm", "c", "-o", "json"])?)?;
    server.ok(&[
        "patch",
        "cm",
        "c",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"2"}}"#,
    ])?;
    let stale = serde_json::to_string(&current)?;
    let out = server.kubectl_stdin(&["replace", "-f", "-"], Some(&stale))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the object has been modified"),
        "{err}"
    );
    Ok(())
}

fn services_get_cluster_ips_and_node_ports(server: Server) -> Result<()> {
    let svc = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  {extra}\n  ports: [{{port: 80}}]\n"
        )
    };
    apply(&server, &svc("a", "type: ClusterIP"))?;
    let a = json(&server.ok(&["get", "svc", "a", "-o", "json"])?)?;
    let ip: std::net::Ipv4Addr = a["spec"]["clusterIP"]
        .as_str()
        .context("clusterIP")?
        .parse()?;
    let octets = ip.octets();
    assert!(
        octets[0] == 10 && (96..112).contains(&octets[1]),
        "{ip} outside 10.96.0.0/12"
    );
    assert_eq!(a["spec"]["clusterIPs"][0], a["spec"]["clusterIP"]);
    apply(&server, &svc("np", "type: NodePort"))?;
    let np = json(&server.ok(&["get", "svc", "np", "-o", "json"])?)?;
    let port = np["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .context("nodePort")?;
    assert!((30000..=32767).contains(&port), "{port}");
    assert_ne!(np["spec"]["clusterIP"], a["spec"]["clusterIP"]);
    // The same IP or port asked for again is refused with 422 and nothing is stored.
    let dup_ip = svc("b", &format!("clusterIP: {ip}"));
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(&dup_ip))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("provided IP is already allocated"),
        "{err}"
    );
    server.fails(&["get", "svc", "b"])?;
    let dup_port = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {port}}}]\n"
    );
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(&dup_port))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("provided port is already allocated"),
        "{err}"
    );
    let outside = svc("d", "clusterIP: 192.168.0.10");
    let err = String::from_utf8_lossy(
        &server
            .kubectl_stdin(&["apply", "-f", "-"], Some(&outside))?
            .stderr,
    )
    .into_owned();
    assert!(err.contains("not in the valid range"), "{err}");
    // Deleting releases: the IP and port can be taken again.
    server.ok(&["delete", "svc", "a", "np"])?;
    apply(&server, &dup_ip)?;
    apply(&server, &dup_port)?;
    assert_eq!(
        json(&server.ok(&["get", "svc", "b", "-o", "json"])?)?["spec"]["clusterIP"],
        ip.to_string()
    );
    // clusterIP is immutable.
    let out = server.kubectl(&[
        "patch",
        "svc",
        "b",
        "--type=merge",
        "-p",
        r#"{"spec":{"clusterIP":"10.96.9.9"}}"#,
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("immutable"), "{err}");
    // Switching to NodePort allocates a port; back to ClusterIP releases it.
    server.ok(&[
        "patch",
        "svc",
        "b",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ])?;
    let b = json(&server.ok(&["get", "svc", "b", "-o", "json"])?)?;
    assert!(b["spec"]["ports"][0]["nodePort"].as_i64().is_some());
    let table = server.ok(&["get", "svc", "b"])?;
    assert!(
        table.contains(&format!("{ip}")) && table.contains("80:"),
        "{table}"
    );
    Ok(())
}

fn server_dry_run_and_diff_change_nothing(server: Server) -> Result<()> {
    apply(&server, APP)?;
    let before = server.ok(&["get", "-A", "deploy,svc,cm,secret,ns", "-o", "json"])?;
    let out = server.kubectl_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&APP.replace("replicas: 2", "replicas: 9")),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("deployment.apps/web configured (server dry run)")
    );
    let out = server.kubectl_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ghost, namespace: demo}\n"),
    )?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configmap/ghost created (server dry run)")
    );
    // Invalid objects are still refused in a dry run.
    let out = server.kubectl_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad, namespace: demo}\n"),
    )?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is invalid"));
    assert!(
        server
            .ok(&["-n", "demo", "delete", "cm", "cfg", "--dry-run=server"])?
            .contains("(server dry run)")
    );
    assert!(
        server
            .ok(&["delete", "ns", "demo", "--dry-run=server"])?
            .contains("(server dry run)")
    );
    assert!(
        server
            .ok(&[
                "-n",
                "demo",
                "scale",
                "deploy",
                "web",
                "--replicas=7",
                "--dry-run=server"
            ])?
            .contains("(server dry run)")
    );
    // kubectl diff: exit 1 with the change shown, nothing stored.
    let out = server.kubectl_stdin(
        &["diff", "-f", "-"],
        Some(&APP.replace("nginx:1.27", "nginx:1.29")),
    )?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("-      - image: nginx:1.27") && diff.contains("+      - image: nginx:1.29"),
        "{diff}"
    );
    let after = server.ok(&["get", "-A", "deploy,svc,cm,secret,ns", "-o", "json"])?;
    assert_eq!(before, after, "a dry run changed stored objects");
    Ok(())
}

fn imperative_creates_send_protobuf(server: Server) -> Result<()> {
    assert!(
        server
            .ok(&["create", "namespace", "imp"])?
            .contains("namespace/imp created")
    );
    server.ok(&[
        "-n",
        "imp",
        "create",
        "configmap",
        "c",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ])?;
    server.ok(&[
        "-n",
        "imp",
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=pw=hunter2",
    ])?;
    server.ok(&["-n", "imp", "create", "serviceaccount", "bot"])?;
    let cm = json(&server.ok(&["-n", "imp", "get", "cm", "c", "-o", "json"])?)?;
    assert_eq!(cm["data"], serde_json::json!({"a": "1", "b": "2"}));
    let secret = json(&server.ok(&["-n", "imp", "get", "secret", "s", "-o", "json"])?)?;
    assert_eq!(
        (secret["data"]["pw"].as_str(), secret["type"].as_str()),
        (Some("aHVudGVyMg=="), Some("Opaque"))
    );
    assert!(
        server
            .ok(&["-n", "imp", "get", "sa", "-o", "name"])?
            .contains("serviceaccount/bot")
    );
    // Workloads, pods and services from the generators, as upstream would store them.
    server.ok(&[
        "-n",
        "imp",
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=0",
        "--port=80",
    ])?;
    let deploy = json(&server.ok(&["-n", "imp", "get", "deploy", "web", "-o", "json"])?)?;
    assert_eq!(deploy["spec"]["replicas"], 0, "an explicit zero is kept");
    assert_eq!(
        deploy["spec"]["selector"],
        serde_json::json!({"matchLabels": {"app": "web"}})
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "nginx");
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(container["ports"][0]["containerPort"], 80);
    // Server-side defaults apply as for a JSON body.
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    assert!(
        deploy["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| !t.starts_with("1970")),
        "{deploy}"
    );
    server.ok(&[
        "-n",
        "imp",
        "run",
        "shell",
        "--image=busybox:1.36",
        "--labels=tier=debug",
        "--env=MODE=fast",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    let pod = json(&server.ok(&["-n", "imp", "get", "pod", "shell", "-o", "json"])?)?;
    assert_eq!(
        pod["metadata"]["labels"],
        serde_json::json!({"tier": "debug"})
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["sleep", "3600"]));
    assert_eq!(
        container["env"],
        serde_json::json!([{"name": "MODE", "value": "fast"}])
    );
    server.ok(&[
        "-n",
        "imp",
        "expose",
        "deployment",
        "web",
        "--name=web-np",
        "--port=8080",
        "--target-port=80",
        "--type=NodePort",
    ])?;
    let svc = json(&server.ok(&["-n", "imp", "get", "svc", "web-np", "-o", "json"])?)?;
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"app": "web"}));
    let port = &svc["spec"]["ports"][0];
    assert_eq!(
        (port["port"].as_i64(), port["targetPort"].as_i64()),
        (Some(8080), Some(80))
    );
    assert!(
        port["nodePort"].as_i64().is_some_and(|p| p >= 30000),
        "{svc}"
    );
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10."))
    );
    server.ok(&[
        "-n",
        "imp",
        "create",
        "service",
        "clusterip",
        "db",
        "--tcp=5432:5432",
    ])?;
    let db = json(&server.ok(&["-n", "imp", "get", "svc", "db", "-o", "json"])?)?;
    assert_eq!(db["spec"]["ports"][0]["name"], "5432-5432");
    assert_eq!(db["spec"]["ports"][0]["targetPort"], 5432);
    // Deleting through the typed client sends protobuf DeleteOptions.
    server.ok(&["-n", "imp", "delete", "svc", "db", "--wait"])?;
    server.fails(&["-n", "imp", "get", "svc", "db"])?;
    // Kinds the server does not serve are 404 whatever the encoding.
    let err = server.fails(&["-n", "imp", "create", "job", "once", "--image=busybox"])?;
    assert!(
        err.contains("NotFound")
            || err.contains("could not find")
            || err.contains("the server could not find"),
        "{err}"
    );
    Ok(())
}

fn uid(server: &Server, what: &[&str]) -> Result<String> {
    let mut args = vec!["-n", "gc", "get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "jsonpath={.metadata.uid}"]);
    server.ok(&args)
}

/// A dependent ConfigMap of `owner` (whose uid is `owner_uid`).
fn dependent(name: &str, owner: &str, owner_uid: &str, block: bool, finalizer: bool) -> String {
    let finalizers = if finalizer {
        "  finalizers: [example.com/hold]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: gc\n{finalizers}  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: {owner_uid}, blockOwnerDeletion: {block}}}\n"
    )
}

fn exists(server: &Server, what: &[&str]) -> Result<bool> {
    let mut args = vec!["-n", "gc", "get"];
    args.extend_from_slice(what);
    args.push("--ignore-not-found");
    args.extend_from_slice(&["-o", "name"]);
    Ok(!server.ok(&args)?.trim().is_empty())
}

fn gone(server: &Server, what: &[&str]) -> Result<()> {
    ferrokube_testkit::wait_for(
        &format!("{what:?} to be garbage collected"),
        Duration::from_secs(60),
        || Ok((!exists(server, what)?).then_some(())),
    )
}

fn garbage_collection_follows_propagation_policy(server: Server) -> Result<()> {
    server.ok(&["create", "namespace", "gc"])?;
    // Background (kubectl's default): the owner goes at once, its dependents after.
    server.ok(&["-n", "gc", "create", "configmap", "owner"])?;
    let owner = uid(&server, &["cm", "owner"])?;
    apply(&server, &dependent("dep-a", "owner", &owner, true, false))?;
    apply(&server, &dependent("dep-b", "owner", &owner, false, false))?;
    server.ok(&["-n", "gc", "delete", "cm", "owner"])?;
    gone(&server, &["cm", "dep-a"])?;
    gone(&server, &["cm", "dep-b"])?;

    // Orphan: the dependents stay, without the reference.
    server.ok(&["-n", "gc", "create", "configmap", "owner2"])?;
    let owner2 = uid(&server, &["cm", "owner2"])?;
    apply(&server, &dependent("dep-c", "owner2", &owner2, true, false))?;
    server.ok(&["-n", "gc", "delete", "cm", "owner2", "--cascade=orphan"])?;
    assert!(
        !exists(&server, &["cm", "owner2"])?,
        "kubectl --wait returned before the owner went"
    );
    let dep = json(&server.ok(&["-n", "gc", "get", "cm", "dep-c", "-o", "json"])?)?;
    assert!(dep["metadata"].get("ownerReferences").is_none(), "{dep}");

    // Foreground: the owner waits, marked, for its blocking dependents.
    server.ok(&["-n", "gc", "create", "configmap", "owner3"])?;
    let owner3 = uid(&server, &["cm", "owner3"])?;
    apply(&server, &dependent("dep-d", "owner3", &owner3, true, true))?;
    apply(
        &server,
        &dependent("dep-e", "owner3", &owner3, false, false),
    )?;
    server.ok(&[
        "-n",
        "gc",
        "delete",
        "cm",
        "owner3",
        "--cascade=foreground",
        "--wait=false",
    ])?;
    gone(&server, &["cm", "dep-e"])?;
    let held = json(&server.ok(&["-n", "gc", "get", "cm", "dep-d", "-o", "json"])?)?;
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    let marked = json(&server.ok(&["-n", "gc", "get", "cm", "owner3", "-o", "json"])?)?;
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    assert_eq!(
        marked["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"])
    );
    server.ok(&[
        "-n",
        "gc",
        "patch",
        "cm",
        "dep-d",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])?;
    gone(&server, &["cm", "dep-d"])?;
    gone(&server, &["cm", "owner3"])?;

    // A dependent whose owner never existed is collected; one whose owner lives is not.
    apply(
        &server,
        &dependent(
            "ghost-child",
            "ghost",
            "00000000-0000-0000-0000-000000000000",
            false,
            false,
        ),
    )?;
    server.ok(&["-n", "gc", "create", "configmap", "alive"])?;
    let alive = uid(&server, &["cm", "alive"])?;
    apply(&server, &dependent("kept", "alive", &alive, false, false))?;
    gone(&server, &["cm", "ghost-child"])?;
    assert!(exists(&server, &["cm", "kept"])?);
    Ok(())
}

macro_rules! both_backends {
    ($($case:ident),*) => {
        mod embedded {
            $(#[test] fn $case() -> anyhow::Result<()> { super::$case(super::Server::start(super::Backend::Embedded)?) })*
        }
        mod etcd {
            $(#[test] fn $case() -> anyhow::Result<()> { super::$case(super::Server::start(super::Backend::Etcd)?) })*
        }
    };
}

both_backends!(
    apply_create_unchanged_and_strategic_merge,
    get_in_every_form,
    watch_sees_a_concurrent_change,
    label_annotate_patch_scale_describe,
    delete_wait_and_namespace_deletion,
    explain_and_errors,
    services_get_cluster_ips_and_node_ports,
    server_dry_run_and_diff_change_nothing,
    imperative_creates_send_protobuf,
    garbage_collection_follows_propagation_policy
);
