//! A SharedService's database, provisioned through the database operators the field uses:
//! CloudNativePG for PostgreSQL, mariadb-operator for MariaDB.

use k8s_openapi::{
    api::core::v1::ResourceRequirements, apimachinery::pkg::api::resource::Quantity,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A database for each instance. Where it lives follows the comune's data classification: a
/// `critical` or `strategic` comune gets a database server of its own in its namespace (counted
/// in its quota); an `ordinary` comune gets a database and a role of its own on one server per
/// service, in the service's namespace `shared-<service>`, which admits only the comuni whose
/// database it holds. A Shared service's one instance gets one server in its namespace. A
/// comune's database stays where it was first made if its classification changes (moving data
/// is a migration, not a setting).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.engine == 'PostgreSQL' || !has(self.extensions) || size(self.extensions) == 0")
    .message("database.extensions are PostgreSQL extensions: MariaDB has none")
    .field_path(".extensions"))]
pub struct Database {
    /// PostgreSQL (through CloudNativePG) or MariaDB (through mariadb-operator).
    pub engine: Engine,
    /// The server's version, the tag of its image: e.g. "17.6" for PostgreSQL
    /// (ghcr.io/cloudnative-pg/postgresql, or ghcr.io/cloudnative-pg/postgis with the postgis
    /// extension, e.g. "17-3.5"), "11.4.5" for MariaDB (docker-registry1.mariadb.com/library/mariadb).
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[0-9][A-Za-z0-9_.-]*$"))]
    pub version: String,
    /// The image, instead of the engine's default for `version` (e.g. a registry mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[^\\\\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$')")
        .message("database.image must carry a tag or a digest"))]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Each server's volume, e.g. "10Gi".
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))").message("database.size must be a positive quantity, e.g. 10Gi"))]
    pub size: Quantity,
    /// PostgreSQL extensions made in each database, e.g. postgis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 63), regex(pattern = "^[a-z][a-z0-9_]*$"))
    )]
    pub extensions: Vec<String>,
    /// CPU and memory of each server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A database engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Engine {
    /// PostgreSQL, through CloudNativePG (postgresql.cnpg.io/v1).
    PostgreSQL,
    /// MariaDB, through mariadb-operator (k8s.mariadb.com/v1alpha1).
    MariaDB,
}

impl Database {
    /// The server's image.
    pub fn image(&self) -> String {
        if let Some(image) = &self.image {
            return image.clone();
        }
        match self.engine {
            Engine::PostgreSQL if self.extensions.iter().any(|e| e == "postgis") => {
                format!("ghcr.io/cloudnative-pg/postgis:{}", self.version)
            }
            Engine::PostgreSQL => format!("ghcr.io/cloudnative-pg/postgresql:{}", self.version),
            Engine::MariaDB => {
                format!(
                    "docker-registry1.mariadb.com/library/mariadb:{}",
                    self.version
                )
            }
        }
    }

    /// The port its server listens on.
    pub fn port(&self) -> i32 {
        match self.engine {
            Engine::PostgreSQL => 5432,
            Engine::MariaDB => 3306,
        }
    }
}
