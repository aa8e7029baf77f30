//! `consorzio render`: what the operator would create, from manifests, without a cluster.

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use consorzio::render::{self, Config};
use consorzio_api::{Municipality, SharedService};

/// Prints every object the operator would create for the Municipalities and SharedServices in
/// `paths` (files, directories, or `-` for standard input).
pub fn render_files(paths: &[PathBuf], config: &Config) -> anyhow::Result<()> {
    let (mut municipalities, mut services) = (vec![], vec![]);
    let mut files = vec![];
    for path in paths {
        if path.is_dir() {
            // Like kubectl -f DIR: every .yaml and .yml file in it, in name order.
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    for file in &files {
        let text = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let where_ = format!("{}, document {}", file.display(), i + 1);
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).with_context(|| where_.clone())?;
            if value.is_null() {
                continue;
            }
            match value["kind"].as_str() {
                Some("Municipality") => municipalities.push(
                    serde_json::from_value::<Municipality>(value)
                        .with_context(|| format!("{where_}: not a valid Municipality"))?,
                ),
                Some("SharedService") => services.push(
                    serde_json::from_value::<SharedService>(value)
                        .with_context(|| format!("{where_}: not a valid SharedService"))?,
                ),
                other => bail!("{where_}: kind {other:?} is not Municipality or SharedService"),
            }
        }
    }
    let mut rendered = vec![];
    for m in &municipalities {
        rendered.extend(render::render_municipality(m, config)?);
    }
    for s in &services {
        let chosen = municipalities
            .iter()
            .filter(|m| render::service::selects(s, m));
        if render::service::is_dedicated(s) {
            let chosen: Vec<_> = chosen.collect();
            // The service's server, for the databases of its ordinary comuni.
            let on_server = |m: &Municipality| {
                render::database::place_for(m) == render::database::Place::SharedServer
            };
            if let Some(db) = &s.spec.database
                && chosen.iter().any(|m| on_server(m))
            {
                rendered.extend(render::service_namespace::render_database_namespace(
                    s, db, config,
                )?);
            }
            for m in chosen {
                rendered.extend(render::service::render_dedicated(s, m, config)?);
                if s.spec.database.is_some() && on_server(m) {
                    rendered.push(render::shared::render_subscription(s, m, config, true)?);
                }
            }
        } else {
            rendered.extend(render::shared::render_shared(s, config)?);
            for m in chosen {
                rendered.extend(render::shared::render_access_point(s, m, config)?);
                rendered.push(render::shared::render_subscription(s, m, config, true)?);
                // Its onboarding Job (its offboarding Job runs when it leaves).
                let stage = render::tenant::Stage::Onboarding;
                rendered.extend(render::tenant::render_tenant_job(s, m, stage, config)?);
            }
        }
    }
    let mut out = String::new();
    for r in rendered {
        out.push_str("---\n# ");
        out.push_str(&r.describe());
        out.push('\n');
        out.push_str(&serde_yaml::to_string(&r.object)?);
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}
