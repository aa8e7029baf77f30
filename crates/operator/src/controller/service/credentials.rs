//! An instance's generated credentials: random, created once, never replaced, never read.

use std::collections::BTreeMap;

use consorzio_api::SharedService;
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
    let password: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let mut labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (SERVICE_LABEL.to_string(), s.name_any()),
    ]);
    if let Some(comune) = municipality {
        labels.insert(MUNICIPALITY_LABEL.to_string(), comune.to_string());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(
            [(
                "CONSORZIO_PASSWORD".to_string(),
                ByteString(password.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    ctx.metrics.wrote("Secret");
    match Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(()),
        // Created meanwhile (the cache lags): the existing one stays.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e).during(Step::Create, describe("Secret", Some(ns), &name)),
    }
}
