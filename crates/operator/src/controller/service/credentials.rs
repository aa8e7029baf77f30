//! An instance's generated credentials: random, created once, never replaced, never read.

use std::collections::BTreeMap;

use consorzio_api::{CREDENTIALS_KEY, SharedService};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use rand::{Rng, distr::Alphanumeric};

use super::{
    super::{
        Context, Error,
        error::{During, Step, describe},
    },
    observe::has_credentials,
};
use crate::render::{
    MANAGED_BY, MUNICIPALITY_LABEL,
    service::{SERVICE_LABEL, credentials_name},
};

/// Creates the instance's credentials in `ns` unless they exist (when the Secret exists
/// already, it stays as it is).
pub async fn ensure_credentials(
    s: &SharedService,
    ns: &str,
    municipality: Option<&str>,
    ctx: &Context,
) -> Result<(), Error> {
    // The operator may not read Secrets: the instance's Deployment, applied only after the
    // Secret exists, says it was created.
    if has_credentials(s, ns, ctx) {
        return Ok(());
    }
    let name = credentials_name(s);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.to_string()),
            labels: Some(secret_labels(s, municipality)),
            ..Default::default()
        },
        data: Some(
            [(
                CREDENTIALS_KEY.to_string(),
                ByteString(new_password().into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    create_once(ctx, &secret).await.map(|_| ())
}

/// A new random password: 32 letters and digits.
pub fn new_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The labels of a Secret the operator makes for `s` (in `comune`'s namespace, if any).
pub fn secret_labels(s: &SharedService, comune: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (SERVICE_LABEL.to_string(), s.name_any()),
    ]);
    if let Some(comune) = comune {
        labels.insert(MUNICIPALITY_LABEL.to_string(), comune.to_string());
    }
    labels
}

/// Creates `secret`; says whether it is new (one that exists, perhaps created meanwhile while
/// the cache lags, stays as it is).
pub async fn create_once(ctx: &Context, secret: &Secret) -> Result<bool, Error> {
    let ns = secret.namespace().unwrap_or_default();
    ctx.metrics.wrote("Secret");
    match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), secret)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e).during(
            Step::Create,
            describe("Secret", Some(&ns), &secret.name_any()),
        ),
    }
}
