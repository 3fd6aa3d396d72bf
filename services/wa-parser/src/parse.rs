//! The lead message format (README.md "Message format"): a pure function from the
//! text a caretaker typed to a lead, a request for help, or the list of what is
//! wrong. No I/O: the building is resolved later against the partner's buildings.
//!
//! Accepted, case-insensitively, with any extra spaces and blank lines:
//!
//! - labelled, one field per line (or several on a line, separated by `,` or `;`):
//!   `Name: Jane Wanjiku` / `Phone: 0712 345 678` / `Unit: B4` / `Building: Sunrise` /
//!   `Notes: evenings`, with Swahili labels beside English (`Jina`, `Simu`,
//!   `Nyumba`, `Jengo`, `Maelezo`) and `:`, `=`, `-` or just a space after the label;
//! - one line after the keyword `LEAD` (or `MTEJA`), fields in order separated by
//!   commas: `LEAD Jane Wanjiku, 0712345678, B4[, building][, notes]`; the phone
//!   number may stand anywhere, and without commas the words before the number
//!   are the name, the next word the unit and the rest the building;
//! - `HELP` (`MSAADA`, `?`) asks for the format.

use isp_platform::phone;

pub const MAX_NAME: usize = 100;
pub const MAX_UNIT: usize = 20;
pub const MAX_BUILDING: usize = 100;

/// The example every error reply and the help text show.
pub const EXAMPLE: &str = "LEAD Jane Wanjiku, 0712345678, B4, Sunrise Apartments";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    pub name: String,
    /// E.164.
    pub phone: String,
    pub unit: String,
    pub building: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Lead(Lead),
    Help,
    /// What is wrong, each a sentence for the partner.
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Name,
    Phone,
    Unit,
    Building,
    Notes,
}

/// English and Swahili labels (lowercase; multi-word ones first so "house number"
/// wins over "house").
const LABELS: &[(&str, Label)] = &[
    ("phone number", Label::Phone),
    ("namba ya simu", Label::Phone),
    ("house number", Label::Unit),
    ("unit number", Label::Unit),
    ("door number", Label::Unit),
    ("nambari ya nyumba", Label::Unit),
    ("building name", Label::Building),
    ("jina la jengo", Label::Building),
    ("full name", Label::Name),
    ("majina", Label::Name),
    ("jina", Label::Name),
    ("name", Label::Name),
    ("simu", Label::Phone),
    ("phone", Label::Phone),
    ("tel", Label::Phone),
    ("mobile", Label::Phone),
    ("namba", Label::Phone),
    ("nyumba", Label::Unit),
    ("chumba", Label::Unit),
    ("unit", Label::Unit),
    ("house", Label::Unit),
    ("hse", Label::Unit),
    ("apt", Label::Unit),
    ("door", Label::Unit),
    ("room", Label::Unit),
    ("jengo", Label::Building),
    ("building", Label::Building),
    ("bldg", Label::Building),
    ("plot", Label::Building),
    ("maelezo", Label::Notes),
    ("maoni", Label::Notes),
    ("notes", Label::Notes),
    ("note", Label::Notes),
    ("comment", Label::Notes),
    ("comments", Label::Notes),
];

const KEYWORDS: &[&str] = &["new lead", "lead", "mteja mpya", "mteja"];
const HELP: &[&str] = &["help", "msaada", "saidia", "?", "menu"];

/// Collapses runs of whitespace to one space and trims.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `s` starts with `word` (ASCII case-insensitive) followed by a non-alphanumeric
/// character or the end; returns the rest.
fn strip_word<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    if !head.eq_ignore_ascii_case(word) {
        return None;
    }
    let rest = &s[word.len()..];
    match rest.chars().next() {
        None => Some(rest),
        Some(c) if !c.is_alphanumeric() => Some(rest),
        Some(_) => None,
    }
}

/// A labelled piece: `label<sep>value`, where sep is `:`, `=`, `-`, `.` or spaces.
/// A bare label word followed by a space counts only when `loose` (on its own line),
/// so that a name like "Room Wanjiku" inside a comma list is not taken for a unit.
fn labelled(piece: &str, loose: bool) -> Option<(Label, String)> {
    let p = piece.trim_start();
    for (word, label) in LABELS {
        let Some(rest) = strip_word(p, word) else {
            continue;
        };
        let trimmed = rest.trim_start();
        let mut chars = trimmed.chars();
        match chars.next() {
            Some(':' | '=' | '-' | '.') => return Some((*label, squash(chars.as_str()))),
            Some(_) if loose && rest.starts_with(char::is_whitespace) => {
                return Some((*label, squash(trimmed)))
            }
            None if rest.is_empty() || loose => return Some((*label, String::new())),
            _ => {}
        }
    }
    None
}

/// Splits a line at `,` / `;` where what follows starts with a label, so
/// `Name: Jane, Phone: 0712345678, Unit: B4` is three fields but notes may hold
/// commas.
fn split_labelled_line(line: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for piece in line.split([',', ';']) {
        match out.last_mut() {
            Some(prev) if labelled(piece, false).is_none() => {
                prev.push(',');
                prev.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out
}

fn strip_keyword(text: &str) -> (bool, &str) {
    let t = text.trim_start();
    for k in KEYWORDS {
        if let Some(rest) = strip_word(t, k) {
            let rest = rest.trim_start_matches([' ', '\t', ':', '-', ',', ';']);
            return (true, rest);
        }
    }
    (false, t)
}

fn is_phone(s: &str) -> bool {
    phone::normalize(s).is_ok()
}

pub fn parse(text: &str) -> Parsed {
    let squashed = squash(text);
    if squashed.is_empty() {
        return Parsed::Invalid(vec!["The message is empty.".into()]);
    }
    let lower = squashed.to_lowercase();
    if HELP.iter().any(|h| lower == *h) {
        return Parsed::Help;
    }
    let (_keyword, body) = strip_keyword(text);
    let lines: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();

    let mut name = None;
    let mut phone_raw = None;
    let mut unit = None;
    let mut building = None;
    let mut notes: Vec<String> = vec![];
    let mut problems = vec![];

    // A label followed only by a space counts on a message of several lines:
    // on one line "LEAD Room Wanjiku, ..." is a name.
    let loose = lines.len() > 1;
    let any_label = lines.iter().any(|l| {
        split_labelled_line(l)
            .iter()
            .any(|p| labelled(p, loose).is_some_and(|(_, v)| !v.is_empty()))
    });
    if any_label {
        for line in &lines {
            for piece in split_labelled_line(line) {
                match labelled(&piece, loose) {
                    Some((label, value)) => {
                        let slot = match label {
                            Label::Name => &mut name,
                            Label::Phone => &mut phone_raw,
                            Label::Unit => &mut unit,
                            Label::Building => &mut building,
                            Label::Notes => {
                                if !value.is_empty() {
                                    notes.push(value);
                                }
                                continue;
                            }
                        };
                        if slot.is_some() {
                            problems.push(format!(
                                "{} is given twice.",
                                label_name(label)
                            ));
                        } else if !value.is_empty() {
                            *slot = Some(value);
                        }
                    }
                    // An unlabelled line is kept as a note rather than dropped.
                    None => {
                        let v = squash(&piece);
                        if !v.is_empty() {
                            notes.push(v);
                        }
                    }
                }
            }
        }
    } else {
        positional(&lines, &mut name, &mut phone_raw, &mut unit, &mut building, &mut notes);
    }

    let phone = match phone_raw.as_deref() {
        None => {
            problems.push("The phone number is missing.".into());
            None
        }
        Some(p) => match phone::normalize(p) {
            Ok(e164) => Some(e164),
            Err(_) => {
                problems.push(format!("{p:?} is not a phone number we can use."));
                None
            }
        },
    };
    let name = name.map(|n| squash(&n)).filter(|n| !n.is_empty());
    match &name {
        None => problems.push("The customer's name is missing.".into()),
        Some(n) if n.chars().count() > MAX_NAME => {
            problems.push(format!("The name is longer than {MAX_NAME} characters."))
        }
        Some(n) if !n.chars().any(char::is_alphabetic) => {
            problems.push(format!("{n:?} does not look like a name."))
        }
        Some(_) => {}
    }
    let unit = unit.map(|u| squash(&u)).filter(|u| !u.is_empty());
    match &unit {
        None => problems.push("The house or unit number is missing.".into()),
        Some(u) if u.chars().count() > MAX_UNIT => {
            problems.push(format!("The unit {u:?} is longer than {MAX_UNIT} characters."))
        }
        Some(_) => {}
    }
    let building = building.map(|b| squash(&b)).filter(|b| !b.is_empty());
    if building
        .as_ref()
        .is_some_and(|b| b.chars().count() > MAX_BUILDING)
    {
        problems.push(format!(
            "The building name is longer than {MAX_BUILDING} characters."
        ));
    }
    problems.dedup();
    match (name, phone, unit) {
        (Some(name), Some(phone), Some(unit)) if problems.is_empty() => Parsed::Lead(Lead {
            name,
            phone,
            unit,
            building,
            notes: (!notes.is_empty()).then(|| notes.join("; ")),
        }),
        _ => Parsed::Invalid(problems),
    }
}

fn label_name(l: Label) -> &'static str {
    match l {
        Label::Name => "The name",
        Label::Phone => "The phone number",
        Label::Unit => "The unit",
        Label::Building => "The building",
        Label::Notes => "Notes",
    }
}

/// Fields by position: pieces separated by commas, semicolons or line breaks are
/// name, unit, building, notes in that order around the phone number wherever it
/// stands; a single piece is split into words around the phone number.
fn positional(
    lines: &[&str],
    name: &mut Option<String>,
    phone_raw: &mut Option<String>,
    unit: &mut Option<String>,
    building: &mut Option<String>,
    notes: &mut Vec<String>,
) {
    let pieces: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split([',', ';']))
        .map(squash)
        .filter(|p| !p.is_empty())
        .collect();
    if pieces.len() >= 2 {
        let mut rest = vec![];
        for p in pieces {
            if phone_raw.is_none() && is_phone(&p) {
                *phone_raw = Some(p);
            } else {
                rest.push(p);
            }
        }
        if phone_raw.is_none() {
            // Nothing parses as a number: the second piece is where it belongs,
            // so the partner is told that this is not a usable number.
            if rest.len() >= 2 && rest[1].chars().any(|c| c.is_ascii_digit()) {
                *phone_raw = Some(rest.remove(1));
            }
        }
        let mut it = rest.into_iter();
        *name = it.next();
        *unit = it.next();
        *building = it.next();
        notes.extend(it);
        return;
    }
    let Some(only) = pieces.into_iter().next() else {
        return;
    };
    let words: Vec<&str> = only.split(' ').collect();
    // The longest run of words (up to 4: "0712 345 678", "+254 712 345 678") that
    // is a valid number.
    let mut found = None;
    'outer: for start in 0..words.len() {
        for len in (1..=4.min(words.len() - start)).rev() {
            let candidate = words[start..start + len].join(" ");
            if candidate.chars().any(|c| c.is_ascii_digit()) && is_phone(&candidate) {
                found = Some((start, len, candidate));
                break 'outer;
            }
        }
    }
    match found {
        Some((start, len, number)) => {
            *phone_raw = Some(number);
            let before = words[..start].join(" ");
            if !before.is_empty() {
                *name = Some(before);
            }
            let after = &words[start + len..];
            if let Some(u) = after.first() {
                *unit = Some((*u).to_string());
            }
            if after.len() > 1 {
                *building = Some(after[1..].join(" "));
            }
        }
        None => *name = Some(only),
    }
}

/// The help text: the format with examples, in both languages.
pub fn help_text() -> String {
    format!(
        "To send a lead, reply with the customer's name, phone number and house/unit number (and the building if you look after more than one):\n\
         {EXAMPLE}\n\
         or, one per line:\n\
         Name: Jane Wanjiku\nPhone: 0712345678\nUnit: B4\nBuilding: Sunrise Apartments\nNotes: call after 6pm\n\
         Kiswahili: Jina / Simu / Nyumba / Jengo / Maelezo."
    )
}

/// The reply to a message that could not be read.
pub fn problems_text(problems: &[String]) -> String {
    format!(
        "We could not read your lead: {} Send it like this: {EXAMPLE} (send HELP for the full format).",
        problems.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lead(text: &str) -> Lead {
        match parse(text) {
            Parsed::Lead(l) => l,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Parsed::Invalid(p) => p,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn one_line_form() {
        let l = lead("LEAD Jane Wanjiku, 0712345678, B4");
        assert_eq!(l.name, "Jane Wanjiku");
        assert_eq!(l.phone, "+254712345678");
        assert_eq!(l.unit, "B4");
        assert_eq!(l.building, None);
        assert_eq!(l.notes, None);
        let l = lead("  lead   Jane   Wanjiku ,+254 712 345 678;  b4 , Sunrise  Apartments, call after 6, not Sundays ");
        assert_eq!(l.name, "Jane Wanjiku");
        assert_eq!(l.unit, "b4");
        assert_eq!(l.building.as_deref(), Some("Sunrise Apartments"));
        assert_eq!(l.notes.as_deref(), Some("call after 6; not Sundays"));
        // The number may stand first.
        let l = lead("Lead: 0712-345-678, Jane Wanjiku, B4");
        assert_eq!((l.name.as_str(), l.unit.as_str()), ("Jane Wanjiku", "B4"));
        // Swahili keyword, no keyword at all.
        assert_eq!(lead("MTEJA Juma Otieno, 0110123456, 12").phone, "+254110123456");
        assert_eq!(lead("Juma Otieno, 254712345678, 12").name, "Juma Otieno");
    }

    #[test]
    fn one_line_without_commas() {
        let l = lead("LEAD Jane Wanjiku 0712 345 678 B4 Sunrise Apartments");
        assert_eq!(l.name, "Jane Wanjiku");
        assert_eq!(l.phone, "+254712345678");
        assert_eq!(l.unit, "B4");
        assert_eq!(l.building.as_deref(), Some("Sunrise Apartments"));
    }

    #[test]
    fn labelled_multi_line_form() {
        let l = lead("Name: Jane Wanjiku\nPhone: 0712345678\nUnit: B4\nBuilding: Sunrise\nNotes: evenings, weekends");
        assert_eq!(l.name, "Jane Wanjiku");
        assert_eq!(l.phone, "+254712345678");
        assert_eq!(l.unit, "B4");
        assert_eq!(l.building.as_deref(), Some("Sunrise"));
        assert_eq!(l.notes.as_deref(), Some("evenings, weekends"));
        // Keyword line, blank lines, odd spacing, other separators and case.
        let l = lead("NEW LEAD\n\n  NAME = Jane   Wanjiku \n\n phone number - 0712 345 678\nHOUSE NUMBER: b4\n");
        assert_eq!((l.name.as_str(), l.phone.as_str(), l.unit.as_str()), ("Jane Wanjiku", "+254712345678", "b4"));
        // Labels without a separator on their own line.
        let l = lead("name Jane Wanjiku\nphone 0712345678\nunit B4");
        assert_eq!(l.unit, "B4");
        // Several labels on one line.
        let l = lead("Name: Jane, Phone: 0712345678, Unit: B4, Notes: gate 2, blue door");
        assert_eq!((l.name.as_str(), l.unit.as_str()), ("Jane", "B4"));
        assert_eq!(l.notes.as_deref(), Some("gate 2, blue door"));
    }

    #[test]
    fn swahili_labels() {
        let l = lead("Jina: Amina Hassan\nSimu: 0722 000 111\nNyumba: 7C\nJengo: Baraka Court\nMaelezo: anataka 10Mbps");
        assert_eq!(l.name, "Amina Hassan");
        assert_eq!(l.phone, "+254722000111");
        assert_eq!(l.unit, "7C");
        assert_eq!(l.building.as_deref(), Some("Baraka Court"));
        assert_eq!(l.notes.as_deref(), Some("anataka 10Mbps"));
        let l = lead("MTEJA\nmajina: Amina Hassan\nnamba ya simu: 0722000111\nchumba: 7C");
        assert_eq!(l.unit, "7C");
    }

    #[test]
    fn help() {
        for t in ["HELP", " help ", "Msaada", "?"] {
            assert_eq!(parse(t), Parsed::Help, "{t}");
        }
        assert!(help_text().contains(EXAMPLE));
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let p = problems("LEAD");
        assert_eq!(p.len(), 3, "{p:?}");
        let p = problems("LEAD Jane Wanjiku, 0712, B4");
        assert_eq!(p, vec!["\"0712\" is not a phone number we can use.".to_string()]);
        let p = problems("Name: Jane\nUnit: B4");
        assert_eq!(p, vec!["The phone number is missing.".to_string()]);
        let p = problems("Phone: 0712345678");
        assert!(p.iter().any(|s| s.contains("name")) && p.iter().any(|s| s.contains("unit")), "{p:?}");
        let p = problems("Name: Jane\nName: June\nPhone: 0712345678\nUnit: 1");
        assert_eq!(p, vec!["The name is given twice.".to_string()]);
        let p = problems("");
        assert_eq!(p, vec!["The message is empty.".to_string()]);
        let p = problems(&format!("LEAD Jane, 0712345678, {}", "9".repeat(30)));
        assert!(p[0].contains("longer"), "{p:?}");
        assert!(problems_text(&p).contains(EXAMPLE));
    }

    #[test]
    fn a_name_made_of_digits_is_refused() {
        let p = problems("LEAD 12345, 0712345678, B4");
        assert!(p[0].contains("does not look like a name"), "{p:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_never_panics_and_never_yields_an_incomplete_lead(text in "\\PC{0,200}") {
            if let Parsed::Lead(l) = parse(&text) {
                prop_assert!(!l.name.trim().is_empty());
                prop_assert!(!l.unit.trim().is_empty());
                prop_assert_eq!(phone::normalize(&l.phone), Ok(l.phone.clone()));
            }
        }

        #[test]
        fn text_that_looks_like_a_message_never_yields_an_incomplete_lead(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("LEAD".to_string()), Just("Name:".to_string()), Just("Jina".to_string()),
                    Just("Simu:".to_string()), Just("Unit".to_string()), Just("nyumba -".to_string()),
                    Just(",".to_string()), Just("\n".to_string()), Just("0712345678".to_string()),
                    Just("0712 345".to_string()), Just("+254".to_string()), "[A-Za-z0-9]{1,8}",
                ],
                0..14,
            )
        ) {
            let text = parts.join(" ");
            if let Parsed::Lead(l) = parse(&text) {
                prop_assert!(!l.name.trim().is_empty());
                prop_assert!(!l.unit.trim().is_empty());
                prop_assert_eq!(phone::normalize(&l.phone), Ok(l.phone.clone()));
            }
        }

        #[test]
        fn well_formed_one_line_leads_round_trip(
            first in "[A-Z][a-z]{1,10}", last in "[A-Z][a-z]{1,10}",
            digits in "[0-9]{8}", unit in "[A-Z]?[0-9]{1,3}[A-Z]?",
        ) {
            let text = format!("LEAD {first} {last}, 07{digits}, {unit}");
            let expected_phone = phone::normalize(&format!("07{digits}"));
            match (parse(&text), expected_phone) {
                (Parsed::Lead(l), Ok(p)) => {
                    prop_assert_eq!(l.name, format!("{first} {last}"));
                    prop_assert_eq!(l.phone, p);
                    prop_assert_eq!(l.unit, unit);
                }
                (Parsed::Invalid(_), Err(_)) => {}
                (other, p) => prop_assert!(false, "{text:?} gave {other:?} (phone {p:?})"),
            }
        }
    }
}
