//! The `consorzio` command line, without a cluster.

use std::process::Command;

fn consorzio(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_consorzio"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples");

#[test]
fn render_prints_every_object_of_the_example_comuni() {
    let (ok, out, err) = consorzio(&[
        "render",
        "-f",
        &format!("{EXAMPLES}/ticino.yaml"),
        "-f",
        &format!("{EXAMPLES}/catalogue.yaml"),
    ]);
    assert!(ok, "{err}");
    for city in ["bellinzona", "chiasso", "mendrisio", "locarno", "lugano"] {
        assert!(
            out.contains(&format!("# Namespace comune-{city}\n")),
            "{city} missing:\n{out}"
        );
        assert!(out.contains(&format!("# ResourceQuota comune-{city}/consorzio-quota\n")));
    }
    assert_eq!(
        out.matches("# NetworkPolicy comune-").count(),
        5 * (5 + 3),
        "4 policies and internet egress each, the access policies of the Shared services they \
         get (identity, opendata), and the policy of their own Nextcloud database server"
    );
    // Critical data: each city's Nextcloud database on a server of its own, in its namespace.
    assert!(out.contains("# Cluster comune-lugano/nextcloud-db\n"));
    assert!(out.contains("# NetworkPolicy comune-lugano/consorzio-database-nextcloud\n"));
    assert!(
        !out.contains("# Namespace shared-nextcloud\n"),
        "no shared server: {out}"
    );
    assert!(out.contains("# Cluster shared-identity/identity-db\n"));
    // Dedicated: an instance in the comune's namespace. Shared: one instance in its own
    // namespace, an access point in each comune's.
    assert!(out.contains("# Deployment comune-lugano/nextcloud\n"));
    assert!(out.contains("# Deployment shared-identity/identity\n"));
    assert!(out.contains("# Service comune-lugano/identity\n"));
    assert!(out.contains("# Deployment shared-opendata/opendata\n"));
    assert!(out.contains("# Service comune-lugano/opendata\n"));
    assert!(out.contains("# NetworkPolicy shared-identity/consorzio-allow-subscribers\n"));
    assert!(
        !out.contains("# Namespace shared-pagopa\n") || out.contains("shared-pagopa/pagopa"),
        "a Shared namespace always comes with its instance"
    );
}

#[test]
fn render_honours_the_namespace_prefix() {
    let (ok, out, err) = consorzio(&[
        "render",
        "--namespace-prefix",
        "gem-",
        "-f",
        &format!("{EXAMPLES}/ticino.yaml"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("# Namespace gem-lugano\n"));
}

#[test]
fn render_refuses_bad_input_with_the_place_of_the_error() {
    let dir = std::env::temp_dir().join(format!("consorzio-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    let (ok, _, err) = consorzio(&["render", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("document 1: kind Some(\"ConfigMap\") is not Municipality or SharedService"),
        "{err}"
    );

    std::fs::write(&file, "apiVersion: consorzio.io/v1alpha1\nkind: Municipality\nmetadata: {name: x}\nspec: {country: FR}\n").unwrap();
    let (ok, _, err) = consorzio(&["render", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not a valid Municipality"), "{err}");

    let (ok, _, err) = consorzio(&[
        "render",
        "--namespace-prefix",
        "Bad_",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("--namespace-prefix \"Bad_\" is not usable"),
        "{err}"
    );
    // A comune's namespace could be a Shared service's.
    for overlapping in ["shared-", "sh"] {
        let (ok, _, err) = consorzio(&[
            "render",
            "--namespace-prefix",
            overlapping,
            "-f",
            file.to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(err.contains("overlaps \"shared-\""), "{err}");
    }
    let (ok, _, err) = consorzio(&[
        "render",
        "--internet-egress-except",
        "10.0.0.0/33",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("is not an address range"), "{err}");
}

#[test]
fn crds_prints_both_definitions() {
    let (ok, out, _) = consorzio(&["crds"]);
    assert!(ok);
    assert!(out.contains("name: municipalities.consorzio.io"));
    assert!(out.contains("name: sharedservices.consorzio.io"));
}
