//! Finding, starting and connecting to the local control plane.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use anyhow::Context;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The operator's user name: the ServiceAccount the chart makes, in release `consorzio` and
/// namespace `consorzio` (deploy/rbac/operator.yaml).
pub const OPERATOR_USER: &str = "system:serviceaccount:consorzio:consorzio";
/// The groups of a ServiceAccount of namespace `consorzio`.
pub const OPERATOR_GROUPS: [&str; 3] = [
    "system:serviceaccounts",
    "system:serviceaccounts:consorzio",
    "system:authenticated",
];

/// The local control plane started by `tests/cluster/up`.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The state directory (`target/cluster` unless `CONSORZIO_CLUSTER_DIR` says otherwise).
    pub dir: PathBuf,
}

/// The repository root, found from this crate's location.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Cluster {
    /// The running cluster. The first call in a process runs `tests/cluster/up`, which starts the
    /// cluster if needed and is a fast no-op when it is already healthy. Panics, saying how to
    /// start the cluster by hand, when that fails: a test never passes without a cluster.
    pub fn get() -> Cluster {
        static UP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        match UP.get_or_init(ensure_up) {
            Ok(dir) => Cluster { dir: dir.clone() },
            Err(message) => panic!("{message}"),
        }
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Path of the operator's kubeconfig: the admin's certificate impersonating the chart's
    /// ServiceAccount ([`OPERATOR_USER`]), written by `tests/cluster/up`.
    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.dir.join("operator-kubeconfig")
    }

    /// Path of a binary of the cluster (`kubectl`, `helm`, `kwok`, `kcp`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// CPU time used so far (user plus system, in seconds) by each running component, by name.
    pub fn cpu_seconds(&self) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
        let mut out = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(self.dir.join("pids"))? {
            let path = entry?.path();
            let (Some(name), Ok(pid)) = (
                path.file_stem().and_then(|s| s.to_str()),
                std::fs::read_to_string(&path),
            ) else {
                continue;
            };
            if let Ok(seconds) = crate::cpu_seconds(pid.trim().parse()?) {
                out.insert(name.to_string(), seconds);
            }
        }
        Ok(out)
    }

    /// Stops the control plane and starts it again on the same state and API server port
    /// (`tests/cluster/down`, then `up`), so that what comes next runs on processes that hold
    /// nothing of what came before: the API server's watch caches keep the events of the last
    /// minutes of changes, hundreds of MB after a large fleet, until it restarts. Clients
    /// connect again on their next request.
    pub fn restart(&self) -> anyhow::Result<()> {
        let port = std::fs::read_to_string(self.dir.join("apiserver-port")).context(
            "reading the API server's port (was the cluster started by tests/cluster/up?)",
        )?;
        for script in ["down", "up"] {
            let path = repo_root().join("tests/cluster").join(script);
            let out = Command::new(&path)
                .env("CONSORZIO_CLUSTER_DIR", &self.dir)
                .env("CONSORZIO_APISERVER_PORT", port.trim())
                .output()
                .with_context(|| format!("running {}", path.display()))?;
            anyhow::ensure!(
                out.status.success(),
                "{} failed while restarting the control plane:\n{}\nsee {}/logs/",
                path.display(),
                String::from_utf8_lossy(&out.stderr),
                self.dir.display()
            );
        }
        Ok(())
    }

    /// The admin client configuration.
    pub async fn config(&self) -> anyhow::Result<Config> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())
            .with_context(|| format!("reading {}", self.kubeconfig().display()))?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// An admin client (group `system:masters`).
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// A client that authenticates with a bearer token (e.g. a ServiceAccount's, from a
    /// TokenRequest) instead of the admin certificate.
    pub async fn client_with_token(&self, token: &str) -> anyhow::Result<Client> {
        let mut config = self.config().await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// A client with the operator's identity, its ServiceAccount `consorzio/consorzio`: what it
    /// does is checked by the chart's RBAC and admission policies, which `tests/cluster/up`
    /// installs.
    pub async fn operator_client(&self) -> anyhow::Result<Client> {
        self.client_as(OPERATOR_USER, &OPERATOR_GROUPS).await
    }

    /// Runs `tests/cluster/up` again: on a running cluster it installs again what the rig
    /// installs (the platform's RBAC and policies, the database and other operators' CRDs).
    pub fn reinstall(&self) -> anyhow::Result<()> {
        ensure_up().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// A client that impersonates `user` in `groups`.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<Client> {
        let mut config = self.config().await?;
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        Ok(Client::try_from(config)?)
    }
}

fn ensure_up() -> Result<PathBuf, String> {
    let up = repo_root().join("tests/cluster/up");
    let how = "start it with `make cluster-up` (or tests/cluster/up) and see target/cluster/logs/";
    let out = Command::new(&up)
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {how}", up.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the local Kubernetes control plane is not running and {} failed:\n{}\n{how}",
            up.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // `up`'s last line is `export KUBECONFIG=<dir>/kubeconfig`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kubeconfig = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("export KUBECONFIG="))
        .ok_or_else(|| format!("unexpected output from {}: {stdout}", up.display()))?;
    Path::new(kubeconfig.trim())
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("bad kubeconfig path from {}: {kubeconfig}", up.display()))
}

/// Runs the cluster's kubectl with the admin kubeconfig and returns its output, whatever its
/// exit status.
pub async fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Output> {
    tokio::process::Command::new(cluster.bin("kubectl"))
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig())
        .output()
        .await
        .with_context(|| format!("running kubectl {}", args.join(" ")))
}
