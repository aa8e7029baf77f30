//! `Municipality`: one comune (or Swiss Gemeinde), which becomes one isolated namespace.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::MunicipalityStatus;

/// Rule text shared by every quantity of the quota: a valid, non-negative Kubernetes quantity.
const NON_NEGATIVE_QUANTITY: &str =
    "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))";
const NON_NEGATIVE_QUANTITY_MESSAGE: &str =
    "must be a non-negative quantity, such as 500m, 4, 8Gi or 100Gi";

/// A comune served by the consorzio. The operator turns it into the namespace `comune-<name>`
/// with its quota, limits, network policies and access bindings, and keeps them that way.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "consorzio.io",
    version = "v1alpha1",
    kind = "Municipality",
    plural = "municipalities",
    shortname = "mun",
    category = "consorzio",
    status = "MunicipalityStatus",
    derive = "PartialEq",
    doc = "A comune (or Swiss Gemeinde) served by the consorzio: it becomes one isolated namespace.",
    printcolumn(name = "Country", type_ = "string", json_path = ".spec.country"),
    printcolumn(name = "Code", type_ = "string", description = "ISTAT code (IT) or BFS number (CH)", json_path = ".status.code"),
    printcolumn(name = "Union", type_ = "string", json_path = ".spec.union"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Backed Up", type_ = "string", json_path = ".status.conditions[?(@.type==\"BackedUp\")].status"),
    printcolumn(name = "Last Backup", type_ = "date", json_path = ".status.backup.lastSuccessfulTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 55 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 55 characters (lowercase letters, digits and '-', starting and ending with a letter or digit): the comune's namespace is comune-<name>")
)]
#[x_kube(
    validation = Rule::new("self.country != 'IT' || (has(self.istatCode) && has(self.belfioreCode) && has(self.province) && has(self.region))")
        .message("a comune in Italy (country: IT) needs istatCode, belfioreCode, province and region"),
    validation = Rule::new("self.country != 'IT' || (!has(self.bfsNumber) && !has(self.canton))")
        .message("bfsNumber and canton are for Swiss municipalities (country: CH): remove them when country is IT"),
    validation = Rule::new("self.country != 'CH' || (has(self.bfsNumber) && has(self.canton))")
        .message("a Gemeinde in Switzerland (country: CH) needs bfsNumber and canton"),
    validation = Rule::new("self.country != 'CH' || (!has(self.istatCode) && !has(self.belfioreCode) && !has(self.province) && !has(self.region))")
        .message("istatCode, belfioreCode, province and region are for Italian comuni (country: IT): remove them when country is CH"),
)]
#[serde(rename_all = "camelCase")]
pub struct MunicipalitySpec {
    /// The comune's name as people write it, e.g. "San Donato Val di Comino".
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,

    /// The country: IT (Italy) or CH (Switzerland). It decides which official codes are required.
    /// Cannot be changed once set.
    #[x_kube(validation = Rule::new("self == oldSelf").message("country cannot be changed once set"))]
    pub country: Country,

    /// IT only: the ISTAT code of the comune, 6 digits as a string (e.g. "060066").
    /// Cannot be changed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.matches('^[0-9]{6}$')").message("istatCode must be exactly 6 digits, e.g. \"060066\" (write it as a string, quoted)"),
        validation = Rule::new("self == oldSelf").message("istatCode cannot be changed once set")
    )]
    pub istat_code: Option<String>,

    /// IT only: the cadastral (Belfiore) code, a capital letter and 3 digits (e.g. "H785").
    /// Cannot be changed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Z][0-9]{3}$')").message("belfioreCode must be a capital letter followed by 3 digits, e.g. \"H785\""),
        validation = Rule::new("self == oldSelf").message("belfioreCode cannot be changed once set")
    )]
    pub belfiore_code: Option<String>,

    /// IT only: the province's two-letter abbreviation (sigla), e.g. "FR".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{2}$')").message("province must be the two capital letters of the province, e.g. \"FR\""))]
    pub province: Option<String>,

    /// IT only: the region, e.g. "Lazio".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// CH only: the BFS (Federal Statistical Office) number of the Gemeinde, 1 to 9999.
    /// Cannot be changed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9999))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("bfsNumber cannot be changed once set"))]
    pub bfs_number: Option<i32>,

    /// CH only: the canton's two-letter code, e.g. "TI".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canton: Option<Canton>,

    /// Number of inhabitants, for reports and for sharing costs fairly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub population: Option<i64>,

    /// The union or consortium of comuni this one belongs to (a DNS label, e.g.
    /// "valle-di-comino"). Shared services can select comuni by union.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) <= 63 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("union must be a DNS label: at most 63 lowercase letters, digits and '-', e.g. \"valle-di-comino\""))]
    pub union: Option<String>,

    /// People to contact about this comune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Contacts>,

    /// Who may work in the comune's namespace.
    #[serde(default)]
    pub access: Access,

    /// The resources the comune's namespace may use in total.
    #[serde(default)]
    pub quota: Quota,

    /// Network options of the comune's namespace.
    #[serde(default)]
    pub network: Network,

    /// How sensitive the comune's data is, as Italy's national cybersecurity agency (ACN)
    /// classifies public data: ordinary, critical or strategic.
    #[serde(default)]
    pub data_classification: DataClassification,

    /// How the comune's namespace is backed up (Velero); by default as its dataClassification
    /// says: ordinary daily, kept 30 days; critical every 6 hours, kept 90 days; strategic
    /// hourly, kept 365 days.
    #[serde(default)]
    pub backup: BackupPolicy,

    /// What happens to the namespace and its data when this Municipality is deleted:
    /// Retain (default) keeps them; Delete removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Stops every workload of the comune (no pods may run) while keeping all its data.
    #[serde(default)]
    pub suspended: bool,
}

/// The country of a municipality.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Country {
    /// Italy.
    IT,
    /// Switzerland.
    CH,
}

/// The 26 Swiss cantons.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs)]
pub enum Canton {
    AG,
    AI,
    AR,
    BE,
    BL,
    BS,
    FR,
    GE,
    GL,
    GR,
    JU,
    LU,
    NE,
    NW,
    OW,
    SG,
    SH,
    SO,
    SZ,
    TG,
    TI,
    UR,
    VD,
    VS,
    ZG,
    ZH,
}

/// People to contact about a comune.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Contacts {
    /// The digital-transition officer (Responsabile per la Transizione al Digitale); one RTD may
    /// serve every comune of a union.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtd: Option<Contact>,
}

/// A person.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct Contact {
    /// Full name.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// E-mail address.
    #[x_kube(validation = Rule::new("self.matches('^[^@\\\\s]+@[^@\\\\s]+\\\\.[^@\\\\s]+$')").message("email must be an e-mail address, e.g. rtd@comune.example.it"))]
    pub email: String,
}

/// Who may work in the comune's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Access {
    /// Users or groups who may run and manage workloads, services, configuration, secrets and
    /// volumes in the namespace (but not its quota, network policies or the namespace itself).
    #[serde(default)]
    pub admins: Vec<Subject>,
    /// Users or groups who may read the namespace's workloads and configuration (not secrets).
    #[serde(default)]
    pub viewers: Vec<Subject>,
}

/// A user or group, as the cluster's authentication names them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct Subject {
    /// User or Group.
    pub kind: SubjectKind,
    /// The user's or group's name, e.g. "alice@comune.example.it" or "sit-bellinzona". Names the
    /// cluster reserves ("system:…": every authenticated or anonymous user, service accounts,
    /// nodes, cluster administrators) are refused: a comune's access is for its own people.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.startsWith('system:')").message("access is for the comune's own users and groups: names the cluster reserves, starting with 'system:' (system:authenticated, system:anonymous, service accounts, nodes), are refused"))]
    pub name: String,
}

/// The kind of an RBAC subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    /// A user.
    User,
    /// A group of users.
    Group,
}

/// The resources a comune's namespace may use in total. Quantities use Kubernetes notation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// CPU, in cores (e.g. 4 or 2500m): the sum of requests and of limits of all pods.
    #[serde(default = "default_cpu")]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_QUANTITY).message(NON_NEGATIVE_QUANTITY_MESSAGE))]
    pub cpu: Quantity,
    /// Memory (e.g. 8Gi): the sum of requests and of limits of all pods.
    #[serde(default = "default_memory")]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_QUANTITY).message(NON_NEGATIVE_QUANTITY_MESSAGE))]
    pub memory: Quantity,
    /// Persistent storage (e.g. 100Gi): the sum of all volume claims.
    #[serde(default = "default_storage")]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_QUANTITY).message(NON_NEGATIVE_QUANTITY_MESSAGE))]
    pub storage: Quantity,
    /// How many pods may exist at once.
    #[serde(default = "default_pods")]
    #[schemars(range(min = 0, max = 10000))]
    pub pods: i32,
}

fn default_cpu() -> Quantity {
    Quantity("4".into())
}
fn default_memory() -> Quantity {
    Quantity("8Gi".into())
}
fn default_storage() -> Quantity {
    Quantity("100Gi".into())
}
fn default_pods() -> i32 {
    50
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            cpu: default_cpu(),
            memory: default_memory(),
            storage: default_storage(),
            pods: default_pods(),
        }
    }
}

/// Network options of the comune's namespace. Traffic is denied by default, except DNS, traffic
/// inside the namespace, from the ingress controller, and to subscribed shared services.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Lets the comune's pods open connections to the internet. Never to other comuni.
    #[serde(default)]
    pub allow_internet_egress: bool,
}

/// How sensitive a comune's data is (ACN classification of public data and services).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataClassification {
    /// Data whose compromise causes no harm to the State's functions (the default).
    #[default]
    Ordinary,
    /// Data whose compromise could harm the functions of the State or public services.
    Critical,
    /// Data whose compromise could harm national security.
    Strategic,
}

/// When a comune's data is backed up and how long each backup is kept. Unset fields follow its
/// dataClassification.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicy {
    /// When backups are taken: a cron expression of five fields, in UTC, e.g. "30 2 * * *"
    /// (daily at 02:30). By default a time of its own (comuni do not all start at once): daily
    /// between 01:00 and 04:59 (ordinary), every 6 hours (critical), hourly (strategic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([*]|([0-5]?[0-9])(-([0-5]?[0-9]))?)(/[1-9][0-9]*)?(,([*]|([0-5]?[0-9])(-([0-5]?[0-9]))?)(/[1-9][0-9]*)?)* ([*]|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[1-9][0-9]*)?(,([*]|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[1-9][0-9]*)?)* ([*]|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[1-9][0-9]*)?(,([*]|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[1-9][0-9]*)?)* ([*]|(0?[1-9]|1[0-2])(-(0?[1-9]|1[0-2]))?)(/[1-9][0-9]*)?(,([*]|(0?[1-9]|1[0-2])(-(0?[1-9]|1[0-2]))?)(/[1-9][0-9]*)?)* ([*]|[0-7](-[0-7])?)(/[1-9][0-9]*)?(,([*]|[0-7](-[0-7])?)(/[1-9][0-9]*)?)*$')").message("backup.schedule must be a cron expression of five fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-7), each '*', a number or a range, with an optional /step, or a list of them, e.g. \"30 2 * * *\" or \"0 */6 * * 1-5\""))]
    #[schemars(length(max = 200))]
    pub schedule: Option<String>,
    /// How many days each backup is kept: by default 30 (ordinary), 90 (critical) or 365
    /// (strategic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: Option<i32>,
}

/// What happens to a comune's namespace when its Municipality is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the namespace and all its data, marked `consorzio.io/orphaned` (the default).
    /// Applying the Municipality again adopts it.
    #[default]
    Retain,
    /// Delete the namespace and everything in it, volumes included.
    Delete,
}
