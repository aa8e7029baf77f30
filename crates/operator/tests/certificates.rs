//! TLS through cert-manager's own resource, against its real CRD and its real controllers (both
//! from its Go module, run by tests/cluster): a `Certificate` for every instance's host, issued
//! by the rig's CA into the Secret the Ingress serves; its readiness and expiry, as cert-manager
//! reports them, in each comune's status and in `consorzio_certificate_expiry_seconds`.

mod support;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use consorzio::render::{api_resource, certificate::CERTIFICATE};
use consorzio_testkit::{Env, TIMEOUT, run, wait_for, wait_gone};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Secret},
        networking::v1::Ingress,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject},
};
use serde_json::{Value, json};
use support::{
    Operator, TEST_CLUSTER_ISSUER, apply_service, catalogue_service, comune, entry_part, exclusive,
    onboard, remove, remove_service, wait_status,
};

fn certificates() -> ApiResource {
    api_resource(CERTIFICATE)
}

/// The service's Certificate in `ns`, once made.
async fn certificate(env: &Env, ns: &str, name: &str) -> anyhow::Result<Value> {
    let api = Api::<DynamicObject>::namespaced_with(env.client(), ns, &certificates());
    wait_for(&format!("Certificate {ns}/{name}"), TIMEOUT, || async {
        Ok(serde_json::to_value(api.get(name).await?)?)
    })
    .await
}

/// Waits until the service's Certificate in `ns` is gone.
async fn no_certificate(env: &Env, ns: &str, name: &str) -> anyhow::Result<()> {
    let api = Api::<DynamicObject>::namespaced_with(env.client(), ns, &certificates());
    wait_for(
        &format!("Certificate {ns}/{name} gone"),
        TIMEOUT,
        || async {
            ensure!(api.get_opt(name).await?.is_none(), "still there");
            Ok(())
        },
    )
    .await
}

/// The host of the instance's Ingress in `ns`, and the Secret it serves for it.
async fn served(env: &Env, ns: &str, name: &str) -> anyhow::Result<(String, Option<String>)> {
    let ingress = env.api::<Ingress>(ns).get(name).await?;
    let spec = ingress.spec.context("spec")?;
    let host = spec.rules.unwrap_or_default()[0]
        .host
        .clone()
        .context("host")?;
    let tls = spec.tls.unwrap_or_default();
    if let Some(tls) = tls.first() {
        ensure!(tls.hosts.as_deref() == Some(&[host.clone()][..]), "{tls:?}");
    }
    Ok((host, tls.first().and_then(|t| t.secret_name.clone())))
}

/// What `openssl x509` says of the certificate cert-manager wrote into Secret `ns/name`: its
/// names, issuer and end (`-ext subjectAltName -issuer -enddate`).
async fn issued(env: &Env, ns: &str, name: &str) -> anyhow::Result<String> {
    let secrets = env.api::<Secret>(ns);
    let secret = wait_for(&format!("Secret {ns}/{name}"), TIMEOUT, || async {
        Ok(secrets.get(name).await?)
    })
    .await?;
    let pem = secret
        .data
        .unwrap_or_default()
        .remove("tls.crt")
        .context("tls.crt")?;
    let mut openssl = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-issuer",
            "-enddate",
        ])
        .args(["-dateopt", "iso_8601"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("openssl (tests/cluster needs it too)")?;
    openssl.stdin.take().context("stdin")?.write_all(&pem.0)?;
    let out = openssl.wait_with_output()?;
    ensure!(out.status.success(), "openssl x509 failed on {ns}/{name}");
    Ok(String::from_utf8(out.stdout)?)
}

/// The certificate in the comune's entry for `service`, once it says ready.
async fn ready_in_status(env: &Env, comune: &str, service: &str) -> anyhow::Result<Value> {
    entry_part(env, comune, service, "certificate", |c| c["ready"] == true).await
}

/// `consorzio_certificate_expiry_seconds` of (comune, service), if exported.
fn expiry(op: &Operator, comune: &str, service: &str) -> Option<f64> {
    let labels = format!("{{municipality=\"{comune}\",service=\"{service}\"}}");
    op.metrics.encode().lines().find_map(|l| {
        l.strip_prefix("consorzio_certificate_expiry_seconds")?
            .strip_prefix(&labels)?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn every_host_gets_a_certificate_its_ingress_serves_and_status_shows_its_expiry() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (a, a_ns) = onboard(&env, &comune()).await?;
        let (b, b_ns) = onboard(&env, &comune()).await?;
        // A Dedicated website from the platform's issuer (the operator's --cluster-issuer),
        // and a Shared SIT from an issuer of its own.
        let mut sito = catalogue_service("sito-comunale", json!({"names": [a, b]}))?;
        let mut sit = catalogue_service("sit", json!({"names": [a]}))?;
        let sit_ingress = sit.spec.ingress.as_mut().context("the SIT's ingress")?;
        sit_ingress.tls_secret_name = None;
        sit_ingress.cluster_issuer = Some("altosangro-ca".into());
        sito.spec
            .ingress
            .as_mut()
            .context("an ingress")?
            .tls_secret_name = None;
        let (sito_name, sit_name) = (sito.name_any(), sit.name_any());
        apply_service(&env, &sito).await?;
        apply_service(&env, &sit).await?;
        let sit_ns = format!("shared-{sit_name}");

        for (ns, name, issuer) in [
            (&a_ns, &sito_name, TEST_CLUSTER_ISSUER),
            (&b_ns, &sito_name, TEST_CLUSTER_ISSUER),
            (&sit_ns, &sit_name, "altosangro-ca"),
        ] {
            let cert = certificate(&env, ns, name).await?;
            let (host, secret) = served(&env, ns, name).await?;
            // For the Ingress's host, from the issuer the service names, into the Secret the
            // Ingress serves: accepted by cert-manager's schema.
            ensure!(cert["spec"]["dnsNames"] == json!([host]), "{cert}");
            ensure!(
                cert["spec"]["issuerRef"]
                    == json!({"name": issuer, "kind": "ClusterIssuer", "group": "cert-manager.io"}),
                "{cert}"
            );
            ensure!(cert["spec"]["secretName"] == json!(format!("{name}-tls")));
            ensure!(
                secret.as_deref() == Some(&*format!("{name}-tls")),
                "{secret:?}"
            );
            ensure!(
                cert["metadata"]["ownerReferences"].is_null(),
                "no owner reference: {cert}"
            );
        }
        // The application knows it is served over https.
        let settings = env
            .api::<ConfigMap>(&a_ns)
            .get(&format!("{sito_name}-settings"))
            .await?;
        let url = settings.data.unwrap_or_default()["CONSORZIO_URL"].clone();
        ensure!(url.starts_with("https://"), "{url}");

        // Issued by cert-manager: a real certificate for the comune's host, signed by the rig's
        // CA; each comune's status shows it, with its expiry, and so does the metric (90 days,
        // cert-manager's default life).
        for (comune, ns, service) in [
            (&a, &a_ns, &sito_name),
            (&b, &b_ns, &sito_name),
            (&a, &sit_ns, &sit_name),
        ] {
            let cert = ready_in_status(&env, comune, service).await?;
            let (host, _) = served(&env, ns, service).await?;
            let x509 = issued(&env, ns, &format!("{service}-tls")).await?;
            ensure!(
                x509.lines().any(|l| l.trim() == format!("DNS:{host}")),
                "{ns}: not for {host}: {x509}"
            );
            ensure!(x509.contains("CN = consorzio-rig-ca"), "{x509}");
            let not_after = cert["notAfter"].as_str().context("notAfter")?;
            let end = x509
                .lines()
                .find_map(|l| l.strip_prefix("notAfter="))
                .context("enddate")?;
            // The status's end is the certificate's ("2027-03-01 05:16:36Z" in openssl's words).
            ensure!(
                end.replace(' ', "T") == not_after,
                "status {not_after}, certificate {end}"
            );
            let seconds = wait_for("the expiry metric", TIMEOUT, || async {
                expiry(&op, comune, service).context("not exported yet")
            })
            .await?;
            ensure!(
                (89.0 * 86400.0..=90.0 * 86400.0).contains(&seconds),
                "{comune}/{service}: {seconds} s to expiry"
            );
        }

        // A comune that leaves: its certificate goes (cert-manager keeps its Secret), and so
        // does its series.
        sito.spec.municipalities = serde_json::from_value(json!({"names": [a]}))?;
        apply_service(&env, &sito).await?;
        no_certificate(&env, &b_ns, &sito_name).await?;
        wait_for("b's expiry series gone", TIMEOUT, || async {
            ensure!(expiry(&op, &b, &sito_name).is_none());
            Ok(())
        })
        .await?;

        // A TLS Secret of the service's own: no certificate is requested, the Ingress serves it.
        sito.spec
            .ingress
            .as_mut()
            .context("an ingress")?
            .tls_secret_name = Some("wildcard-tls".into());
        apply_service(&env, &sito).await?;
        no_certificate(&env, &a_ns, &sito_name).await?;
        let (_, secret) = served(&env, &a_ns, &sito_name).await?;
        ensure!(secret.as_deref() == Some("wildcard-tls"), "{secret:?}");

        remove_service(&env, &sito_name).await?;
        remove_service(&env, &sit_name).await?;
        remove(&env, &a).await?;
        remove(&env, &b).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

const CERT_MANAGER_CRD: &str = "certificates.cert-manager.io";

/// On a cluster without cert-manager a service whose hosts need certificates says what to
/// install and starts nothing; one with a TLS Secret of its own goes on; once cert-manager's
/// CRDs are installed, the operator picks them up by itself.
#[tokio::test]
async fn a_service_says_to_install_cert_manager_and_picks_it_up_once_installed() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let crds = Api::<CustomResourceDefinition>::all(env.client());
        let _ = crds.delete(CERT_MANAGER_CRD, &Default::default()).await;
        wait_gone(&crds, CERT_MANAGER_CRD, TIMEOUT).await?;
        let outcome = async {
            let op = Operator::start(&env).await?;
            let (a, a_ns) = onboard(&env, &comune()).await?;
            let mut sito = catalogue_service("sito-comunale", json!({"names": [a]}))?;
            sito.spec
                .ingress
                .as_mut()
                .context("an ingress")?
                .tls_secret_name = None;
            let name = sito.name_any();
            apply_service(&env, &sito).await?;
            let status = wait_status(&env, &name, "CertManagerMissing", |st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "CertManagerMissing")
            })
            .await?;
            let message = &status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .context("Ready")?
                .message;
            ensure!(
                message.contains("Install cert-manager")
                    && message.contains("cert-manager.io/v1 Certificate")
                    && message.contains(TEST_CLUSTER_ISSUER),
                "{message}"
            );
            ensure!(
                env.api::<Deployment>(&a_ns).get_opt(&name).await?.is_none(),
                "nothing of it is made"
            );

            // With a Secret of its own it needs no cert-manager.
            let mut own = sito.clone();
            own.spec
                .ingress
                .as_mut()
                .context("an ingress")?
                .tls_secret_name = Some("wildcard-tls".into());
            apply_service(&env, &own).await?;
            wait_status(&env, &name, "Ready", |st| st.ready_instances == 1).await?;

            // Installed, and the service back on the platform's issuer: the operator notices by
            // itself (within a watch's longest backoff, 30 s, and the service's next look).
            env.cluster().reinstall()?;
            apply_service(&env, &sito).await?;
            let certs = Api::<DynamicObject>::namespaced_with(env.client(), &a_ns, &certificates());
            wait_for(
                "the certificate, once cert-manager is there",
                Duration::from_secs(120),
                || async { Ok(certs.get(&name).await?) },
            )
            .await?;
            ready_in_status(&env, &a, &name).await?;
            remove_service(&env, &name).await?;
            remove(&env, &a).await?;
            op.stop().await;
            anyhow::Ok(())
        }
        .await;
        // Whatever happened, the CRDs are back for the other tests.
        env.cluster().reinstall()?;
        outcome
    })
    .await;
}
