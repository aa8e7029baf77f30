//! The CRDs' CEL rules, evaluated without a cluster.

use consorzio_api::{Municipality, SharedService};
use kube::core::cel::{validate_cel, validate_cel_update};

fn municipality(yaml: &str) -> Municipality {
    serde_yaml::from_str(yaml).expect("fixture parses")
}

fn service(yaml: &str) -> SharedService {
    serde_yaml::from_str(yaml).expect("fixture parses")
}

const ALVITO: &str = r#"
apiVersion: consorzio.io/v1alpha1
kind: Municipality
metadata: {name: alvito}
spec:
  displayName: Alvito
  country: IT
  istatCode: "060004"
  belfioreCode: A244
  province: FR
  region: Lazio
"#;

const LUGANO: &str = r#"
apiVersion: consorzio.io/v1alpha1
kind: Municipality
metadata: {name: lugano}
spec: {displayName: Lugano, country: CH, bfsNumber: 5192, canton: TI}
"#;

const SIT: &str = r#"
apiVersion: consorzio.io/v1alpha1
kind: SharedService
metadata: {name: sit}
spec:
  displayName: SIT
  tenancy: Dedicated
  municipalities: {names: [alvito]}
  template:
    image: docker.osgeo.org/geoserver:2.26.1
    port: 8080
    env: [{name: TITLE, value: "SIT di {{ municipality.displayName }} ({{municipality.code}})"}]
  ingress: {host: "{{ municipality.name }}.sit.example.org"}
"#;

fn errors_of<T: std::fmt::Debug>(result: Result<(), T>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn valid_italian_and_swiss_municipalities_pass() {
    assert_eq!(errors_of(validate_cel(&municipality(ALVITO))), "");
    assert_eq!(errors_of(validate_cel(&municipality(LUGANO))), "");
}

#[test]
fn italian_comune_needs_its_codes_and_not_swiss_ones() {
    let mut m = municipality(ALVITO);
    m.spec.istat_code = None;
    assert!(
        errors_of(validate_cel(&m)).contains("needs istatCode, belfioreCode, province and region")
    );

    let mut m = municipality(ALVITO);
    m.spec.bfs_number = Some(5192);
    assert!(
        errors_of(validate_cel(&m)).contains("bfsNumber and canton are for Swiss municipalities")
    );
}

#[test]
fn swiss_gemeinde_needs_bfs_number_and_canton_and_not_italian_codes() {
    let mut m = municipality(LUGANO);
    m.spec.canton = None;
    assert!(errors_of(validate_cel(&m)).contains("needs bfsNumber and canton"));

    let mut m = municipality(LUGANO);
    m.spec.province = Some("CO".into());
    assert!(errors_of(validate_cel(&m)).contains("are for Italian comuni"));
}

#[test]
fn code_formats_are_checked() {
    let mut m = municipality(ALVITO);
    m.spec.istat_code = Some("60004".into());
    assert!(errors_of(validate_cel(&m)).contains("istatCode must be exactly 6 digits"));

    let mut m = municipality(ALVITO);
    m.spec.belfiore_code = Some("a244".into());
    assert!(errors_of(validate_cel(&m)).contains("belfioreCode must be a capital letter"));
}

#[test]
fn official_codes_and_country_cannot_change() {
    let old = municipality(ALVITO);
    let mut new = old.clone();
    new.spec.istat_code = Some("060011".into());
    assert!(
        errors_of(validate_cel_update(&new, &old)).contains("istatCode cannot be changed once set")
    );

    let old = municipality(LUGANO);
    let mut new = old.clone();
    new.spec.bfs_number = Some(5113);
    assert!(
        errors_of(validate_cel_update(&new, &old)).contains("bfsNumber cannot be changed once set")
    );

    // Changing what may change passes.
    let mut new = old.clone();
    new.spec.display_name = "Città di Lugano".into();
    assert_eq!(errors_of(validate_cel_update(&new, &old)), "");
}

#[test]
fn negative_quota_is_refused() {
    let mut m = municipality(ALVITO);
    m.spec.quota.cpu = k8s_openapi::apimachinery::pkg::api::resource::Quantity("-1".into());
    assert!(errors_of(validate_cel(&m)).contains("non-negative quantity"));
}

#[test]
fn valid_service_passes() {
    assert_eq!(errors_of(validate_cel(&service(SIT))), "");
}

#[test]
fn image_needs_a_pinned_tag_or_digest() {
    for image in [
        "nginx",
        "registry.example:5000/app",
        "nginx:latest",
        "nginx@sha256:abc",
    ] {
        let mut s = service(SIT);
        s.spec.template.image = image.into();
        assert!(
            !errors_of(validate_cel(&s)).is_empty(),
            "{image} should be refused"
        );
    }
    for image in [
        "nginx:1.27",
        "registry.example:5000/team/app:2.0.1",
        "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let mut s = service(SIT);
        s.spec.template.image = image.into();
        assert_eq!(errors_of(validate_cel(&s)), "", "{image} should pass");
    }
}

#[test]
fn unknown_placeholders_are_refused() {
    let mut s = service(SIT);
    s.spec.template.env[0].value = Some("{{ municipality.mayor }}".into());
    assert!(errors_of(validate_cel(&s)).contains("unknown placeholder"));
    // Braces that are no placeholder are fine.
    s.spec.template.env[0].value = Some("{\"json\": {\"a\": 1}}".into());
    assert_eq!(errors_of(validate_cel(&s)), "");
}

#[test]
fn dedicated_ingress_host_must_name_the_comune() {
    let mut s = service(SIT);
    s.spec.ingress.as_mut().expect("fixture has ingress").host = "sit.example.org".into();
    assert!(errors_of(validate_cel(&s)).contains("must contain {{ municipality.name }}"));
}

#[test]
fn tenancy_cannot_change() {
    let old = service(SIT);
    let mut new = old.clone();
    new.spec.tenancy = consorzio_api::Tenancy::Shared;
    new.spec.ingress = None;
    assert!(errors_of(validate_cel_update(&new, &old)).contains("tenancy cannot be changed"));
}

#[test]
fn access_is_for_the_comunes_people_not_the_clusters_reserved_names() {
    for name in [
        "system:authenticated",
        "system:unauthenticated",
        "system:anonymous",
        "system:masters",
        "system:serviceaccounts",
        "system:serviceaccount:kube-system:default",
    ] {
        let mut m = municipality(ALVITO);
        m.spec.access.viewers = vec![consorzio_api::Subject {
            kind: consorzio_api::SubjectKind::Group,
            name: name.into(),
        }];
        assert!(
            errors_of(validate_cel(&m)).contains("access is for the comune's own users and groups"),
            "{name} should be refused"
        );
    }
    let mut m = municipality(ALVITO);
    m.spec.access.admins = vec![consorzio_api::Subject {
        kind: consorzio_api::SubjectKind::User,
        name: "system-admin@alvito.example.it".into(),
    }];
    assert_eq!(errors_of(validate_cel(&m)), "");
}

#[test]
fn a_service_name_must_be_a_service_name() {
    let mut s = service(SIT);
    s.metadata.name = Some("1sit".into());
    assert!(errors_of(validate_cel(&s)).contains("starting with a letter"));
    s.metadata.name = Some("sit-2".into());
    assert_eq!(errors_of(validate_cel(&s)), "");
}
