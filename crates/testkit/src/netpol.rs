//! Which connections the NetworkPolicies in the cluster allow. The local control plane has no
//! network plugin to enforce them, so tests read the real policy and namespace objects from the
//! API server and evaluate them as the NetworkPolicy API defines: a direction is open for a pod
//! that no policy of that direction selects; otherwise some rule of a policy selecting it must
//! match the peer and the port.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{
    Api, Client, ResourceExt,
    core::{Selector, SelectorExt},
};

/// One end of a connection: a pod (real or hypothetical) and the labels of its namespace.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The pod's namespace.
    pub namespace: String,
    /// That namespace's labels, as the API server has them.
    pub namespace_labels: BTreeMap<String, String>,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's IP, if it has one.
    pub ip: Option<IpAddr>,
}

impl Endpoint {
    /// A pod with `labels` in `namespace`, with the namespace's labels read from the cluster.
    pub async fn new(
        client: &Client,
        namespace: &str,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<Endpoint> {
        let ns = Api::<Namespace>::all(client.clone()).get(namespace).await?;
        Ok(Endpoint {
            namespace: namespace.to_string(),
            namespace_labels: ns.labels().clone(),
            labels,
            ip: None,
        })
    }

    /// A real pod.
    pub async fn of_pod(client: &Client, pod: &Pod) -> anyhow::Result<Endpoint> {
        let namespace = pod.namespace().unwrap_or_default();
        let mut endpoint = Endpoint::new(client, &namespace, pod.labels().clone()).await?;
        endpoint.ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        Ok(endpoint)
    }
}

/// Whether the policies in the cluster let `from` open a TCP connection to `to` on `port`: the
/// egress policies of `from`'s namespace and the ingress policies of `to`'s must both allow it.
pub async fn allows(
    client: &Client,
    from: &Endpoint,
    to: &Endpoint,
    port: i32,
) -> anyhow::Result<bool> {
    let policies = |ns: &str| Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    let egress = policies(&from.namespace).list(&Default::default()).await?;
    let ingress = policies(&to.namespace).list(&Default::default()).await?;
    Ok(decide(&egress.items, &ingress.items, from, to, port))
}

/// [`allows`], on given policies: `egress` of `from`'s namespace, `ingress` of `to`'s.
pub fn decide(
    egress: &[NetworkPolicy],
    ingress: &[NetworkPolicy],
    from: &Endpoint,
    to: &Endpoint,
    port: i32,
) -> bool {
    direction_allows(egress, Direction::Egress, from, to, port)
        && direction_allows(ingress, Direction::Ingress, to, from, port)
}

/// A rule's peers and ports.
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

/// Whether the policies of `subject`'s namespace let it talk with `peer` in one direction.
fn direction_allows(
    policies: &[NetworkPolicy],
    direction: Direction,
    subject: &Endpoint,
    peer: &Endpoint,
    port: i32,
) -> bool {
    let mut governed = false;
    for policy in policies {
        let Some(spec) = &policy.spec else { continue };
        if !selects(spec.pod_selector.as_ref(), &subject.labels) {
            continue;
        }
        // Without policyTypes, a policy governs Ingress, and Egress when it has egress rules.
        let types = spec.policy_types.clone().unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.is_some() {
                t.push("Egress".into());
            }
            t
        });
        let name = match direction {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        };
        if !types.iter().any(|t| t == name) {
            continue;
        }
        governed = true;
        let policy_ns = policy.namespace().unwrap_or_default();
        let rules: Vec<Rule> = match direction {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect(),
        };
        let allowed = rules.into_iter().any(|(peers, ports)| {
            let peer_ok = match peers {
                None => true,
                Some(list) if list.is_empty() => true,
                Some(list) => list.iter().any(|p| peer_matches(p, &policy_ns, peer)),
            };
            peer_ok && port_matches(ports, port)
        });
        if allowed {
            return true;
        }
    }
    !governed
}

/// An absent selector selects nothing; an empty one, everything.
fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_some_and(|s| Selector::try_from(s.clone()).is_ok_and(|s| s.matches(labels)))
}

fn peer_matches(peer: &NetworkPolicyPeer, policy_ns: &str, other: &Endpoint) -> bool {
    if let Some(block) = &peer.ip_block {
        return ip_block_matches(block, other.ip);
    }
    let namespace_ok = match &peer.namespace_selector {
        Some(selector) => selects(Some(selector), &other.namespace_labels),
        None => other.namespace == policy_ns,
    };
    let pod_ok = match &peer.pod_selector {
        Some(selector) => selects(Some(selector), &other.labels),
        None => true,
    };
    namespace_ok && pod_ok
}

/// A pod whose IP is unknown counts as inside every block: for a test of isolation, the
/// pessimistic answer.
fn ip_block_matches(block: &IPBlock, ip: Option<IpAddr>) -> bool {
    let Some(ip) = ip else { return true };
    // An IPv4-mapped IPv6 address is the IPv4 address, as the API server reads it (it refuses
    // `::ffff:0:0/96` in an IPv6 block: not a subset of `::/0`) and as dataplanes send it.
    let ip = ip.to_canonical();
    in_cidr(ip, &block.cidr)
        && !block
            .except
            .iter()
            .flatten()
            .any(|except| in_cidr(ip, except))
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let Some((base, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(bits)) = (base.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    // The API server reads an IPv4-mapped block as the IPv4 one.
    let (base, bits) = match base.to_canonical() {
        IpAddr::V4(v4) if base.is_ipv6() => (IpAddr::V4(v4), bits.saturating_sub(96)),
        _ => (base, bits),
    };
    match (ip, base) {
        (IpAddr::V4(ip), IpAddr::V4(base)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(base)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(base) & mask
        }
        _ => false,
    }
}

/// TCP `port` against a rule's ports; named ports are not used by consorzio and match nothing.
fn port_matches(ports: Option<&Vec<NetworkPolicyPort>>, port: i32) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            && match &p.port {
                None => true,
                Some(IntOrString::Int(first)) => {
                    (*first..=p.end_port.unwrap_or(*first)).contains(&port)
                }
                Some(IntOrString::String(_)) => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ns: &str, labels: &[(&str, &str)], ip: &str) -> Endpoint {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Endpoint {
            namespace: ns.into(),
            namespace_labels: map(&[("kubernetes.io/metadata.name", ns)]),
            labels: map(labels),
            ip: ip.parse().ok(),
        }
    }

    fn policy(ns: &str, yaml: &str) -> NetworkPolicy {
        let mut p: NetworkPolicy =
            serde_yaml::from_str(&format!("metadata: {{name: p, namespace: {ns}}}\n{yaml}"))
                .unwrap();
        p.metadata.namespace = Some(ns.into());
        p
    }

    #[test]
    fn no_policy_allows_everything_and_default_deny_nothing() {
        let a = endpoint("a", &[("app", "x")], "10.0.0.1");
        let b = endpoint("b", &[("app", "y")], "10.0.0.2");
        assert!(decide(&[], &[], &a, &b, 80));
        let deny = policy(
            "b",
            "spec: {podSelector: {}, policyTypes: [Ingress, Egress]}",
        );
        assert!(!decide(&[], std::slice::from_ref(&deny), &a, &b, 80));
        assert!(
            !decide(&[deny], &[], &b, &a, 80),
            "b's egress is denied too"
        );
    }

    #[test]
    fn peers_ports_and_blocks_are_matched() {
        let a = endpoint("a", &[("app", "x")], "10.0.0.1");
        let b = endpoint("b", &[("app", "y")], "10.0.0.2");
        let allow = policy(
            "b",
            "spec:\n  podSelector: {matchLabels: {app: y}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: a}}, podSelector: {matchLabels: {app: x}}}]\n    ports: [{port: 8080}]\n",
        );
        let allow = std::slice::from_ref(&allow);
        assert!(decide(&[], allow, &a, &b, 8080));
        assert!(!decide(&[], allow, &a, &b, 9090), "other port");
        let other_pod = endpoint("a", &[("app", "z")], "10.0.0.3");
        assert!(!decide(&[], allow, &other_pod, &b, 8080), "other pod");
        let internet = policy(
            "a",
            "spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n",
        );
        let internet = std::slice::from_ref(&internet);
        assert!(!decide(internet, &[], &a, &b, 80), "private range excluded");
        let public = endpoint("x", &[], "93.184.216.34");
        assert!(decide(internet, &[], &a, &public, 443));
    }
}
