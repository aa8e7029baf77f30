//! Filling a SharedService's placeholders (`{{ municipality.name }}`) from a Municipality.

use consorzio_api::{Country, Municipality, PLACEHOLDERS};
use kube::ResourceExt;

use super::{Config, municipality::namespace_name};

/// A placeholder that cannot be filled for a comune.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The placeholder is not one of [`PLACEHOLDERS`].
    #[error("unknown placeholder {{{{ municipality.{0} }}}}: use one of {known}", known = PLACEHOLDERS.join(", "))]
    Unknown(String),
    /// The comune has no value for it (e.g. `istatCode` of a Swiss Gemeinde, `union` of a comune
    /// in no union).
    #[error("{{{{ municipality.{placeholder} }}}} has no value for this comune")]
    Empty {
        /// The placeholder's field.
        placeholder: String,
        /// The comune.
        municipality: String,
    },
    /// `{{` without a matching `}}`.
    #[error("unclosed {{{{ in {0:?}")]
    Unclosed(String),
}

/// The value of one placeholder field for a comune.
fn value_of(
    field: &str,
    m: &Municipality,
    config: &Config,
) -> Result<Option<String>, TemplateError> {
    let spec = &m.spec;
    Ok(match field {
        "name" => Some(m.name_any()),
        "displayName" => Some(spec.display_name.clone()),
        "namespace" => Some(namespace_name(m, config)),
        "code" => match spec.country {
            Country::IT => spec.istat_code.clone(),
            Country::CH => spec.bfs_number.map(|n| n.to_string()),
        },
        "country" => Some(format!("{:?}", spec.country)),
        "istatCode" => spec.istat_code.clone(),
        "belfioreCode" => spec.belfiore_code.clone(),
        "province" => spec.province.clone(),
        "region" => spec.region.clone(),
        "bfsNumber" => spec.bfs_number.map(|n| n.to_string()),
        "canton" => spec.canton.map(|c| format!("{c:?}")),
        "union" => spec.union.clone(),
        other => return Err(TemplateError::Unknown(other.to_string())),
    })
}

/// `text` with every `{{ municipality.<field> }}` replaced by the comune's value.
pub fn fill(text: &str, m: &Municipality, config: &Config) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| TemplateError::Unclosed(text.to_string()))?;
        let inner = after[..end].trim();
        let field = inner
            .strip_prefix("municipality.")
            .ok_or_else(|| TemplateError::Unknown(inner.to_string()))?;
        match value_of(field, m, config)? {
            Some(value) if !value.is_empty() => out.push_str(&value),
            _ => {
                return Err(TemplateError::Empty {
                    placeholder: field.to_string(),
                    municipality: m.name_any(),
                });
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alvito() -> Municipality {
        serde_yaml::from_str(
            r#"
apiVersion: consorzio.io/v1alpha1
kind: Municipality
metadata: {name: alvito}
spec: {displayName: Alvito, country: IT, istatCode: "060004", belfioreCode: A244, province: FR, region: Lazio}
"#,
        )
        .unwrap()
    }

    #[test]
    fn fills_every_documented_placeholder_it_has_a_value_for() {
        let config = Config::default();
        let text = "{{ municipality.name }}.sit.example.org|{{municipality.displayName}}|{{ municipality.code }}|{{ municipality.namespace }}";
        assert_eq!(
            fill(text, &alvito(), &config).unwrap(),
            "alvito.sit.example.org|Alvito|060004|comune-alvito"
        );
        for field in PLACEHOLDERS {
            let result = fill(
                &format!("{{{{ municipality.{field} }}}}"),
                &alvito(),
                &config,
            );
            assert!(
                !matches!(result, Err(TemplateError::Unknown(_))),
                "{field} is documented but unknown"
            );
        }
    }

    #[test]
    fn a_placeholder_without_value_names_the_comune() {
        let err = fill("{{ municipality.union }}", &alvito(), &Config::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "{{ municipality.union }} has no value for this comune"
        );
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_errors() {
        let err = fill("{{ municipality.mayor }}", &alvito(), &Config::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown placeholder {{ municipality.mayor }}"),
            "{err}"
        );
        assert!(matches!(
            fill("{{ municipality.name", &alvito(), &Config::default()),
            Err(TemplateError::Unclosed(_))
        ));
        assert_eq!(
            fill("no placeholders {x}", &alvito(), &Config::default()).unwrap(),
            "no placeholders {x}"
        );
    }
}
