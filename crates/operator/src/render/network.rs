//! A comune's network isolation: deny everything, then allow what a comune needs.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use consorzio_api::{Database, Engine, Municipality, SharedService};
use kube::ResourceExt;

use super::{
    Config,
    database::{server_name, server_pods},
    managed_meta,
    municipality::namespace_name,
    service,
    shared::shared_namespace,
};

/// Address ranges that are not the internet, never reachable through the internet rule: the
/// private ranges pods and services use (so one comune's "internet" never includes other
/// comuni), loopback, link-local (169.254.169.254 is the cloud metadata endpoint, with the node's
/// credentials on most clouds), multicast and the other special-purpose ranges of RFC 6890.
const NOT_INTERNET_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// The same for IPv6, and the NAT64 ranges that carry IPv4 addresses, through which the excluded
/// IPv4 ranges could otherwise be reached. (IPv4-mapped addresses, `::ffff:0:0/96`, are IPv4 to
/// the API server, which refuses them in an IPv6 block, and to dataplanes: the IPv4 rule holds
/// for them.)
const NOT_INTERNET_V6: &[&str] = &[
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];
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
        // The platform's own exclusions go with the family they belong to.
        let block = |cidr: &str, except: &[&str], v6: bool| {
            let mut except: Vec<String> = except.iter().map(|s| s.to_string()).collect();
            let extra = config.internet_egress_except.iter();
            except.extend(extra.filter(|cidr| cidr.contains(':') == v6).cloned());
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.into(),
                    except: Some(except),
                }),
                ..Default::default()
            }
        };
        policies.push(policy(
            INTERNET_EGRESS,
            ns,
            owner,
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![
                    block("0.0.0.0/0", NOT_INTERNET_V4, false),
                    block("::/0", NOT_INTERNET_V6, true),
                ]),
                ports: None,
            }]),
        ));
    }
    policies
}

/// A database server's network, and a comune's way to its database on a shared server (see
/// `database`).
pub(super) fn tcp(ports: &[i32]) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        ports
            .iter()
            .map(|p| NetworkPolicyPort {
                port: Some(IntOrString::Int(*p)),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect(),
    )
}

fn selector(labels: BTreeMap<String, String>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    })
}

/// The name of the policy, in a namespace, that concerns `s`'s database there.
pub fn database_policy_name(s: &SharedService) -> String {
    format!("consorzio-database-{}", s.name_any())
}

/// Beside a server, in `ns`: its operator reaches its pods (the SQL port, and CloudNativePG's
/// instance manager on 8000), and its pods reach the API server (CloudNativePG's instance
/// manager reads its Cluster there, and stops a primary that cannot). `clients` admits the
/// namespaces labelled so to the SQL port.
pub fn render_server_policy(
    s: &SharedService,
    db: &Database,
    ns: &str,
    labels: &BTreeMap<String, String>,
    clients: Option<(String, String)>,
    config: &Config,
) -> NetworkPolicy {
    let (operator_ns, operator_ports) = match db.engine {
        Engine::PostgreSQL => (&config.cnpg_namespace, vec![5432, 8000]),
        Engine::MariaDB => (&config.mariadb_operator_namespace, vec![3306]),
    };
    let namespace = |key: &str, value: &str| NetworkPolicyPeer {
        namespace_selector: selector(BTreeMap::from([(key.into(), value.into())])),
        ..Default::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![namespace("kubernetes.io/metadata.name", operator_ns)]),
        ports: tcp(&operator_ports),
    }];
    if let Some((key, value)) = clients {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![namespace(&key, &value)]),
            ports: tcp(&[db.port()]),
        });
    }
    let api_server = config
        .api_server_cidrs
        .iter()
        .map(|cidr| NetworkPolicyPeer {
            ip_block: Some(k8s_openapi::api::networking::v1::IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    NetworkPolicy {
        metadata: service::meta(database_policy_name(s), ns, labels.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(server_pods(db, &server_name(s))),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: (!api_server.is_empty()).then_some(api_server),
                ports: tcp(&[443, 6443]),
            }]),
        }),
    }
}

/// In a comune's namespace: its egress to its database on the service's shared server, on the
/// SQL port only.
pub fn render_client_policy(
    s: &SharedService,
    db: &Database,
    m: &Municipality,
    labels: &BTreeMap<String, String>,
    config: &Config,
) -> NetworkPolicy {
    egress_to(
        service::meta(
            database_policy_name(s),
            &namespace_name(m, config),
            labels.clone(),
        ),
        &shared_namespace(s),
        server_pods(db, &server_name(s)),
        &[db.port()],
    )
}

/// A policy (with `metadata`) that opens every pod of its namespace to the pods labelled `pods`
/// in namespace `to`, on `ports` only.
pub(super) fn egress_to(
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    to: &str,
    pods: BTreeMap<String, String>,
    ports: &[i32],
) -> NetworkPolicy {
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Egress".into()]),
            ingress: None,
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: selector(BTreeMap::from([(
                        "kubernetes.io/metadata.name".into(),
                        to.to_string(),
                    )])),
                    pod_selector: selector(pods),
                    ..Default::default()
                }]),
                ports: tcp(ports),
            }]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use consorzio_testkit::netpol::{Endpoint, decide};

    use super::*;

    fn at(ip: &str) -> Endpoint {
        Endpoint {
            namespace: "elsewhere".into(),
            namespace_labels: BTreeMap::new(),
            labels: BTreeMap::new(),
            ip: Some(ip.parse::<IpAddr>().expect("an address")),
        }
    }

    #[test]
    fn internet_egress_reaches_public_addresses_only() {
        let policies = render_network_policies(true, "comune-a", &Config::default(), ("o", "a"));
        let pod = Endpoint {
            namespace: "comune-a".into(),
            namespace_labels: BTreeMap::new(),
            labels: BTreeMap::new(),
            ip: Some("10.1.0.5".parse().expect("an address")),
        };
        for public in ["93.184.216.34", "8.8.8.8", "2001:4860:4860::8888"] {
            assert!(decide(&policies, &[], &pod, &at(public), 443), "{public}");
        }
        for not_internet in [
            "169.254.169.254",
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(
                !decide(&policies, &[], &pod, &at(not_internet), 443),
                "{not_internet}"
            );
        }
        // The platform excludes more: its nodes' public addresses, say.
        let config = Config {
            internet_egress_except: vec!["93.184.216.0/24".into(), "2001:4860::/32".into()],
            ..Config::default()
        };
        let policies = render_network_policies(true, "comune-a", &config, ("o", "a"));
        for excluded in ["93.184.216.34", "2001:4860:4860::8888"] {
            assert!(
                !decide(&policies, &[], &pod, &at(excluded), 443),
                "{excluded}"
            );
        }
        assert!(decide(&policies, &[], &pod, &at("8.8.8.8"), 443));
    }
}
