//! The operator as a child process: its own memory, its own lease, killable.

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::Cluster;

/// A running `consorzio run`.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    metrics_addr: String,
}

impl OperatorProcess {
    /// Starts `bin` (a build of `consorzio`) as `consorzio run` against the local cluster, with
    /// application pods tolerating the fake nodes, logging to `logs/<name>.log` in the cluster's
    /// directory. `args` are added to the command line.
    pub fn start(
        cluster: &Cluster,
        bin: &Path,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<OperatorProcess> {
        if !bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p consorzio` (make bench does)",
                bin.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let metrics_addr = format!("127.0.0.1:{port}");
        // Appended to: a benchmark restarts the operator and keeps every run's log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cluster.dir.join(format!("logs/{name}.log")))?;
        let child = Command::new(bin)
            .args(["run", "--metrics-addr", &metrics_addr])
            // Application pods run on the fake nodes.
            .args(["--pod-toleration", "kwok.x-k8s.io/node:NoSchedule"])
            .args(args)
            // Its Lease in its own namespace, where its Role lets it hold one.
            .args(
                (!args.contains(&"--leader-election-namespace"))
                    .then_some(["--leader-election-namespace", "consorzio"])
                    .into_iter()
                    .flatten(),
            )
            .env("KUBECONFIG", cluster.operator_kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("CONSORZIO_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(OperatorProcess {
            child,
            metrics_addr,
        })
    }

    /// Waits until the operator leads and reconciles (its caches filled).
    pub async fn wait_leading(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the operator exited with {status}; see its log in target/cluster/logs");
            }
            if self.leads().await && self.get("/readyz").await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator does not lead after 60 s: another one holds its Lease \
                     (is `make run` running?); see its log in target/cluster/logs"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether /healthz and /readyz both answer `ok`.
    pub async fn health(&self) -> anyhow::Result<bool> {
        Ok(self.get("/healthz").await?.trim() == "ok" && self.get("/readyz").await?.trim() == "ok")
    }

    /// Whether it reports holding the leader lease (`consorzio_leader 1`).
    pub async fn leads(&self) -> bool {
        self.metrics()
            .await
            .is_ok_and(|text| text.lines().any(|l| l.trim() == "consorzio_leader 1"))
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics_addr);
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("malformed response")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("{}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_string())
    }

    /// The operator's /metrics text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        self.get("/metrics").await
    }

    /// Current and peak resident memory, in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name}"))?;
            Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time used so far (user plus system), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::cpu_seconds(self.child.id())
    }

    /// The sum of a metric's samples whose labels contain `labels` (e.g. `controller="municipality"`;
    /// empty for all).
    pub async fn metric_sum(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for (sample_labels, value) in samples(&self.metrics().await?, name)? {
            if sample_labels.contains(labels) {
                sum += value;
            }
        }
        Ok(sum)
    }

    /// The operator's API writes so far, by kind (`consorzio_api_writes_total`).
    pub async fn writes(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let text = self.metrics().await?;
        let mut out = std::collections::BTreeMap::new();
        for (labels, value) in samples(&text, "consorzio_api_writes_total")? {
            let kind = labels
                .strip_prefix("{kind=\"")
                .and_then(|rest| rest.strip_suffix("\"}"))
                .with_context(|| format!("malformed labels {labels:?}"))?;
            out.insert(kind.to_string(), value as u64);
        }
        Ok(out)
    }

    /// Waits until the operator has written nothing for 5 s, and returns its writes by kind.
    pub async fn quiet(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        self.quiet_for(5).await
    }

    /// Waits until the operator has written nothing for `seconds`, and returns its writes by kind.
    pub async fn quiet_for(
        &self,
        seconds: u32,
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let mut last = self.writes().await?;
        let mut still = 0;
        while still < seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.writes().await?;
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        Ok(last)
    }

    /// Stops the operator at once (SIGKILL): no clean step-down.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The samples of metric `name` in a Prometheus text exposition: their labels (`{...}`, or empty)
/// and values.
fn samples<'a>(text: &'a str, name: &str) -> anyhow::Result<Vec<(&'a str, f64)>> {
    let mut out = vec![];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let (labels, value) = rest.rsplit_once(' ').context("malformed sample")?;
        let value = value
            .parse::<f64>()
            .with_context(|| format!("sample {line:?}"))?;
        out.push((labels.trim(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::samples;

    #[test]
    fn samples_are_read_by_exact_name_with_their_labels() -> anyhow::Result<()> {
        let text = "# HELP consorzio_api_writes_total Writes.\n\
                    consorzio_api_writes_total{kind=\"Namespace\"} 3\n\
                    consorzio_api_writes_total_created{kind=\"Namespace\"} 1.7e9\n\
                    consorzio_leader 1\n";
        assert_eq!(
            samples(text, "consorzio_api_writes_total")?,
            [("{kind=\"Namespace\"}", 3.0)]
        );
        assert_eq!(samples(text, "consorzio_leader")?, [("", 1.0)]);
        Ok(())
    }
}
