//! Which of the partner's buildings a message means (pure; the buildings come
//! from the projection of CRM's buildings).
//!
//! - No building named: the partner's only building, if there is exactly one.
//! - A name: compared after folding case, spacing and punctuation; an exact
//!   match wins, then one containing the other ("Sunrise" for "Sunrise
//!   Apartments"), then the closest by Damerau-Levenshtein distance within a
//!   small budget (one edit per five characters, at least one). Two equally good
//!   candidates, or none, is an answer listing the partner's buildings, never a
//!   guess.

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Building {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    One(Building),
    /// The partner looks after no building at all.
    None,
    /// Say which (no name given, several buildings), or the name matched none or
    /// several.
    Ask {
        named: Option<String>,
    },
}

/// Lowercase alphanumerics and single spaces.
pub fn fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn unique(mut c: Vec<&Building>) -> Option<&Building> {
    c.dedup_by_key(|b| b.id);
    (c.len() == 1).then(|| c[0])
}

pub fn resolve(named: Option<&str>, buildings: &[Building]) -> Resolved {
    if buildings.is_empty() {
        return Resolved::None;
    }
    let Some(named) = named else {
        return match buildings {
            [only] => Resolved::One(only.clone()),
            _ => Resolved::Ask { named: None },
        };
    };
    let ask = || Resolved::Ask {
        named: Some(named.to_string()),
    };
    let want = fold(named);
    if want.is_empty() {
        return ask();
    }
    let folded: Vec<(String, &Building)> = buildings.iter().map(|b| (fold(&b.name), b)).collect();

    let exact: Vec<&Building> = folded
        .iter()
        .filter(|(f, _)| *f == want)
        .map(|(_, b)| *b)
        .collect();
    if !exact.is_empty() {
        return unique(exact).map_or_else(ask, |b| Resolved::One(b.clone()));
    }
    // Word-boundary containment either way, so "sunrise" finds "sunrise apartments"
    // but "rise" does not.
    let padded = format!(" {want} ");
    let contains: Vec<&Building> = folded
        .iter()
        .filter(|(f, _)| format!(" {f} ").contains(&padded) || padded.contains(&format!(" {f} ")))
        .map(|(_, b)| *b)
        .collect();
    if !contains.is_empty() {
        return unique(contains).map_or_else(ask, |b| Resolved::One(b.clone()));
    }
    let budget = (want.chars().count() / 5).max(1);
    let scored: Vec<(usize, &Building)> = folded
        .iter()
        .map(|(f, b)| (strsim::damerau_levenshtein(f, &want), *b))
        .filter(|(d, _)| *d <= budget)
        .collect();
    let Some(best) = scored.iter().map(|(d, _)| *d).min() else {
        return ask();
    };
    let at_best: Vec<&Building> = scored
        .iter()
        .filter(|(d, _)| *d == best)
        .map(|(_, b)| *b)
        .collect();
    unique(at_best).map_or_else(ask, |b| Resolved::One(b.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str) -> Building {
        Building {
            id: Uuid::new_v4(),
            name: name.into(),
        }
    }

    #[test]
    fn no_name_means_the_only_building() {
        let one = vec![b("Sunrise Apartments")];
        assert_eq!(resolve(None, &one), Resolved::One(one[0].clone()));
        let two = vec![b("Sunrise Apartments"), b("Baraka Court")];
        assert_eq!(resolve(None, &two), Resolved::Ask { named: None });
        assert_eq!(resolve(None, &[]), Resolved::None);
        assert_eq!(resolve(Some("Sunrise"), &[]), Resolved::None);
    }

    #[test]
    fn names_match_tolerating_case_spacing_and_small_typos() {
        let all = vec![
            b("Sunrise Apartments"),
            b("Baraka Court"),
            b("Plot 42, Ngong Rd"),
        ];
        let one = |s: &str| match resolve(Some(s), &all) {
            Resolved::One(x) => x.name,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(one("sunrise   APARTMENTS"), "Sunrise Apartments");
        assert_eq!(one("Sunrise"), "Sunrise Apartments");
        assert_eq!(one("Sunrse Apartmnts"), "Sunrise Apartments");
        assert_eq!(one("baraka-court"), "Baraka Court");
        assert_eq!(one("Barak Court"), "Baraka Court");
        assert_eq!(one("plot 42 ngong rd"), "Plot 42, Ngong Rd");
    }

    #[test]
    fn unknown_or_ambiguous_names_are_asked_not_guessed() {
        let all = vec![b("Sunrise A"), b("Sunrise B"), b("Baraka Court")];
        for s in ["Sunrise", "Sunrise C", "Kilimani Heights", "rise", "!!!"] {
            assert_eq!(
                resolve(Some(s), &all),
                Resolved::Ask {
                    named: Some(s.into())
                },
                "{s}"
            );
        }
    }
}
