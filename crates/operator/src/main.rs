//! `consorzio`: the operator (`run`), its CRDs (`crds`), and a dry run of what it would create
//! (`render`).

use std::io::Write;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "consorzio",
    version,
    about = "Shared infrastructure for many municipalities, on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prints the CustomResourceDefinitions of Municipality and SharedService as YAML.
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => {
            let mut out = std::io::stdout().lock();
            out.write_all(consorzio::crds_yaml()?.as_bytes())?;
        }
    }
    Ok(())
}
