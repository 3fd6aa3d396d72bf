//! Phone numbers are stored in E.164 (`+254712345678`), parsed with the
//! libphonenumber port so every Kenyan way of writing one (07.., 01.., 2547..,
//! +2547.., with spaces or dashes) lands on the same key.

use phonenumber::{country, Mode};

/// Normalizes a phone number to E.164; numbers without a country code are read as
/// Kenyan. Rejects anything that is not a valid number.
pub fn normalize(input: &str) -> Result<String, String> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err("A phone number is required.".into());
    }
    if !trimmed
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        return Err(
            "A phone number may contain only digits, spaces, dashes and a leading +.".into(),
        );
    }
    let digits: String = trimmed.chars().filter(|c| c.is_ascii_digit()).collect();
    // "2547..." without the plus is how M-Pesa writes numbers.
    let candidate = if !trimmed.starts_with('+') && digits.starts_with("254") && digits.len() == 12
    {
        format!("+{digits}")
    } else {
        trimmed.to_string()
    };
    let parsed = phonenumber::parse(Some(country::Id::KE), &candidate)
        .map_err(|_| format!("{input:?} is not a valid phone number."))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(format!("{input:?} is not a valid phone number."));
    }
    Ok(parsed.format().mode(Mode::E164).to_string())
}

/// `2547XXXXXXXX`, the form Daraja wants in PartyA/PhoneNumber.
pub fn msisdn(e164: &str) -> String {
    e164.trim_start_matches('+').to_string()
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn kenyan_forms_agree() {
        for s in [
            "0712345678",
            "+254712345678",
            "254712345678",
            "0712 345 678",
            "+254 712-345-678",
        ] {
            assert_eq!(normalize(s).unwrap(), "+254712345678", "{s}");
        }
        assert_eq!(normalize("0110123456").unwrap(), "+254110123456");
    }

    #[test]
    fn garbage_is_refused() {
        for s in ["", "abc", "12", "07123", "+2547123456789999", "0712x45678"] {
            assert!(normalize(s).is_err(), "{s}");
        }
    }

    #[test]
    fn foreign_numbers_with_country_code_are_kept() {
        assert_eq!(normalize("+14155552671").unwrap(), "+14155552671");
    }
}
