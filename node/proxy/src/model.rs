//! Desired state: the frontends and backends that Services and EndpointSlices ask for.
//!
//! A Service contributes one frontend per (address, port) for its ClusterIPs, external IPs
//! and load-balancer ingress IPs (IPv4 for now; IPv6 frontends are skipped with a debug
//! log until the v6 programs exist). Its backends are the endpoints of the EndpointSlices
//! labelled `kubernetes.io/service-name=<name>` in its namespace whose port matches the
//! Service port by name and protocol. Ready endpoints are used; when none is ready,
//! endpoints that are serving while terminating are used instead (Kubernetes'
//! `ProxyTerminatingEndpoints` behaviour). `internalTrafficPolicy: Local` keeps only
//! endpoints on this node for ClusterIP frontends.
//!
//! A NodePort or LoadBalancer Service also contributes, per port with a `nodePort`, one
//! frontend per node address (given to [`Objects::set_node_ips`]). NodePort, external and
//! load-balancer frontends are marked external (the tc programs translate them for
//! traffic from outside); `externalTrafficPolicy: Local` keeps only endpoints on this node
//! for them. Every backend knows whether its endpoint is on this node (`nodeName`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use tracing::debug;

/// Label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Transport protocol of a frontend or backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn parse(value: Option<&str>) -> Option<Self> {
        match value.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            _ => None,
        }
    }

    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => ferrokube_ebpf_common::PROTO_TCP,
            Self::Udp => ferrokube_ebpf_common::PROTO_UDP,
        }
    }

    /// From the IANA protocol number.
    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            ferrokube_ebpf_common::PROTO_TCP => Some(Self::Tcp),
            ferrokube_ebpf_common::PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// A Service address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// Service address.
    pub ip: IpAddr,
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub proto: Protocol,
}

/// A backend address, target port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    /// Endpoint address.
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// Protocol.
    pub proto: Protocol,
    /// The endpoint's `nodeName` is this node.
    pub local: bool,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// A namespaced object name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Namespace (`default` when absent).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// The reference of an object's metadata.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one frontend should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendSpec {
    /// Its backends (empty: refuse new connections).
    pub backends: BTreeSet<BackendAddr>,
    /// `sessionAffinity: ClientIP` timeout in seconds; zero for none.
    pub affinity_timeout: u32,
    /// A NodePort, ExternalIP or LoadBalancer IP frontend (translated from outside too).
    pub external: bool,
    /// How new flows from outside pick a backend, when the Service says
    /// (`service.cilium.io/lb-algorithm`); `None`: the node's default. External
    /// frontends only.
    pub lb_algorithm: Option<LbAlgorithm>,
}

/// Backend selection for new flows from outside (the tc and XDP paths).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LbAlgorithm {
    /// A random slot per new flow (session affinity: the client's previous backend).
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple (session affinity: of the client
    /// address): the same flow gets the same backend on every node.
    Maglev,
}

impl std::str::FromStr for LbAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Self::Random),
            "maglev" => Ok(Self::Maglev),
            other => Err(format!(
                "unknown load-balancing algorithm {other:?}: want random or maglev"
            )),
        }
    }
}

impl std::fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Random => "random",
            Self::Maglev => "maglev",
        })
    }
}

/// The Service annotation choosing [`LbAlgorithm`] (Cilium's spelling).
pub const LB_ALGORITHM_ANNOTATION: &str = "service.cilium.io/lb-algorithm";

/// Desired state per frontend.
pub type Desired = BTreeMap<Frontend, FrontendSpec>;

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The frontends of one Service with their backends, from the slices that belong to it.
pub fn service_frontends<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
    node: &str,
    node_ips: &[Ipv4Addr],
) -> Desired {
    let mut out = Desired::new();
    let Some(spec) = &service.spec else {
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let svc = ObjectRef::of(&service.metadata);
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let node_ports = matches!(
        spec.type_.as_deref(),
        Some("NodePort") | Some("LoadBalancer")
    );
    let lb_algorithm = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
        .and_then(|v| match v.parse::<LbAlgorithm>() {
            Ok(algorithm) => Some(algorithm),
            Err(e) => {
                debug!(service = %svc, error = %e, "annotation ignored");
                None
            }
        });
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    } else {
        0
    };

    let mut cluster_ips: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if cluster_ips.is_empty()
        && let Some(ip) = &spec.cluster_ip
    {
        cluster_ips.push(ip);
    }
    let external_ips = spec.external_ips.iter().flatten().map(String::as_str);
    let lb_ips = service
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|ingress| ingress.ip.as_deref());
    // (address, external)
    let addresses: Vec<(Ipv4Addr, bool)> = cluster_ips
        .into_iter()
        .map(|ip| (ip, false))
        .chain(external_ips.chain(lb_ips).map(|ip| (ip, true)))
        .filter_map(|(ip, external)| match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some((v4, external)),
            Ok(IpAddr::V6(_)) => {
                debug!(service = %svc, ip, "IPv6 frontend skipped: v6 programs not built yet");
                None
            }
            // "None" (headless) and anything unparsable.
            Err(_) => None,
        })
        .collect();

    for port in spec.ports.iter().flatten() {
        let Some(proto) = Protocol::parse(port.protocol.as_deref()) else {
            debug!(service = %svc, protocol = ?port.protocol, "unsupported protocol skipped");
            continue;
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            continue;
        };
        let name = port.name.as_deref().unwrap_or("");
        let all = backends_for_port(slices.clone(), name, proto, node, false);
        let local = if internal_local || external_local {
            backends_for_port(slices.clone(), name, proto, node, true)
        } else {
            BTreeSet::new()
        };
        let node_port = port
            .node_port
            .filter(|_| node_ports)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        let frontends = addresses
            .iter()
            .map(|(ip, external)| (*ip, service_port, *external))
            .chain(
                node_port
                    .into_iter()
                    .flat_map(|np| node_ips.iter().map(move |ip| (*ip, np, true))),
            );
        for (ip, port, external) in frontends {
            let frontend = Frontend {
                ip: IpAddr::V4(ip),
                port,
                proto,
            };
            let node_local = if external {
                external_local
            } else {
                internal_local
            };
            let backends = if node_local { &local } else { &all };
            let entry = out.entry(frontend).or_default();
            entry.backends.extend(backends.iter().copied());
            entry.affinity_timeout = affinity_timeout;
            entry.external |= external;
            if entry.external {
                entry.lb_algorithm = lb_algorithm;
            }
        }
    }
    out
}

fn backends_for_port<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
    proto: Protocol,
    node: &str,
    only_local: bool,
) -> BTreeSet<BackendAddr> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(target_port) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(proto))
            .then_some(p.port)
            .flatten()
            .and_then(|port| u16::try_from(port).ok())
        }) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let local = endpoint.node_name.as_deref() == Some(node);
            if only_local && !local {
                continue;
            }
            let set = match classify(endpoint) {
                Readiness::Ready => &mut ready,
                Readiness::ServingTerminating => &mut terminating,
                Readiness::Unusable => continue,
            };
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    set.insert(BackendAddr {
                        ip,
                        port: target_port,
                        proto,
                        local,
                    });
                }
            }
        }
    }
    if ready.is_empty() { terminating } else { ready }
}

enum Readiness {
    Ready,
    ServingTerminating,
    Unusable,
}

fn classify(endpoint: &Endpoint) -> Readiness {
    let conditions = endpoint.conditions.as_ref();
    // Absent `ready` means ready (EndpointSlice API semantics).
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    if ready && !terminating {
        Readiness::Ready
    } else if serving && terminating {
        Readiness::ServingTerminating
    } else {
        Readiness::Unusable
    }
}

/// The cluster's Services and EndpointSlices as last seen, and the frontends they ask for.
#[derive(Debug, Default)]
pub struct Objects {
    services: BTreeMap<ObjectRef, Service>,
    slices: BTreeMap<ObjectRef, EndpointSlice>,
    /// Service -> its slices' names.
    slices_by_service: BTreeMap<ObjectRef, BTreeSet<String>>,
    /// Service -> the frontends it currently contributes.
    frontends_by_service: BTreeMap<ObjectRef, Desired>,
    node: String,
    node_ips: Vec<Ipv4Addr>,
}

/// A change to the objects.
#[derive(Clone, Debug)]
pub enum Change {
    /// A Service was created or updated.
    Service(Box<Service>),
    /// A Service was deleted.
    ServiceDeleted(ObjectRef),
    /// An EndpointSlice was created or updated.
    Slice(Box<EndpointSlice>),
    /// An EndpointSlice was deleted.
    SliceDeleted(ObjectRef),
}

fn slice_service(slice: &EndpointSlice) -> Option<ObjectRef> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectRef {
        namespace: ObjectRef::of(&slice.metadata).namespace,
        name: name.clone(),
    })
}

impl Objects {
    /// Empty, for the proxy of `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            ..Self::default()
        }
    }

    /// Applies a change and returns the Services whose frontends must be recomputed.
    pub fn apply(&mut self, change: Change) -> BTreeSet<ObjectRef> {
        let mut touched = BTreeSet::new();
        match change {
            Change::Service(service) => {
                let key = ObjectRef::of(&service.metadata);
                self.services.insert(key.clone(), *service);
                touched.insert(key);
            }
            Change::ServiceDeleted(key) => {
                self.services.remove(&key);
                touched.insert(key);
            }
            Change::Slice(slice) => {
                let key = ObjectRef::of(&slice.metadata);
                if let Some(old) = self.remove_slice(&key) {
                    touched.insert(old);
                }
                if let Some(owner) = slice_service(&slice) {
                    self.slices_by_service
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.name.clone());
                    touched.insert(owner);
                }
                self.slices.insert(key, *slice);
            }
            Change::SliceDeleted(key) => {
                if let Some(old) = self.remove_slice(&key) {
                    touched.insert(old);
                }
            }
        }
        touched
    }

    fn remove_slice(&mut self, key: &ObjectRef) -> Option<ObjectRef> {
        let old = self.slices.remove(key)?;
        let owner = slice_service(&old)?;
        if let Some(names) = self.slices_by_service.get_mut(&owner) {
            names.remove(&key.name);
            if names.is_empty() {
                self.slices_by_service.remove(&owner);
            }
        }
        Some(owner)
    }

    /// The node this proxy runs on.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The node's addresses: NodePort frontends are made on each.
    pub fn node_ips(&self) -> &[Ipv4Addr] {
        &self.node_ips
    }

    /// Sets the node's addresses (recompute the Services afterwards).
    pub fn set_node_ips(&mut self, ips: Vec<Ipv4Addr>) {
        self.node_ips = ips;
    }

    /// Every Service currently known.
    pub fn service_refs(&self) -> BTreeSet<ObjectRef> {
        self.services.keys().cloned().collect()
    }

    /// Recomputes the frontends of `service` and returns (before, after).
    pub fn recompute(&mut self, service: &ObjectRef) -> (Desired, Desired) {
        let after = match self.services.get(service) {
            Some(svc) => {
                let names = self.slices_by_service.get(service);
                let slices: Vec<&EndpointSlice> = names
                    .into_iter()
                    .flatten()
                    .filter_map(|name| {
                        self.slices.get(&ObjectRef {
                            namespace: service.namespace.clone(),
                            name: name.clone(),
                        })
                    })
                    .collect();
                service_frontends(svc, slices.iter().copied(), &self.node, &self.node_ips)
            }
            None => Desired::new(),
        };
        let before = if after.is_empty() {
            self.frontends_by_service.remove(service)
        } else {
            self.frontends_by_service
                .insert(service.clone(), after.clone())
        }
        .unwrap_or_default();
        (before, after)
    }
}
