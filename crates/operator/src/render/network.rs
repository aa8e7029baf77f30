//! A comune's network isolation: deny everything, then allow what a comune needs.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{Config, managed_meta};

/// Address ranges that pods and services use, never reachable through the internet rule: this is
/// what keeps one comune's "internet" from including other comuni.
const PRIVATE_V4: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];
const PRIVATE_V6: &[&str] = &["fc00::/7", "fe80::/10"];
/// The policy that opens the internet to a comune that asks for it.
pub const INTERNET_EGRESS: &str = "consorzio-allow-internet-egress";

/// A policy for every pod of the namespace. `Some(rules)` governs a direction (`Some(vec![])`
/// denies it); `None` leaves it alone.
fn policy(
    name: &str,
    ns: &str,
    owner: (&str, &str),
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
    egress: Option<Vec<NetworkPolicyEgressRule>>,
) -> NetworkPolicy {
    let mut types = vec![];
    if ingress.is_some() {
        types.push("Ingress".to_string());
    }
    if egress.is_some() {
        types.push("Egress".to_string());
    }
    // An empty list of rules is stored as no list at all: say "deny" through policyTypes only.
    let ingress = ingress.filter(|rules| !rules.is_empty());
    let egress = egress.filter(|rules| !rules.is_empty());
    NetworkPolicy {
        metadata: managed_meta(name, Some(ns), owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(types),
            ingress,
            egress,
        }),
    }
}

fn namespace_peer(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn same_namespace_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    }
}

/// The network policies of a comune's (or a shared service's) namespace; `internet` opens
/// egress to public addresses.
pub fn render_network_policies(
    internet: bool,
    ns: &str,
    config: &Config,
    owner: (&str, &str),
) -> Vec<NetworkPolicy> {
    let dns_port = |protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.into()),
        ..Default::default()
    };
    let mut policies = vec![
        // Nothing in, nothing out, unless a policy below allows it.
        policy(
            "consorzio-default-deny",
            ns,
            owner,
            Some(vec![]),
            Some(vec![]),
        ),
        policy(
            "consorzio-allow-dns",
            ns,
            owner,
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".into(),
                            "kube-system".into(),
                        )])),
                        ..Default::default()
                    }),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![dns_port("UDP"), dns_port("TCP")]),
            }]),
        ),
        policy(
            "consorzio-allow-same-namespace",
            ns,
            owner,
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_namespace_peer()]),
                ports: None,
            }]),
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![same_namespace_peer()]),
                ports: None,
            }]),
        ),
        policy(
            "consorzio-allow-ingress-controller",
            ns,
            owner,
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![namespace_peer(
                    config.ingress_namespace_labels.clone(),
                )]),
                ports: None,
            }]),
            None,
        ),
    ];
    if internet {
        let block = |cidr: &str, except: &[&str]| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.into(),
                except: Some(except.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        };
        policies.push(policy(
            INTERNET_EGRESS,
            ns,
            owner,
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![
                    block("0.0.0.0/0", PRIVATE_V4),
                    block("::/0", PRIVATE_V6),
                ]),
                ports: None,
            }]),
        ));
    }
    policies
}
