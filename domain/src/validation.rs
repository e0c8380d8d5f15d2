//! Small value checks shared by the aggregates.

use thiserror::Error;

/// A field value that breaks a length or format rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The public name of the field, as the wire format spells it.
    pub field: &'static str,
    /// Why the value was refused.
    pub reason: String,
}

/// Checks a required, trimmed-non-empty text of at most `max` characters.
pub fn required_text(field: &'static str, value: &str, max: usize) -> Result<(), InvalidField> {
    if value.trim().is_empty() {
        return Err(InvalidField {
            field,
            reason: "this field may not be blank".into(),
        });
    }
    if value.chars().count() > max {
        return Err(InvalidField {
            field,
            reason: format!("ensure this field has no more than {max} characters"),
        });
    }
    Ok(())
}

/// Checks a username as accepted by upstream's default `USERNAME_REGEX` family: letters, digits
/// and `.@+-_`, 1 to 30 characters.
pub fn username(field: &'static str, value: &str) -> Result<(), InvalidField> {
    let ok = !value.is_empty()
        && value.chars().count() <= 30
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '@' | '+' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(InvalidField {
            field,
            reason: format!("'{value}' is not a valid username"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_text_refuses_blank_and_too_long_values() {
        assert!(required_text("name", "  ", 5).is_err());
        assert!(required_text("name", "abcdef", 5).is_err());
        assert!(required_text("name", "abcde", 5).is_ok());
        // Length is counted in characters, not bytes.
        assert!(required_text("name", "ééééé", 5).is_ok());
    }

    #[test]
    fn usernames_allow_the_upstream_character_set_only() {
        assert!(username("recipients", "jean.dupont@aphp").is_ok());
        assert!(username("recipients", "a b").is_err());
        assert!(username("recipients", "").is_err());
        assert!(username("recipients", &"x".repeat(31)).is_err());
    }
}
