//! The operator's settings (flags and their environment variables), shared by `run` and
//! `render`, and the render configuration they make.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::Args;
use consorzio::render::{Config, database_backup::BackupStore, is_cidr};
use k8s_openapi::api::core::v1::Toleration;

#[derive(Args, Debug)]
pub struct Settings {
    /// Prefix of each comune's namespace.
    #[arg(long, env = "CONSORZIO_NAMESPACE_PREFIX", default_value = "comune-")]
    namespace_prefix: String,
    /// Labels (k=v,k2=v2) of the ingress controller's namespace, whose pods may reach every comune.
    #[arg(
        long,
        env = "CONSORZIO_INGRESS_NAMESPACE_SELECTOR",
        default_value = "kubernetes.io/metadata.name=ingress-nginx"
    )]
    ingress_namespace_selector: String,
    /// How many objects each controller reconciles at once.
    #[arg(long, env = "CONSORZIO_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Toleration for every application pod, as key[=value]:Effect (repeatable), e.g.
    /// kwok.x-k8s.io/node:NoSchedule.
    #[arg(
        long = "pod-toleration",
        env = "CONSORZIO_POD_TOLERATIONS",
        value_delimiter = ','
    )]
    pod_tolerations: Vec<String>,
    /// Address ranges (CIDR, repeatable) that a comune's internet egress never reaches, besides
    /// the private and special-purpose ones always excluded: e.g. the nodes' public addresses.
    #[arg(
        long = "internet-egress-except",
        env = "CONSORZIO_INTERNET_EGRESS_EXCEPT",
        value_delimiter = ','
    )]
    internet_egress_except: Vec<String>,
    /// Namespace of CloudNativePG's operator, admitted to the PostgreSQL servers it runs.
    #[arg(long, env = "CONSORZIO_CNPG_NAMESPACE", default_value = "cnpg-system")]
    cnpg_namespace: String,
    /// Namespace of mariadb-operator, admitted to the MariaDB servers it runs.
    #[arg(
        long,
        env = "CONSORZIO_MARIADB_OPERATOR_NAMESPACE",
        default_value = "mariadb-operator"
    )]
    mariadb_operator_namespace: String,
    /// The API server's address ranges (CIDR, repeatable), which database servers reach:
    /// without any, they may reach ports 443 and 6443 of any address.
    #[arg(
        long = "api-server-cidr",
        env = "CONSORZIO_API_SERVER_CIDRS",
        value_delimiter = ','
    )]
    api_server_cidrs: Vec<String>,
    /// The cert-manager ClusterIssuer that issues a certificate for every host of a service
    /// that names neither its own (`ingress.clusterIssuer`) nor a TLS Secret: without it, such
    /// hosts are served over plain HTTP.
    #[arg(long, env = "CONSORZIO_CLUSTER_ISSUER")]
    cluster_issuer: Option<String>,
    /// Velero's namespace, where the operator makes each comune's backup Schedule (and only
    /// there may it write them); empty: no backups.
    #[arg(long, env = "CONSORZIO_VELERO_NAMESPACE", default_value = "velero")]
    velero_namespace: String,
    /// The object store of the databases' own backups, s3://BUCKET[/PREFIX] (CloudNativePG's
    /// barman-cloud plugin, mariadb-operator's dumps); none: no database backups.
    #[arg(long, env = "CONSORZIO_BACKUP_OBJECT_STORE")]
    backup_object_store: Option<String>,
    /// Its S3-compatible endpoint, e.g. https://minio.example.org:9000 (none: Amazon S3).
    #[arg(long, env = "CONSORZIO_BACKUP_OBJECT_STORE_ENDPOINT")]
    backup_object_store_endpoint: Option<String>,
    /// Its address ranges (CIDR, repeatable): the database servers reach it there only. None:
    /// only where their namespace's egress reaches.
    #[arg(
        long = "backup-object-store-cidr",
        env = "CONSORZIO_BACKUP_OBJECT_STORE_CIDRS",
        value_delimiter = ','
    )]
    backup_object_store_cidrs: Vec<String>,
    /// NAMESPACE/NAME of the Secret with ACCESS_KEY_ID and ACCESS_SECRET_KEY for the store,
    /// copied beside the services' own servers; a comune's servers get NAME-<comune>, a key the
    /// platform limits to the comune's prefix (its admins can read its namespace's Secrets).
    #[arg(
        long,
        env = "CONSORZIO_BACKUP_CREDENTIALS",
        default_value = "consorzio/consorzio-backup-credentials"
    )]
    backup_credentials: String,
}

impl Settings {
    pub fn config(&self) -> anyhow::Result<Config> {
        let prefix = &self.namespace_prefix;
        let valid = !prefix.is_empty()
            && prefix.len() <= 8
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !prefix.starts_with('-');
        if !valid {
            bail!(
                "--namespace-prefix {prefix:?} is not usable: it must be 1 to 8 lowercase letters, \
                 digits or '-', not starting with '-' (comune names may be 55 characters long)"
            );
        }
        let shared = consorzio::render::shared::SHARED_NAMESPACE_PREFIX;
        if prefix.starts_with(shared) || shared.starts_with(prefix.as_str()) {
            bail!(
                "--namespace-prefix {prefix:?} overlaps {shared:?}, the prefix of Shared services'                  namespaces: a comune's namespace could be a service's"
            );
        }
        let mut labels = BTreeMap::new();
        for pair in self
            .ingress_namespace_selector
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--ingress-namespace-selector: {pair:?} is not key=value");
            };
            labels.insert(key.trim().to_string(), value.trim().to_string());
        }
        if labels.is_empty() {
            bail!("--ingress-namespace-selector needs at least one key=value label");
        }
        let flags = [
            ("--internet-egress-except", &self.internet_egress_except),
            ("--api-server-cidr", &self.api_server_cidrs),
        ];
        for (flag, cidrs) in flags {
            if let Some(cidr) = cidrs.iter().find(|c| !is_cidr(c)) {
                bail!(
                    "{flag} {cidr:?} is not an address range, e.g. 203.0.113.0/24 or 2001:db8::/32"
                );
            }
        }
        let backup_store = match self
            .backup_object_store
            .as_deref()
            .filter(|d| !d.is_empty())
        {
            None => None,
            Some(destination) => Some(self.backup_store(destination)?),
        };
        Ok(Config {
            backup_store,
            internet_egress_except: self.internet_egress_except.clone(),
            cnpg_namespace: self.cnpg_namespace.clone(),
            mariadb_operator_namespace: self.mariadb_operator_namespace.clone(),
            api_server_cidrs: self.api_server_cidrs.clone(),
            cluster_issuer: self.cluster_issuer.clone().filter(|i| !i.is_empty()),
            velero_namespace: Some(self.velero_namespace.clone()).filter(|n| !n.is_empty()),
            namespace_prefix: prefix.clone(),
            ingress_namespace_labels: labels,
            concurrency: self.concurrency,
            pod_tolerations: self
                .pod_tolerations
                .iter()
                .map(|t| toleration(t))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

impl Settings {
    /// The platform's object store, from its flags.
    fn backup_store(&self, destination: &str) -> anyhow::Result<BackupStore> {
        if !BackupStore::valid_destination(destination) {
            bail!("--backup-object-store {destination:?}: expected s3://BUCKET[/PREFIX]");
        }
        let endpoint = self
            .backup_object_store_endpoint
            .clone()
            .filter(|e| !e.is_empty());
        if let Some(e) = &endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            bail!("--backup-object-store-endpoint {e:?}: expected https://HOST[:PORT]");
        }
        if let Some(c) = self.backup_object_store_cidrs.iter().find(|c| !is_cidr(c)) {
            bail!("--backup-object-store-cidr {c:?} is not an address range, e.g. 203.0.113.0/24");
        }
        let Some((ns, name)) = self.backup_credentials.split_once('/') else {
            bail!(
                "--backup-credentials {:?}: expected NAMESPACE/NAME",
                self.backup_credentials
            );
        };
        Ok(BackupStore {
            destination: destination.to_string(),
            endpoint,
            cidrs: self.backup_object_store_cidrs.clone(),
            credentials: (ns.to_string(), name.to_string()),
        })
    }
}

/// Reads `key[=value]:Effect`.
fn toleration(text: &str) -> anyhow::Result<Toleration> {
    let Some((key_value, effect)) = text.rsplit_once(':') else {
        bail!(
            "--pod-toleration {text:?}: expected key[=value]:Effect, e.g. dedicated=apps:NoSchedule"
        );
    };
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        bail!(
            "--pod-toleration {text:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
        );
    }
    let (key, value) = match key_value.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (key_value, None),
    };
    Ok(Toleration {
        key: Some(key.to_string()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
        value,
        effect: Some(effect.to_string()),
        toleration_seconds: None,
    })
}
