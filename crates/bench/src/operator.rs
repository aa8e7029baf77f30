//! The operator under test, as a child process.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use consorzio_testkit::Cluster;

/// A running `consorzio run`.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    metrics_addr: String,
}

fn binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("CONSORZIO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/consorzio"))
}

impl OperatorProcess {
    /// Starts the release build of the operator against the local cluster.
    pub fn start(cluster: &Cluster) -> anyhow::Result<OperatorProcess> {
        let bin = binary();
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
        let log = std::fs::File::create(cluster.dir.join("logs/bench-operator.log"))?;
        let child = Command::new(&bin)
            .args(["run", "--metrics-addr", &metrics_addr])
            // Application pods run on the fake nodes.
            .args(["--pod-toleration", "kwok.x-k8s.io/node:NoSchedule"])
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(OperatorProcess {
            child,
            metrics_addr,
        })
    }

    /// Waits until /readyz answers: the caches are filled and the controllers run.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the operator exited with {status}; see target/cluster/logs/bench-operator.log"
                );
            }
            if self
                .get("/readyz")
                .await
                .is_ok_and(|body| body.trim() == "ok")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the operator is not ready after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// Stops the operator.
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
