//! Which comuni a SharedService serves: those it names, and those its selector matches on the
//! Municipality's labels and the labels derived from its spec.

use consorzio_api::{Municipality, SharedService};
use kube::{
    ResourceExt,
    core::{Expression, Selector},
};

use super::municipality::municipality_label;

/// Whether a service is offered to a comune: named in `municipalities.names`, or matching
/// `municipalities.selector` on the Municipality's labels plus those derived from its spec
/// (`consorzio.io/union`, `consorzio.io/country`, ...).
pub fn selects(s: &SharedService, m: &Municipality) -> bool {
    Selection::new(s).matches(m)
}

/// A service's choice of comuni, read once to be matched against many.
#[derive(Debug)]
pub struct Selection<'a> {
    names: &'a [String],
    /// `None`: no selector. `Some(None)`: a malformed one (the API server refuses them; should
    /// one get through, it selects nothing).
    selector: Option<Option<Vec<Expression>>>,
}

impl<'a> Selection<'a> {
    pub fn new(s: &'a SharedService) -> Self {
        let selection = &s.spec.municipalities;
        Selection {
            names: &selection.names,
            selector: selection.selector.as_ref().map(|sel| {
                Selector::try_from(sel.clone())
                    .ok()
                    .map(|sel| sel.into_iter().collect())
            }),
        }
    }

    /// Whether the comune is chosen. Its labels are looked up one by one, as the selector asks
    /// for them: building them all for every comune of every pass took a tenth of the operator's
    /// CPU in a cold start of 1,000 comuni.
    pub fn matches(&self, m: &Municipality) -> bool {
        let name = m.metadata.name.as_deref().unwrap_or_default();
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        let Some(Some(selector)) = &self.selector else {
            return false;
        };
        // The labels derived from the spec take precedence over the Municipality's own.
        let label = |key: &str| municipality_label(m, key).or_else(|| m.labels().get(key).cloned());
        selector.iter().all(|expression| match expression {
            Expression::In(key, values) => label(key).is_some_and(|v| values.contains(&v)),
            Expression::NotIn(key, values) => label(key).is_none_or(|v| !values.contains(&v)),
            Expression::Equal(key, value) => label(key).as_ref() == Some(value),
            Expression::NotEqual(key, value) => label(key).as_ref() != Some(value),
            Expression::Exists(key) => label(key).is_some(),
            Expression::DoesNotExist(key) => label(key).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;
    use crate::render::fixtures::{SITO, comune, service};

    #[test]
    fn selection_by_union_label_names_and_expressions() {
        let s = service(SITO);
        assert!(selects(&s, &comune("perosa", "canavese-digitale")));
        assert!(!selects(&s, &comune("vische", "altro")));
        let mut by_name = s.clone();
        by_name.spec.municipalities.selector = None;
        by_name.spec.municipalities.names = vec!["vische".into()];
        assert!(selects(&by_name, &comune("vische", "altro")));
        let mut by_expression = s.clone();
        by_expression.spec.municipalities.selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "area".into(),
                operator: "In".into(),
                values: Some(vec!["canavese".into()]),
            }]),
            ..Default::default()
        });
        assert!(
            selects(&by_expression, &comune("vische", "altro")),
            "the Municipality's own labels count"
        );
    }

    #[test]
    fn selection_matches_as_a_selector_on_all_the_comune_labels_would() {
        use kube::core::SelectorExt;
        let requirement = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let requirements = [
            requirement("consorzio.io/union", "In", &["canavese-digitale", "x"]),
            requirement("consorzio.io/union", "NotIn", &["canavese-digitale"]),
            requirement("consorzio.io/region", "In", &["piemonte"]),
            requirement("consorzio.io/canton", "NotIn", &["TI"]),
            requirement("area", "In", &["canavese"]),
            requirement("area", "Exists", &[]),
            requirement("consorzio.io/canton", "Exists", &[]),
            requirement("consorzio.io/canton", "DoesNotExist", &[]),
            requirement("consorzio.io/country", "DoesNotExist", &[]),
        ];
        let mut s = service(SITO);
        let comuni = [
            comune("perosa", "canavese-digitale"),
            comune("vische", "altro"),
        ];
        for (i, first) in requirements.iter().enumerate() {
            for second in &requirements[i..] {
                let selector = LabelSelector {
                    match_expressions: Some(vec![first.clone(), second.clone()]),
                    match_labels: Some([("consorzio.io/country".into(), "IT".into())].into()),
                };
                s.spec.municipalities.selector = Some(selector.clone());
                let reference = Selector::try_from(selector).unwrap();
                for m in &comuni {
                    let mut labels = m.labels().clone();
                    labels.extend(crate::render::municipality_labels(m));
                    assert_eq!(
                        selects(&s, m),
                        reference.matches(&labels),
                        "{} with {first:?} and {second:?}",
                        m.name_any()
                    );
                }
            }
        }
    }
}
