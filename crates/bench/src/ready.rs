//! When comuni become Ready, as a watch on the benchmark's Municipalities reports it.
//!
//! Onboarding latency is measured from just before a Municipality's apply request to the watch
//! event that first shows it Ready. Polling with a backoff (as `wait_for` does, 50 to 500 ms)
//! would round every latency up to the next poll, and made the percentiles steps of the backoff;
//! a watch event arrives as soon as the API server has the status write.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use consorzio_api::Municipality;
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{mpsc, oneshot};

use crate::is_ready;

/// A watch of the benchmark's Municipalities, running in its own task from before the first
/// apply, that records when each of the comuni it was given is first seen Ready.
#[derive(Debug)]
pub struct ReadyTimes {
    seen: mpsc::UnboundedReceiver<(String, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyTimes {
    /// Starts the watch and returns once it has listed the Municipalities: every change after
    /// that is delivered, as the watch goes on from the list's resourceVersion. Only `names`
    /// are reported.
    pub async fn start(api: Api<Municipality>, names: HashSet<String>) -> anyhow::Result<Self> {
        let (send, seen) = mpsc::unbounded_channel();
        let (listed, on_listed) = oneshot::channel();
        let config = watcher::Config::default().labels("consorzio.io/bench=true");
        let task = tokio::spawn(async move {
            let mut listed = Some(listed);
            // The watcher retries failed requests itself (with a backoff); its errors are only
            // reported, so they are skipped here.
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let m = match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(listed) = listed.take() {
                            let _ = listed.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => m,
                    _ => continue,
                };
                let name = m.name_any();
                // Nobody waits any more: the benchmark is done with it.
                if is_ready(&m) && names.contains(&name) && send.send((name, now)).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), on_listed)
            .await
            .context("the watch of Municipalities did not list them within 60 s")?
            .context("the watch of Municipalities ended before listing them")?;
        Ok(ReadyTimes { seen, task })
    }

    /// When `name` was first seen Ready (it may have been before this call). Reports of other
    /// comuni (a comune onboarded earlier whose status is written again) are dropped.
    pub async fn wait(&mut self, name: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Err(_) => bail!("{name} not Ready after {}s", timeout.as_secs()),
                Ok(None) => bail!("the watch of Municipalities ended while waiting for {name}"),
                Ok(Some((seen, at))) if seen == name => return Ok(at),
                Ok(Some(_)) => {}
            }
        }
    }
}

impl Drop for ReadyTimes {
    fn drop(&mut self) {
        self.task.abort();
    }
}
