//! Reading YAML manifests, such as the examples in deploy/examples.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// Every document of a multi-document YAML text, empty documents left out.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The directory of the example comuni and service catalogue.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples")
}

/// Every manifest in deploy/examples, file by file in name order.
pub fn example_manifests() -> anyhow::Result<Vec<Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut all = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        all.extend(yaml_documents(&text).with_context(|| format!("parsing {}", file.display()))?);
    }
    Ok(all)
}
