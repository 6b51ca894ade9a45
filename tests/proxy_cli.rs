//! `ferrokube proxy` as a user runs it (needs root for bpffs and cgroups; CI is root):
//! apply a file with `--once` into a test cgroup, read it back with `proxy list`, change
//! the file, reset; and `--kubeconfig`, following a `ferrokube server`. The traffic itself
//! is tested in `node/proxy/tests/socket_lb.rs`, `apiserver_watch.rs` and `nodeport.rs`;
//! here one NodePort request checks that `--interface` attaches the tc programs and
//! `proxy reset` detaches them, and another that `--bpf-log` on a restart that adopts
//! the programs makes them log.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use ferrokube_testkit::netlab::{EchoServers, NodeLab, TestCgroup, unique_name};

use common::BIN;

struct Pins(String);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["proxy", "reset", "--node", &self.0])
            .output();
    }
}

fn ferrokube(args: &[&str]) -> Result<Output> {
    Command::new(BIN)
        .args(args)
        .output()
        .with_context(|| format!("running ferrokube {args:?}"))
}

fn ok(args: &[&str]) -> Result<String> {
    let out = ferrokube(args)?;
    ensure!(
        out.status.success(),
        "ferrokube {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn services(endpoints: &[&str]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  clusterIP: 10.96.0.10\n  ports: [{{name: http, port: 80}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[test]
fn proxy_applies_a_file_lists_and_resets() -> Result<()> {
    let cgroup = TestCgroup::new(&unique_name("ferrokube-cli-"))?;
    let node = unique_name("cli-node-");
    let _pins = Pins(node.clone());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("services.yaml");
    let cgroup_arg = cgroup.path().to_string_lossy().into_owned();
    let file_arg = file.to_string_lossy().into_owned();
    let run = [
        "proxy",
        "--node",
        &node,
        "--from-file",
        &file_arg,
        "--cgroup",
        &cgroup_arg,
        "--once",
        "--max-services",
        "64",
        "--max-backends",
        "64",
        "--max-slots",
        "256",
    ];

    write(&file, &services(&["10.250.0.10", "10.250.0.11"]))?;
    ok(&run)?;
    let listed = ok(&["proxy", "list", "--node", &node])?;
    assert!(listed.contains("10.96.0.10:80/TCP"), "{listed}");
    assert!(listed.contains("-> 10.250.0.10:8080/TCP"), "{listed}");
    assert!(listed.contains("-> 10.250.0.11:8080/TCP"), "{listed}");

    // A restart with a changed file adopts the pins and applies the difference.
    write(&file, &services(&["10.250.0.11"]))?;
    ok(&run)?;
    let listed = ok(&["proxy", "list", "--node", &node])?;
    assert!(!listed.contains("10.250.0.10:8080"), "{listed}");
    assert!(listed.contains("-> 10.250.0.11:8080/TCP"), "{listed}");

    // Listing every node includes ours.
    assert!(ok(&["proxy", "list"])?.contains(&format!("node {node} ")));

    let reset = ok(&["proxy", "reset", "--node", &node])?;
    assert!(reset.contains("removed"), "{reset}");
    let gone = ferrokube(&["proxy", "list", "--node", &node])?;
    assert!(!gone.status.success(), "listing a reset node must fail");
    Ok(())
}

#[test]
fn proxy_reports_bad_input_clearly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope.yaml");
    let out = ferrokube(&[
        "proxy",
        "--node",
        "n1",
        "--from-file",
        &missing.to_string_lossy(),
        "--once",
    ])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.yaml"), "{stderr}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Service\nspec: 3\n")?;
    let out = ferrokube(&[
        "proxy",
        "--node",
        "n1",
        "--from-file",
        &bad.to_string_lossy(),
        "--once",
    ])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 1") && stderr.contains("Service"),
        "{stderr}"
    );

    let out = ferrokube(&[
        "proxy",
        "--node",
        "../etc",
        "--from-file",
        &bad.to_string_lossy(),
    ])?;
    assert!(!out.status.success());
    Ok(())
}

#[test]
fn proxy_follows_the_apiserver() -> Result<()> {
    let server = common::Server::start(common::Backend::Embedded)?;
    let cgroup = TestCgroup::new(&unique_name("ferrokube-cli-"))?;
    let node = unique_name("cli-node-");
    let _pins = Pins(node.clone());
    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&services(&["10.250.0.10", "10.250.0.11"])),
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubeconfig = server.kubeconfig().to_string_lossy().into_owned();
    let cgroup_arg = cgroup.path().to_string_lossy().into_owned();
    let run = [
        "proxy",
        "--node",
        &node,
        "--kubeconfig",
        &kubeconfig,
        "--cgroup",
        &cgroup_arg,
        "--once",
        "--max-services",
        "64",
        "--max-backends",
        "64",
        "--max-slots",
        "256",
    ];
    ok(&run)?;
    let listed = ok(&["proxy", "list", "--node", &node])?;
    assert!(listed.contains("10.96.0.10:80/TCP"), "{listed}");
    assert!(listed.contains("-> 10.250.0.10:8080/TCP"), "{listed}");
    assert!(listed.contains("-> 10.250.0.11:8080/TCP"), "{listed}");
    // Both sources at once is a usage error.
    let both = ferrokube(&[
        "proxy",
        "--node",
        &node,
        "--kubeconfig",
        &kubeconfig,
        "--from-file",
        "x",
    ])?;
    assert!(!both.status.success());
    Ok(())
}

/// A NodePort Service `web` (port 80, `node_port`) whose one endpoint `pod:8080` is on
/// `node`.
fn nodeport_yaml(pod: std::net::Ipv4Addr, node: &str, node_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  \
         ports: [{{name: http, port: 80, nodePort: {node_port}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints:\n- addresses: [{pod}]\n  nodeName: {node}\n"
    )
}

#[test]
fn proxy_interface_attaches_tc_and_reset_detaches_it() -> Result<()> {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    let lab = NodeLab::new(1, 0)?;
    let pod = lab.pod1_addrs[0];
    let _servers = EchoServers::start(&lab.pods1.path(), &lab.pod1_addrs, 8080)?;
    let cgroup = TestCgroup::new(&unique_name("ferrokube-cli-"))?;
    let node = unique_name("cli-node-");
    let _pins = Pins(node.clone());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("services.yaml");
    write(&file, &nodeport_yaml(pod, &node, 30090))?;
    // Run inside node 1's namespace (nsenter --net keeps bpffs and cgroup2 visible).
    let out = lab
        .node1
        .command(BIN)
        .args(["proxy", "--node", &node, "--from-file"])
        .arg(&file)
        .arg("--cgroup")
        .arg(cgroup.path())
        .args(["--interface", NodeLab::EXTERNAL_IF, "--once"])
        .output()?;
    ensure!(
        out.status.success(),
        "proxy --interface failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ok(&["proxy", "list", "--node", &node])?;
    assert!(
        listed
            .lines()
            .any(|l| l.contains("10.251.0.2:30090/TCP") && l.contains("external")),
        "{listed}"
    );
    assert!(listed.contains("(local)"), "{listed}");
    // --interface without --xdp: the XDP fast path in native mode, pinned and listed.
    assert!(listed.contains("xdp fast path: attached"), "{listed}");
    let xdp_on_eth0 = || -> Result<bool> {
        let shown = lab.node1.ip(&["link", "show", NodeLab::EXTERNAL_IF])?;
        Ok(shown.contains(" xdp ") || shown.contains("prog/xdp"))
    };
    assert!(xdp_on_eth0()?, "native XDP on eth0");

    // The agent has exited; the pinned tc links keep serving.
    let to = SocketAddr::from((NodeLab::NODE1, 30090));
    let request = move || -> Result<Result<String, ErrorKind>> {
        Ok(
            match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(mut stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
                    stream.write_all(b"hi")?;
                    let mut reply = String::new();
                    stream.read_to_string(&mut reply)?;
                    Ok(reply)
                }
                Err(e) => Err(e.kind()),
            },
        )
    };
    assert_eq!(lab.outside.run_in(request)?, Ok(pod.to_string()));

    ok(&["proxy", "reset", "--node", &node])?;
    ferrokube_testkit::wait_for("the tc links to go", Duration::from_secs(10), || {
        let result = lab.outside.run_in(request)?;
        Ok((result == Err(ErrorKind::ConnectionRefused)).then_some(()))
    })?;
    ferrokube_testkit::wait_for("the XDP link to go", Duration::from_secs(10), || {
        Ok((!xdp_on_eth0()?).then_some(()))
    })?;
    Ok(())
}

/// A `ferrokube proxy` child, killed (by its own handle) and waited for on drop.
struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /metrics` on `port` (loopback): the body.
fn scrape(port: u16) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the response head")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_string())
}

#[test]
fn proxy_serves_metrics_and_reports_a_full_map() -> Result<()> {
    let cgroup = TestCgroup::new(&unique_name("ferrokube-cli-"))?;
    let node = unique_name("cli-node-");
    let _pins = Pins(node.clone());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("services.yaml");
    // Six Services, two endpoints each, into a frontend map of four.
    let yaml: Vec<String> = (1..=6)
        .map(|i| {
            services(&[&format!("10.250.1.{i}"), &format!("10.250.2.{i}")])
                .replace("name: web", &format!("name: web{i}"))
                .replace("web-1", &format!("web{i}-1"))
                .replace("service-name: web}", &format!("service-name: web{i}}}"))
                .replace("10.96.0.10", &format!("10.96.1.{i}"))
        })
        .collect();
    write(&file, &yaml.join("---\n"))?;
    let port = ferrokube_testkit::free_port()?;
    let cgroup_arg = cgroup.path().to_string_lossy().into_owned();
    let file_arg = file.to_string_lossy().into_owned();
    let metrics_addr = format!("127.0.0.1:{port}");
    let _proxy = Proxy(
        Command::new(BIN)
            .args([
                "proxy",
                "--node",
                &node,
                "--from-file",
                &file_arg,
                "--cgroup",
                &cgroup_arg,
                "--max-services",
                "4",
                "--max-backends",
                "64",
                "--max-slots",
                "256",
                "--metrics-addr",
                &metrics_addr,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting ferrokube proxy")?,
    );
    let body = ferrokube_testkit::wait_for(
        "the full map in /metrics",
        std::time::Duration::from_secs(30),
        || {
            let Ok(body) = scrape(port) else {
                return Ok(None);
            };
            Ok(body
                .contains("ferrokube_proxy_map_full_total{map=\"FK_SERVICES\"} 2\n")
                .then_some(body))
        },
    )?;
    assert!(
        body.contains("ferrokube_proxy_map_entries{map=\"FK_SERVICES\"} 4\n"),
        "{body}"
    );
    assert!(
        body.contains("ferrokube_proxy_map_capacity{map=\"FK_SERVICES\"} 4\n"),
        "{body}"
    );
    assert!(
        body.contains("ferrokube_proxy_map_entries{map=\"FK_BACKENDS\"} 8\n"),
        "{body}"
    );
    assert!(
        body.contains("ferrokube_proxy_syncs_total{result=\"error\"} 1\n"),
        "{body}"
    );
    // The four that fit are whole (two backends each), and the listing says the map is full.
    let listed = ok(&["proxy", "list", "--node", &node])?;
    assert!(listed.contains("FK_SERVICES 4/4 FULL"), "{listed}");
    assert_eq!(listed.matches("    -> ").count(), 8, "{listed}");
    Ok(())
}

/// `--bpf-log` on a restart that adopts the pinned programs (loaded by a run without it)
/// turns their logging on: the agent forwards a NodePort flow's record from tc to its log.
#[test]
fn proxy_bpf_log_applies_to_adopted_programs() -> Result<()> {
    use std::io::{BufRead as _, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    let lab = NodeLab::new(1, 0)?;
    let pod = lab.pod1_addrs[0];
    let _servers = EchoServers::start(&lab.pods1.path(), &lab.pod1_addrs, 8080)?;
    let cgroup = TestCgroup::new(&unique_name("ferrokube-cli-"))?;
    let node = unique_name("cli-node-");
    let _pins = Pins(node.clone());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("services.yaml");
    write(&file, &nodeport_yaml(pod, &node, 30091))?;
    let proxy = |extra: &[&str]| {
        let mut command = lab.node1.command(BIN);
        command
            .args(["proxy", "--node", &node, "--from-file"])
            .arg(&file)
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(["--interface", NodeLab::EXTERNAL_IF, "--xdp", "off"])
            .args(extra);
        command
    };
    // A first run without --bpf-log loads and pins the programs.
    let out = proxy(&["--once"]).output()?;
    ensure!(
        out.status.success(),
        "proxy --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restarted with --bpf-log: it adopts them, and they log.
    let mut child = proxy(&["--bpf-log"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting ferrokube proxy --bpf-log")?;
    let stderr = child.stderr.take().context("stderr piped")?;
    let _proxy = Proxy(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(without_colors(&line)).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |what: &str, pattern: &dyn Fn(&str) -> bool| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if seen.iter().any(|l: &String| pattern(l)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => anyhow::bail!("no {what} in the proxy's log: {seen:#?}"),
            }
        }
    };
    wait_line("adoption", &|l| {
        l.contains("eBPF dataplane ready") && l.contains("adopted_links=7")
    })?;
    wait_line("first apply", &|l| l.contains("applied"))?;
    let to = SocketAddr::from((NodeLab::NODE1, 30091));
    let reply = lab.outside.run_in(move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"hi")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })?;
    assert_eq!(reply, pod.to_string());
    let flow = format!(" -> {to} -> backend {pod}:8080 snat port 0");
    wait_line("tc flow record", &|l| {
        l.contains("ferrokube_proxy::bpf") && l.contains("tc: new flow ") && l.contains(&flow)
    })?;
    Ok(())
}

/// `line` without its ANSI color sequences (`ESC [ ... m`).
fn without_colors(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
