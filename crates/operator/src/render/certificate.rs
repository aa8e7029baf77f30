//! An instance's TLS: a cert-manager `Certificate` for its host, whose Secret the Ingress
//! serves, or a Secret someone else provides. A `Certificate` rather than the ingress-shim
//! annotation: cert-manager would own that one by the Ingress (garbage collected with it), and
//! the operator reads each certificate's readiness and expiry from the object it made.

use std::collections::BTreeMap;

use consorzio_api::SharedService;
use kube::ResourceExt;
use serde_json::json;

use super::{Config, Gvk, Rendered};

/// cert-manager's certificate.
pub const CERTIFICATE: Gvk = ("cert-manager.io", "v1", "Certificate", "certificates");

/// Where a service's hosts get their TLS certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls<'a> {
    /// None: plain HTTP.
    Plain,
    /// A Secret of this name, made by someone else in each instance's namespace.
    Secret(&'a str),
    /// A certificate from this cert-manager ClusterIssuer, in the Secret `<service>-tls`.
    Issuer(&'a str),
}

/// Where `s`'s hosts get their certificate: its ingress's Secret or ClusterIssuer, else the
/// operator's ClusterIssuer, else none.
pub fn tls<'a>(s: &'a SharedService, config: &'a Config) -> Tls<'a> {
    let Some(ingress) = &s.spec.ingress else {
        return Tls::Plain;
    };
    if let Some(secret) = &ingress.tls_secret_name {
        return Tls::Secret(secret);
    }
    match ingress
        .cluster_issuer
        .as_ref()
        .or(config.cluster_issuer.as_ref())
    {
        Some(issuer) => Tls::Issuer(issuer),
        None => Tls::Plain,
    }
}

/// The Secret with the certificate cert-manager issues for `s`'s host.
pub fn certificate_secret_name(s: &SharedService) -> String {
    format!("{}-tls", s.name_any())
}

/// The Secret the Ingress of `s` serves, if any.
pub fn tls_secret_name(s: &SharedService, config: &Config) -> Option<String> {
    match tls(s, config) {
        Tls::Plain => None,
        Tls::Secret(secret) => Some(secret.to_string()),
        Tls::Issuer(_) => Some(certificate_secret_name(s)),
    }
}

/// The certificate of `host` for `s`'s instance in `ns`, named as the service, from `issuer`.
/// The issuer's duration and renewal apply (cert-manager renews at two thirds of the life).
pub fn render_certificate(
    s: &SharedService,
    ns: &str,
    labels: &BTreeMap<String, String>,
    host: &str,
    issuer: &str,
) -> Result<Rendered, serde_json::Error> {
    Rendered::custom(
        CERTIFICATE,
        &s.name_any(),
        ns,
        labels,
        json!({
            "secretName": certificate_secret_name(s),
            "dnsNames": [host],
            "issuerRef": {"name": issuer, "kind": "ClusterIssuer", "group": "cert-manager.io"},
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::render::{
        fixtures::{SITO, comune, service},
        service::render_dedicated,
    };

    /// The certificate and the Ingress's TLS of the `sito` fixture in comune Cuorgnè, with
    /// `ingress` as its ingress and `platform` as the operator's issuer.
    fn rendered(ingress: &str, platform: Option<&str>) -> (Option<Value>, Value, String) {
        let s = service(&SITO.replace(
            r#"ingress: {host: "{{ municipality.name }}.comuni.example.it", tlsSecretName: wildcard}"#,
            ingress,
        ));
        let config = Config {
            cluster_issuer: platform.map(str::to_string),
            ..Config::default()
        };
        let objects = render_dedicated(&s, &comune("cuorgne", "canavese-digitale"), &config)
            .expect("renders");
        let of = |kind: &str| {
            objects
                .iter()
                .find(|r| r.resource.kind == kind)
                .map(|r| serde_json::to_value(&r.object).expect("JSON"))
        };
        let url = of("ConfigMap").expect("settings")["data"]["CONSORZIO_URL"]
            .as_str()
            .expect("a URL")
            .to_string();
        (
            of("Certificate"),
            of("Ingress").expect("an Ingress")["spec"]["tls"].clone(),
            url,
        )
    }

    #[test]
    fn a_host_gets_its_certificate_from_the_service_s_issuer_else_the_platform_s() {
        let host = r#"ingress: {host: "{{ municipality.name }}.comuni.example.it"#;
        let (cert, tls, url) = rendered(
            &format!("{host}\", clusterIssuer: comuni-ca}}"),
            Some("platform"),
        );
        let cert = cert.expect("a Certificate");
        assert_eq!(cert["metadata"]["name"], "sito");
        assert_eq!(cert["metadata"]["namespace"], "comune-cuorgne");
        assert_eq!(
            cert["spec"]["dnsNames"],
            json!(["cuorgne.comuni.example.it"])
        );
        assert_eq!(cert["spec"]["issuerRef"]["name"], "comuni-ca");
        assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(
            tls,
            json!([{"hosts": ["cuorgne.comuni.example.it"], "secretName": "sito-tls"}])
        );
        assert_eq!(url, "https://cuorgne.comuni.example.it");

        let (cert, _, _) = rendered(&format!("{host}\"}}"), Some("platform"));
        assert_eq!(
            cert.expect("a Certificate")["spec"]["issuerRef"]["name"],
            "platform"
        );

        // A Secret of its own: no certificate requested.
        let (cert, tls, url) = rendered(
            &format!("{host}\", tlsSecretName: wildcard}}"),
            Some("platform"),
        );
        assert!(cert.is_none());
        assert_eq!(tls[0]["secretName"], "wildcard");
        assert!(url.starts_with("https://"));

        // Neither, and no platform issuer: plain HTTP.
        let (cert, tls, url) = rendered(&format!("{host}\"}}"), None);
        assert!(cert.is_none() && tls.is_null());
        assert_eq!(url, "http://cuorgne.comuni.example.it");
    }
}
