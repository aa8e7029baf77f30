//! Two replicas of the operator, as processes: one leads and reconciles, the other stands by;
//! killing the leader hands the Lease over and the fleet keeps converging.

mod support;

use std::{path::Path, time::Instant};

use consorzio_testkit::{Env, OperatorProcess, install_crds, install_platform, run, unique_name};
use k8s_openapi::api::coordination::v1::Lease;
use kube::core::ApiResource;
use support::{comune, onboard};

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_dies() {
    // No in-process operator may run meanwhile: it would reconcile these comuni too.
    let _one = support::exclusive().await;
    run(|env: Env| async move {
        install_crds(&env.client()).await?;
        install_platform(env.cluster()).await?;
        let bin = Path::new(env!("CARGO_BIN_EXE_consorzio"));
        // In the operator's namespace, where the chart's Role lets it hold Leases.
        let lease = unique_name("lease");
        let ns = "consorzio";
        env.delete_later_dynamic(
            ApiResource::erase::<Lease>(&()),
            Some(ns.to_string()),
            lease.clone(),
        );
        let args = [
            "--leader-election-namespace",
            ns,
            "--leader-election-lease",
            &lease,
            "--lease-duration-seconds",
            "10",
        ];
        let mut first = OperatorProcess::start(env.cluster(), bin, "replica-1", &args)?;
        first.wait_leading().await?;
        let second = OperatorProcess::start(env.cluster(), bin, "replica-2", &args)?;
        // The second one answers health checks but does not lead while the first lives.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        anyhow::ensure!(
            second.health().await?,
            "the standby serves /healthz and /readyz"
        );
        anyhow::ensure!(!second.leads().await, "two leaders at once");
        onboard(&env, &comune()).await?;

        first.stop();
        let killed = Instant::now();
        let mut second = second;
        second.wait_leading().await?;
        let takeover = killed.elapsed();
        println!(
            "takeover after the leader was killed: {:.1} s (lease 10 s)",
            takeover.as_secs_f64()
        );
        onboard(&env, &comune()).await?;
        second.stop();
        Ok(())
    })
    .await;
}
