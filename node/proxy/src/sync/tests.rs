//! The sync layer against in-memory maps: minimal writes, slot stability, adoption.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::maps::MemoryMaps;
use crate::model::SERVICE_NAME_LABEL;

fn service(name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Object {
    Object::Service(Box::new(Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| ServicePort {
                        name: Some((*n).into()),
                        port: *p,
                        protocol: Some((*proto).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }))
}

fn slice(service: &str, name: &str, port: (&str, i32, &str), endpoints: &[(&str, bool)]) -> Object {
    Object::Slice(Box::new(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.into(),
                service.into(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![(*ip).into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some(port.0.into()),
            port: Some(port.1),
            protocol: Some(port.2.into()),
            ..Default::default()
        }]),
    }))
}

fn change(object: Object) -> Input {
    Input::Change(match object {
        Object::Service(s) => Change::Service(s),
        Object::Slice(s) => Change::Slice(s),
    })
}

fn syncer() -> Syncer<MemoryMaps> {
    Syncer::adopt(MemoryMaps::default(), "node-a", Limits::default()).unwrap()
}

fn base() -> Vec<Object> {
    vec![
        service("web", "10.96.0.10", &[("http", 80, "TCP")]),
        slice(
            "web",
            "web-1",
            ("http", 8080, "TCP"),
            &[("10.0.0.1", true), ("10.0.0.2", true)],
        ),
        service(
            "dns",
            "10.96.0.53",
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
        ),
        slice("dns", "dns-1", ("dns", 5353, "UDP"), &[("10.0.1.1", true)]),
        slice(
            "dns",
            "dns-2",
            ("dns-tcp", 5353, "TCP"),
            &[("10.0.1.1", true)],
        ),
    ]
}

#[test]
fn snapshot_writes_everything_once_then_nothing() {
    let mut s = syncer();
    let first = s.apply(Input::Snapshot(base())).unwrap();
    assert_eq!(first.service_writes, 3);
    assert_eq!(first.slot_writes, 4);
    assert_eq!(first.backend_writes, 4);
    assert_eq!(s.maps().services.len(), 3);
    let again = s.apply(Input::Snapshot(base())).unwrap();
    assert_eq!(
        again,
        ApplyStats::default(),
        "same input must write nothing"
    );
}

#[test]
fn adding_one_endpoint_writes_one_backend_one_slot_one_count() {
    let mut s = syncer();
    s.apply(Input::Snapshot(base())).unwrap();
    let stats = s
        .apply(change(slice(
            "web",
            "web-1",
            ("http", 8080, "TCP"),
            &[("10.0.0.1", true), ("10.0.0.2", true), ("10.0.0.3", true)],
        )))
        .unwrap();
    assert_eq!(
        stats,
        ApplyStats {
            service_writes: 1,
            slot_writes: 1,
            backend_writes: 1,
            ..Default::default()
        }
    );
}

#[test]
fn removing_an_endpoint_keeps_other_slots_in_place() {
    let mut s = syncer();
    s.apply(Input::Snapshot(vec![
        service("web", "10.96.0.10", &[("http", 80, "TCP")]),
        slice(
            "web",
            "web-1",
            ("http", 8080, "TCP"),
            &[
                ("10.0.0.1", true),
                ("10.0.0.2", true),
                ("10.0.0.3", true),
                ("10.0.0.4", true),
            ],
        ),
    ]))
    .unwrap();
    let before = s.maps().slots.clone();
    // 10.0.0.2 stops being ready.
    let stats = s
        .apply(change(slice(
            "web",
            "web-1",
            ("http", 8080, "TCP"),
            &[
                ("10.0.0.1", true),
                ("10.0.0.2", false),
                ("10.0.0.3", true),
                ("10.0.0.4", true),
            ],
        )))
        .unwrap();
    // The last slot moves into the hole: one slot write, one slot delete, the count, the
    // backend gone.
    assert_eq!(
        stats,
        ApplyStats {
            service_writes: 1,
            slot_writes: 1,
            slot_deletes: 1,
            backend_deletes: 1,
            ..Default::default()
        }
    );
    let after = &s.maps().slots;
    assert_eq!(after.len(), 3);
    let unchanged = before
        .iter()
        .filter(|(k, v)| after.get(k) == Some(v))
        .count();
    assert_eq!(unchanged, 2, "slots of untouched backends stay put");
}

#[test]
fn no_endpoints_leaves_a_refusing_frontend_and_deletion_removes_it() {
    let mut s = syncer();
    s.apply(Input::Snapshot(base())).unwrap();
    s.apply(change(slice("web", "web-1", ("http", 8080, "TCP"), &[])))
        .unwrap();
    let web = Frontend {
        ip: "10.96.0.10".parse().unwrap(),
        port: 80,
        proto: crate::model::Protocol::Tcp,
    };
    let (_, value) = s.maps().services[&mem_key(&web)];
    assert_eq!(value.count, 0);
    assert!(
        s.maps()
            .slots
            .keys()
            .all(|k| k.service_id != value.service_id)
    );
    // A deleted Service's frontend is removed with its slots.
    let stats = s
        .apply(Input::Change(Change::ServiceDeleted(ObjectRef {
            namespace: "default".into(),
            name: "dns".into(),
        })))
        .unwrap();
    assert_eq!(stats.service_deletes, 2);
    assert_eq!(stats.slot_deletes, 2);
    // One address serving two protocols is two backends.
    assert_eq!(stats.backend_deletes, 2);
    assert!(
        s.maps()
            .backends
            .values()
            .all(|b| b.port == 8080u16.to_be())
    );
}

use crate::model::ObjectRef;

fn mem_key(frontend: &Frontend) -> [u8; 20] {
    let key = frontend.key();
    let mut out = [0u8; 20];
    for (i, w) in key.addr.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
    }
    out[16..18].copy_from_slice(&key.port.to_be_bytes());
    out[18] = key.proto;
    out[19] = key.family;
    out
}

#[test]
fn adoption_after_restart_writes_nothing_for_the_same_input() {
    let mut s = syncer();
    s.apply(Input::Snapshot(base())).unwrap();
    let maps = s.maps().clone();
    let mut restarted = Syncer::adopt(maps, "node-a", Limits::default()).unwrap();
    let stats = restarted.apply(Input::Snapshot(base())).unwrap();
    assert_eq!(stats, ApplyStats::default());
    // And a Service gone while we were down is removed.
    let stats = restarted
        .apply(Input::Snapshot(base()[..2].to_vec()))
        .unwrap();
    assert_eq!(stats.service_deletes, 2);
}

#[test]
fn place_fills_holes_then_compacts() {
    let want = |ids: &[u32]| ids.iter().copied().collect::<BTreeSet<u32>>();
    assert_eq!(place(&[], &want(&[3, 1, 2])), vec![1, 2, 3]);
    assert_eq!(place(&[1, 2, 3], &want(&[1, 3, 4])), vec![1, 4, 3]);
    assert_eq!(place(&[1, 2, 3, 4], &want(&[1, 3, 4])), vec![1, 4, 3]);
    assert_eq!(place(&[1, 2, 3, 4], &want(&[4])), vec![4]);
    assert_eq!(place(&[1, 2], &want(&[])), Vec::<u32>::new());
}

#[test]
fn terminating_endpoints_serve_only_when_nothing_is_ready() {
    let Object::Service(svc) = service("web", "10.96.0.10", &[("http", 80, "TCP")]) else {
        unreachable!()
    };
    let endpoint = |ip: &str, ready: bool, terminating: bool, node: &str| Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(true),
            terminating: Some(terminating),
        }),
        node_name: Some(node.into()),
        ..Default::default()
    };
    let Object::Slice(mut sl) = slice("web", "web-1", ("http", 8080, "TCP"), &[]) else {
        unreachable!()
    };
    sl.endpoints = Some(vec![
        endpoint("10.0.0.1", true, false, "node-a"),
        endpoint("10.0.0.2", false, true, "node-b"),
    ]);
    let ips = |d: &crate::model::Desired| -> Vec<String> {
        d.values()
            .flat_map(|spec| &spec.backends)
            .map(|b| b.ip.to_string())
            .collect()
    };
    let desired = crate::model::service_frontends(&svc, [sl.as_ref()], "node-a", &[]);
    assert_eq!(
        ips(&desired),
        ["10.0.0.1"],
        "terminating endpoints get no new connections"
    );
    sl.endpoints = Some(vec![endpoint("10.0.0.2", false, true, "node-b")]);
    let desired = crate::model::service_frontends(&svc, [sl.as_ref()], "node-a", &[]);
    assert_eq!(
        ips(&desired),
        ["10.0.0.2"],
        "serving terminating endpoints are the fallback"
    );

    // internalTrafficPolicy: Local keeps this node's endpoints only.
    let mut local = svc.clone();
    if let Some(spec) = local.spec.as_mut() {
        spec.internal_traffic_policy = Some("Local".into());
    }
    sl.endpoints = Some(vec![
        endpoint("10.0.0.1", true, false, "node-a"),
        endpoint("10.0.0.3", true, false, "node-b"),
    ]);
    let desired = crate::model::service_frontends(&local, [sl.as_ref()], "node-a", &[]);
    assert_eq!(ips(&desired), ["10.0.0.1"]);
}

#[test]
fn nodeport_frontends_are_external_and_honour_external_traffic_policy() {
    let Object::Service(mut svc) = service("web", "10.96.0.10", &[("http", 80, "TCP")]) else {
        unreachable!()
    };
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("NodePort".into());
        spec.external_ips = Some(vec!["10.252.0.10".into()]);
        spec.external_traffic_policy = Some("Local".into());
        for port in spec.ports.iter_mut().flatten() {
            port.node_port = Some(30080);
        }
    }
    let Object::Slice(mut sl) = slice("web", "web-1", ("http", 8080, "TCP"), &[]) else {
        unreachable!()
    };
    let endpoint = |ip: &str, node: &str| Endpoint {
        addresses: vec![ip.into()],
        node_name: Some(node.into()),
        ..Default::default()
    };
    sl.endpoints = Some(vec![
        endpoint("10.0.0.1", "node-a"),
        endpoint("10.0.0.2", "node-b"),
    ]);
    let node_ips = [
        "192.168.1.5".parse().unwrap(),
        "192.168.2.5".parse().unwrap(),
    ];
    let desired = crate::model::service_frontends(&svc, [sl.as_ref()], "node-a", &node_ips);
    let show = |d: &crate::model::Desired| -> Vec<String> {
        d.iter()
            .map(|(f, spec)| {
                let backends: Vec<String> = spec
                    .backends
                    .iter()
                    .map(|b| format!("{}{}", b.ip, if b.local { "(local)" } else { "" }))
                    .collect();
                format!("{f} external={} {}", spec.external, backends.join(","))
            })
            .collect()
    };
    assert_eq!(
        show(&desired),
        [
            "10.96.0.10:80/TCP external=false 10.0.0.1(local),10.0.0.2",
            "10.252.0.10:80/TCP external=true 10.0.0.1(local)",
            "192.168.1.5:30080/TCP external=true 10.0.0.1(local)",
            "192.168.2.5:30080/TCP external=true 10.0.0.1(local)",
        ]
    );
    // A ClusterIP Service ignores a stray nodePort.
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("ClusterIP".into());
        spec.external_ips = None;
    }
    let desired = crate::model::service_frontends(&svc, [sl.as_ref()], "node-a", &node_ips);
    assert_eq!(desired.len(), 1);
}

#[test]
fn node_ips_add_nodeport_frontends_with_the_external_flag() {
    let mut syncer = syncer();
    let Object::Service(mut svc) = service("web", "10.96.0.10", &[("http", 80, "TCP")]) else {
        unreachable!()
    };
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("NodePort".into());
        for port in spec.ports.iter_mut().flatten() {
            port.node_port = Some(30080);
        }
    }
    syncer
        .apply(Input::Snapshot(vec![
            Object::Service(svc),
            slice("web", "web-1", ("http", 8080, "TCP"), &[("10.0.0.1", true)]),
        ]))
        .unwrap();
    assert_eq!(syncer.maps().services.len(), 1, "no node address yet");
    let stats = syncer
        .set_node_ips(vec!["192.168.1.5".parse().unwrap()])
        .unwrap();
    assert_eq!(stats.service_writes, 1);
    assert_eq!(stats.slot_writes, 1);
    assert_eq!(stats.backend_writes, 0, "the backend is shared");
    let flags: Vec<(u16, u32)> = syncer
        .maps()
        .services
        .values()
        .map(|(k, v)| (u16::from_be(k.port), v.flags))
        .collect();
    assert!(flags.contains(&(80, 0)), "{flags:?}");
    assert!(flags.contains(&(30080, SERVICE_EXTERNAL)), "{flags:?}");
    // A later snapshot keeps the node address.
    let stats = syncer.apply(Input::Snapshot(vec![])).unwrap();
    assert_eq!(stats.service_deletes, 2);
}

#[test]
fn yaml_file_parses_services_and_slices() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;
    let objects = crate::source::parse_objects(text, "test.yaml").unwrap();
    assert_eq!(objects.len(), 2);
    let mut s = syncer();
    s.apply(Input::Snapshot(objects)).unwrap();
    let desired: Vec<String> = s
        .desired()
        .iter()
        .flat_map(|(f, spec)| spec.backends.iter().map(move |b| format!("{f} -> {b}")))
        .collect();
    assert_eq!(desired, ["10.96.0.10:80/TCP -> 10.0.0.1:8080/TCP"]);
    let bad = crate::source::parse_objects("kind: Service\nspec: 3\n", "bad.yaml");
    assert!(matches!(
        bad,
        Err(crate::source::SourceError::Object { index: 1, .. })
    ));
}

#[test]
fn session_affinity_is_part_of_the_frontend() {
    let Object::Service(mut svc) = service("web", "10.96.0.10", &[("http", 80, "TCP")]) else {
        unreachable!()
    };
    let mut s = syncer();
    s.apply(Input::Snapshot(vec![Object::Service(svc.clone())]))
        .unwrap();
    if let Some(spec) = svc.spec.as_mut() {
        spec.session_affinity = Some("ClientIP".into());
    }
    let stats = s.apply(change(Object::Service(svc.clone()))).unwrap();
    assert_eq!(
        stats,
        ApplyStats {
            service_writes: 1,
            ..Default::default()
        }
    );
    let (_, value) = s.maps().services.values().next().copied().unwrap();
    assert_eq!(
        value.affinity_timeout,
        crate::model::DEFAULT_AFFINITY_TIMEOUT
    );
    if let Some(spec) = svc.spec.as_mut() {
        spec.session_affinity_config = Some(k8s_openapi::api::core::v1::SessionAffinityConfig {
            client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
    }
    s.apply(change(Object::Service(svc))).unwrap();
    let (_, value) = s.maps().services.values().next().copied().unwrap();
    assert_eq!(value.affinity_timeout, 60);
}

/// A Service with an external IP and `n` endpoints 10.0.2.1.., annotated for `algorithm`.
fn external(algorithm: Option<&str>, n: u8) -> Vec<Object> {
    let Object::Service(mut svc) = service("lb", "10.96.0.80", &[("http", 80, "TCP")]) else {
        unreachable!()
    };
    if let Some(spec) = svc.spec.as_mut() {
        spec.external_ips = Some(vec!["10.252.0.80".into()]);
    }
    if let Some(algorithm) = algorithm {
        svc.metadata.annotations = Some(BTreeMap::from([(
            crate::model::LB_ALGORITHM_ANNOTATION.into(),
            algorithm.into(),
        )]));
    }
    let ips: Vec<String> = (1..=n).map(|i| format!("10.0.2.{i}")).collect();
    let endpoints: Vec<(&str, bool)> = ips.iter().map(|ip| (ip.as_str(), true)).collect();
    vec![
        Object::Service(svc),
        slice("lb", "lb-1", ("http", 8080, "TCP"), &endpoints),
    ]
}

fn small_maglev() -> Limits {
    Limits {
        maglev_size: 251,
        maglev_tables: 4,
        ..Limits::default()
    }
}

#[test]
fn maglev_frontends_get_a_table_written_only_where_it_changes() {
    let mut s = Syncer::adopt(MemoryMaps::default(), "node-a", small_maglev()).unwrap();
    let first = s
        .apply(Input::Snapshot(external(Some("maglev"), 10)))
        .unwrap();
    // One table for the external frontend; the ClusterIP stays random (socket LB).
    assert_eq!(first.maglev_writes, 251);
    let flags: Vec<u32> = s.maps().services.values().map(|(_, v)| v.flags).collect();
    assert_eq!(
        flags.iter().filter(|f| **f & SERVICE_MAGLEV != 0).count(),
        1,
        "{flags:?}"
    );
    let table = flags
        .iter()
        .find(|f| **f & SERVICE_MAGLEV != 0)
        .map(|f| maglev::table_of(*f))
        .unwrap();
    assert!((1..=4).contains(&table));
    let entries = s.maps().maglev_entries(table * 251, 251).unwrap();
    assert!(entries.iter().all(|id| *id != 0));

    // An unrelated Service: no table work.
    let mut more = external(Some("maglev"), 10);
    more.extend(base());
    let stats = s.apply(Input::Snapshot(more.clone())).unwrap();
    assert_eq!(stats.maglev_writes, 0);

    // One of 10 backends leaves: its 25 entries and a few more are rewritten (the small
    // table here, 25 per backend, moves more than the ~1/N of a full-size one; see
    // `maglev::tests`).
    let mut fewer = external(Some("maglev"), 9);
    fewer.extend(base());
    let stats = s.apply(Input::Snapshot(fewer.clone())).unwrap();
    assert!(
        (25..=60).contains(&stats.maglev_writes),
        "{} entries rewritten",
        stats.maglev_writes
    );
    let after = s.maps().maglev_entries(table * 251, 251).unwrap();
    let moved = entries.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(moved, stats.maglev_writes);

    // A restart adopts the table: the same input writes nothing.
    let maps = s.maps().clone();
    let mut restarted = Syncer::adopt(maps, "node-a", small_maglev()).unwrap();
    assert_eq!(
        restarted.apply(Input::Snapshot(fewer)).unwrap(),
        ApplyStats::default()
    );
}

#[test]
fn the_node_default_applies_unless_the_service_says_otherwise() {
    let maglev_default = Limits {
        lb_algorithm: LbAlgorithm::Maglev,
        ..small_maglev()
    };
    let mut s = Syncer::adopt(MemoryMaps::default(), "node-a", maglev_default).unwrap();
    assert_eq!(
        s.apply(Input::Snapshot(external(None, 3)))
            .unwrap()
            .maglev_writes,
        251
    );
    // Annotated random: the table goes (its number is freed), the frontend is random.
    let stats = s
        .apply(Input::Snapshot(external(Some("random"), 3)))
        .unwrap();
    assert_eq!((stats.maglev_writes, stats.service_writes), (0, 1));
    assert!(
        s.maps()
            .services
            .values()
            .all(|(_, v)| v.flags & SERVICE_MAGLEV == 0)
    );
    // And a random default with a maglev annotation.
    let mut s = Syncer::adopt(MemoryMaps::default(), "node-a", small_maglev()).unwrap();
    assert_eq!(
        s.apply(Input::Snapshot(external(None, 3)))
            .unwrap()
            .maglev_writes,
        0
    );
    assert_eq!(
        s.apply(Input::Snapshot(external(Some("maglev"), 3)))
            .unwrap()
            .maglev_writes,
        251
    );
}

/// `n` Services `svc-<i>` with ClusterIP 10.96.1.<i> and two endpoints each.
fn services(range: std::ops::Range<u8>) -> Vec<Object> {
    range
        .flat_map(|i| {
            let name = format!("svc-{i}");
            [
                service(&name, &format!("10.96.1.{i}"), &[("http", 80, "TCP")]),
                slice(
                    &name,
                    &format!("{name}-1"),
                    ("http", 8080, "TCP"),
                    &[
                        (&format!("10.0.2.{i}"), true),
                        (&format!("10.0.3.{i}"), true),
                    ],
                ),
            ]
        })
        .collect()
}

#[test]
fn a_full_service_map_leaves_whole_frontends_out_and_applies_the_rest() {
    let limits = Limits {
        max_services: 4,
        max_backends: 100,
        ..Limits::default()
    };
    let mut s = Syncer::adopt(MemoryMaps::default(), "node-a", limits).unwrap();
    let err = s.apply(Input::Snapshot(services(1..7))).unwrap_err();
    let SyncError::MapFull {
        map,
        capacity,
        skipped,
    } = &err
    else {
        panic!("expected MapFull, got {err}");
    };
    assert_eq!(*map, ferrokube_ebpf_common::map_names::SERVICES);
    assert_eq!(*capacity, 4);
    assert_eq!(skipped.len(), 2);
    assert!(err.to_string().contains("FK_SERVICES is full (4 entries)"));
    assert_eq!(
        s.map_full_counts()
            .get(ferrokube_ebpf_common::map_names::SERVICES),
        Some(&2)
    );
    // The four that fit are complete; nothing of the two others is in the maps.
    let maps = s.maps();
    assert_eq!(maps.services.len(), 4);
    for (_, value) in maps.services.values() {
        assert_eq!(value.count, 2);
        for slot in 0..2 {
            let id = maps.slots[&SlotKey {
                service_id: value.service_id,
                slot,
            }];
            assert!(maps.backends.contains_key(&id));
        }
    }
    assert_eq!(maps.slots.len(), 8);
    assert_eq!(
        maps.backends.len(),
        8,
        "no backend of a skipped frontend stays"
    );
    assert_eq!(
        s.entry_counts(),
        EntryCounts {
            services: 4,
            slots: 8,
            backends: 8
        }
    );
    // Room made by removing two Services lets the same kind of input fit whole.
    s.apply(Input::Snapshot(services(3..7))).unwrap();
    assert_eq!(s.maps().services.len(), 4);
    assert_eq!(s.entry_counts().backends, 8);
}

#[test]
fn a_full_backend_map_skips_the_frontend_that_needs_a_new_backend() {
    let limits = Limits {
        max_services: 100,
        max_backends: 5,
        ..Limits::default()
    };
    let mut s = Syncer::adopt(MemoryMaps::default(), "node-a", limits).unwrap();
    let err = s.apply(Input::Snapshot(services(1..5))).unwrap_err();
    assert_eq!(
        err.full_map(),
        Some((ferrokube_ebpf_common::map_names::BACKENDS, 5))
    );
    // Two Services (4 backends) fit; the third would need 2 more and the map has 1.
    assert_eq!(s.maps().services.len(), 2);
    assert_eq!(s.maps().backends.len(), 4);
    assert_eq!(
        s.map_full_counts()
            .get(ferrokube_ebpf_common::map_names::BACKENDS),
        Some(&2)
    );
}
