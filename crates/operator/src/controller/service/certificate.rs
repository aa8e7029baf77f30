//! What a pass reads of an instance's certificate: whether the cluster has cert-manager, and the
//! certificate's readiness and expiry as cert-manager reports them in its status.

use consorzio_api::{CertificateState, SharedService};
use kube::ResourceExt;
use serde::Deserialize;

use super::{
    super::{Cached, Context, kinds},
    database::{ReportedCondition, not_served},
};
use crate::render::certificate::{Tls, tls};

/// What to install when `s`'s hosts need certificates and the cluster has no cert-manager.
pub fn missing_cert_manager(s: &SharedService, ctx: &Context) -> Option<String> {
    let Tls::Issuer(issuer) = tls(s, &ctx.config) else {
        return None;
    };
    let what = format!("the ingress asks the ClusterIssuer {issuer} for certificates");
    not_served(
        &kinds::CERTIFICATE,
        &what,
        "cert-manager (1.21 or later)",
        ctx,
    )
}

/// The certificate of `s`'s instance in `ns`, when cert-manager issues it.
pub fn certificate_state(s: &SharedService, ns: &str, ctx: &Context) -> Option<CertificateState> {
    if s.spec.ingress.is_none() || !matches!(tls(s, &ctx.config), Tls::Issuer(_)) {
        return None;
    }
    let cached = ctx.caches.get(&kinds::CERTIFICATE, Some(ns), &s.name_any());
    Some(cached.as_deref().map_or_else(
        || CertificateState {
            ready: false,
            not_after: None,
            message: Some("not made yet".into()),
        },
        state,
    ))
}

/// What cert-manager reports on a Certificate.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Reported {
    status: ReportedStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ReportedStatus {
    conditions: Vec<ReportedCondition>,
    not_after: Option<String>,
}

/// A Certificate's state: Ready as cert-manager reports it for the certificate's current spec.
fn state(obj: &Cached) -> CertificateState {
    let status = obj.read::<Reported>().unwrap_or_default().status;
    let condition = status.conditions.iter().find(|c| c.type_ == "Ready");
    let current = condition.is_some_and(|c| {
        c.observed_generation.is_none() || c.observed_generation == obj.generation()
    });
    let ready = current && condition.is_some_and(|c| c.status == "True");
    let message = match condition {
        _ if ready => None,
        Some(c) if current => c.message.clone().or_else(|| Some("not ready".into())),
        Some(_) => Some("its change is not issued yet".into()),
        None => Some("not issued yet".into()),
    };
    CertificateState {
        ready,
        not_after: status.not_after,
        message,
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time, as cert-manager writes `notAfter`.
pub fn unix_seconds(time: &str) -> Option<i64> {
    time.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use kube::api::DynamicObject;
    use serde_json::json;

    use super::*;
    use crate::controller::cached::Dictionary;

    fn certificate(status: serde_json::Value) -> Cached {
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "sito", "generation": 2}, "status": status}))
        .expect("an object");
        Cached::new(obj, &Dictionary::default())
    }

    #[test]
    fn readiness_and_expiry_as_cert_manager_reports_them() {
        let issued = certificate(json!({"notAfter": "2027-02-28T20:00:00Z", "conditions": [
            {"type": "Ready", "status": "True", "observedGeneration": 2}]}));
        assert_eq!(
            state(&issued),
            CertificateState {
                ready: true,
                not_after: Some("2027-02-28T20:00:00Z".into()),
                message: None
            }
        );
        assert_eq!(unix_seconds("2027-02-28T20:00:00Z"), Some(1_803_844_800));
        let failing = certificate(json!({"conditions": [{"type": "Ready", "status": "False",
            "observedGeneration": 2, "message": "Issuing certificate as Secret does not exist"}]}));
        assert!(!state(&failing).ready);
        assert_eq!(
            state(&failing).message.as_deref(),
            Some("Issuing certificate as Secret does not exist")
        );
        // Ready for the spec before its last change: the new one is not issued yet.
        let stale = certificate(json!({"notAfter": "2027-02-28T20:00:00Z", "conditions": [
            {"type": "Ready", "status": "True", "observedGeneration": 1}]}));
        assert!(!state(&stale).ready);
        assert_eq!(
            state(&certificate(json!({}))).message.as_deref(),
            Some("not issued yet")
        );
    }
}
