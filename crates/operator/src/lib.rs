//! The consorzio operator: renders Municipality and SharedService objects into namespaces,
//! policies and application instances, and keeps them that way.

pub mod controller;
pub mod metrics;
pub mod quantity;
pub mod render;
pub mod restore;
pub mod server;
pub mod telemetry;

/// Both CRDs as one multi-document YAML stream, as committed in `crds/`.
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in consorzio_api::crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_crds_match_the_rust_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds/consorzio.io.yaml");
        let committed = std::fs::read_to_string(path).expect("crds/consorzio.io.yaml exists");
        let generated = super::crds_yaml().expect("CRDs serialize");
        assert!(
            committed == generated,
            "crds/consorzio.io.yaml is out of date with crates/api: run `make crds` and commit the result"
        );
    }
}
