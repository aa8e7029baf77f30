//! Reading Kubernetes quantities ("500m", "8Gi", "1e3") as numbers, for metrics and for telling
//! whether two spellings of a quantity mean the same ("1024Mi" and "1Gi").

/// The value of a quantity, or `None` if `text` is not one.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

/// Whether two strings are the same quantity written differently.
pub fn same(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_suffix() {
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("4"), Some(4.0));
        assert_eq!(parse("8Gi"), Some(8.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1k"), Some(1000.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("lots"), None);
        assert_eq!(parse("1Xi"), None);
    }

    #[test]
    fn same_quantity_in_other_words() {
        assert!(same("1024Mi", "1Gi"));
        assert!(same("1.5", "1500m"));
        assert!(!same("1", "2"));
        assert!(!same("a", "a"));
    }
}
