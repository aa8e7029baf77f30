//! Plays CloudNativePG and mariadb-operator on the cluster of KUBECONFIG
//! until interrupted: `make run` uses it, as the local control plane cannot run them. See
//! `consorzio_testkit::OperatorPlayer`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let _player = consorzio_testkit::OperatorPlayer::start(client);
    eprintln!("playing CloudNativePG and mariadb-operator (status of their objects) until Ctrl-C");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
