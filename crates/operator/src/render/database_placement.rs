//! Where the catalogue's applications keep their data, as each comune's data classification
//! says: a database and user of its own on the service's server, or a server of its own.

use consorzio_api::{DataClassification, Municipality, SharedService};
use serde_json::Value;

use super::{
    Config, Rendered,
    apps::{catalogue_service, instance, json, one},
    database::{Place, sql_name},
    fixtures::comune,
    service::render_dedicated_at,
};

fn sito() -> SharedService {
    catalogue_service("sito-comunale")
}

fn nextcloud() -> SharedService {
    catalogue_service("nextcloud")
}

fn described(objects: &[Rendered]) -> Vec<String> {
    objects.iter().map(Rendered::describe).collect()
}

#[test]
fn an_ordinary_comune_gets_a_database_and_user_of_its_own_on_the_services_server() {
    let objects = instance(&sito(), DataClassification::Ordinary);
    let names = described(&objects);
    for expected in [
        "NetworkPolicy comune-alvito/consorzio-database-sito-comunale",
        "Database shared-sito-comunale/alvito",
        "User shared-sito-comunale/alvito",
        "Grant shared-sito-comunale/alvito",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} in {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("MariaDB ")),
        "no server of its own"
    );
    let kind = |k: &str| -> Value { json(objects.iter().find(|r| r.resource.kind == k).unwrap()) };
    let (database, user, grant) = (kind("Database"), kind("User"), kind("Grant"));
    let sql = sql_name("alvito");
    assert_eq!(database["spec"]["name"], sql);
    assert_eq!(user["spec"]["name"], sql);
    // Its user is granted its own database and nothing else.
    assert_eq!(grant["spec"]["username"], sql);
    assert_eq!(grant["spec"]["database"], sql);
    assert_eq!(
        user["spec"]["passwordSecretKeyRef"]["name"],
        "alvito-database"
    );
    for obj in [&database, &user, &grant] {
        assert_eq!(
            obj["spec"]["cleanupPolicy"], "Skip",
            "no deletion drops data"
        );
    }
    // Its egress opens to the server's pods, on the SQL port only.
    let policy = one(&objects, "NetworkPolicy");
    let to = &policy["spec"]["egress"][0];
    assert_eq!(
        to["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "shared-sito-comunale"
    );
    assert_eq!(
        to["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "sito-comunale-db"
    );
    assert_eq!(
        to["ports"],
        serde_json::json!([{"port": 3306, "protocol": "TCP"}])
    );
    let settings = one(&objects, "ConfigMap");
    assert_eq!(
        settings["data"]["CONSORZIO_DB_HOST"],
        "sito-comunale-db.shared-sito-comunale.svc"
    );
    assert_eq!(settings["data"]["CONSORZIO_DB_NAME"], sql);
}

#[test]
fn a_critical_comune_gets_a_server_of_its_own_in_its_namespace() {
    let objects = instance(&nextcloud(), DataClassification::Critical);
    let names = described(&objects);
    assert!(
        names.contains(&"Cluster comune-alvito/nextcloud-db".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("shared-")),
        "nothing on a shared server: {names:?}"
    );
    let cluster = one(&objects, "Cluster");
    assert_eq!(cluster["spec"]["bootstrap"]["initdb"]["owner"], "app");
    assert_eq!(
        cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"],
        "nextcloud-database"
    );
    assert_eq!(
        cluster["spec"]["imageName"],
        "ghcr.io/cloudnative-pg/postgresql:17.6"
    );
    // Its operator reaches it; it reaches the API server.
    let policy = json(
        objects
            .iter()
            .find(|r| r.describe() == "NetworkPolicy comune-alvito/consorzio-database-nextcloud")
            .unwrap(),
    );
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["cnpg.io/cluster"],
        "nextcloud-db"
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "cnpg-system"
    );
    let settings = one(&objects, "ConfigMap");
    assert_eq!(
        settings["data"]["CONSORZIO_DB_HOST"],
        "nextcloud-db-rw.comune-alvito.svc"
    );
    assert_eq!(settings["data"]["CONSORZIO_DB_USER"], "app");
}

#[test]
fn on_a_shared_postgresql_server_each_role_logs_into_its_own_database_only() {
    let s = nextcloud();
    let m: Municipality = comune("alvito", "x");
    let objects = render_dedicated_at(&s, &m, &Config::default(), Place::SharedServer).unwrap();
    let role = one(&objects, "DatabaseRole");
    let database = json(
        objects
            .iter()
            .find(|r| r.resource.kind == "Database")
            .unwrap(),
    );
    assert_eq!(role["spec"]["name"], sql_name("alvito"));
    assert_eq!(role["spec"]["passwordSecret"]["name"], "alvito-database");
    assert_eq!(database["spec"]["owner"], role["spec"]["name"]);
    assert_eq!(database["spec"]["name"], role["spec"]["name"]);
    assert_eq!(database["spec"]["databaseReclaimPolicy"], "retain");
    let server = crate::render::service_namespace::render_database_namespace(
        &s,
        s.spec.database.as_ref().unwrap(),
        &Config::default(),
    )
    .unwrap();
    let cluster = one(&server, "Cluster");
    // A role reaches the database of its own name (its database), and no other.
    assert_eq!(
        cluster["spec"]["postgresql"]["pg_hba"],
        serde_json::json!([
            "host sameuser all all scram-sha-256",
            "host all all all reject"
        ])
    );
    let admitted = json(
        server
            .iter()
            .find(|r| r.describe() == "NetworkPolicy shared-nextcloud/consorzio-database-nextcloud")
            .unwrap(),
    );
    assert_eq!(
        admitted["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["services.consorzio.io/nextcloud"],
        "true"
    );
    assert_eq!(
        admitted["spec"]["ingress"][1]["ports"],
        serde_json::json!([{"port": 5432, "protocol": "TCP"}])
    );
}
