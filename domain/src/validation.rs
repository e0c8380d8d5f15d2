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

/// Caps on free text, so that no request can put an unbounded value into one event (events are
/// published to NATS, whose messages are limited to 1 MiB by default). Names keep upstream's
/// lengths in characters; these larger texts are counted in bytes of UTF-8. Chosen from real
/// sizes: the largest queries the front-end writes are tens of KB.
pub mod limits {
    /// Descriptions of folders, requests and cohorts, and an export's motivation.
    pub const DESCRIPTION_MAX_BYTES: usize = 64 * 1024;
    /// A serialized query (snapshots, counts, cohorts).
    pub const QUERY_MAX_BYTES: usize = 256 * 1024;
    /// The text of a saved FHIR filter.
    pub const FILTER_MAX_BYTES: usize = 64 * 1024;
    /// Messages: maintenance phases, release notes (all lines together), job failures reported
    /// by an executor (truncated to this size rather than refused).
    pub const MESSAGE_MAX_BYTES: usize = 64 * 1024;
    /// The markdown of a web content.
    pub const CONTENT_MAX_BYTES: usize = 256 * 1024;
}

/// Checks that a free text holds at most `max_bytes` bytes of UTF-8.
pub fn bounded_text(
    field: &'static str,
    value: &str,
    max_bytes: usize,
) -> Result<(), InvalidField> {
    if value.len() > max_bytes {
        return Err(InvalidField {
            field,
            reason: format!(
                "ensure this field has no more than {max_bytes} bytes (it has {})",
                value.len()
            ),
        });
    }
    Ok(())
}

/// [`bounded_text`] for an optional value.
pub fn bounded_optional_text(
    field: &'static str,
    value: Option<&str>,
    max_bytes: usize,
) -> Result<(), InvalidField> {
    value.map_or(Ok(()), |v| bounded_text(field, v, max_bytes))
}

/// `text` cut to at most `max_bytes` bytes, on a character boundary.
pub fn truncated(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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

/// Checks an e-mail address with upstream's default `EMAIL_REGEX` shape: word characters, dots,
/// `+` and `-`, then `@`, a domain of word characters and hyphens (dots allowed between labels),
/// a dot and a word top-level domain.
pub fn email(field: &'static str, value: &str) -> Result<(), InvalidField> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let valid = value.split_once('@').is_some_and(|(local, domain)| {
        let local_ok = !local.is_empty()
            && local
                .chars()
                .all(|c| word(c) || matches!(c, '.' | '+' | '-'));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels
                .iter()
                .all(|l| !l.is_empty() && l.chars().all(|c| word(c) || c == '-'))
            && labels.last().is_some_and(|tld| tld.chars().all(word));
        local_ok && domain_ok
    });
    if valid && value.chars().count() <= 254 {
        Ok(())
    } else {
        Err(InvalidField {
            field,
            reason: "enter a valid e-mail address".into(),
        })
    }
}

/// Checks first and last names: required, letters (accented ones included), apostrophes,
/// spaces and hyphens only, at most 50 characters each.
pub fn person_names(firstname: &str, lastname: &str) -> Result<(), InvalidField> {
    for (field, value) in [("firstname", firstname), ("lastname", lastname)] {
        required_text(field, value, 50)?;
        if !value
            .chars()
            .all(|c| c.is_alphabetic() || matches!(c, '\'' | ' ' | '-'))
        {
            return Err(InvalidField {
                field,
                reason: "only letters, apostrophes, spaces and hyphens are allowed".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_follow_the_upstream_default_shape() {
        assert!(email("email", "jean.dupont+x@aphp.fr").is_ok());
        assert!(email("email", "a@b-c.example.org").is_ok());
        for bad in [
            "",
            "a@b",
            "@aphp.fr",
            "a b@aphp.fr",
            "a@aphp..fr",
            "a@@aphp.fr",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_allow_accents_apostrophes_and_hyphens() {
        assert!(person_names("Hélène", "D'Arc-Müller").is_ok());
        assert!(person_names("Jean2", "Dupont").is_err());
        assert!(person_names("Jean", " ").is_err());
    }

    #[test]
    fn required_text_refuses_blank_and_too_long_values() {
        assert!(required_text("name", "  ", 5).is_err());
        assert!(required_text("name", "abcdef", 5).is_err());
        assert!(required_text("name", "abcde", 5).is_ok());
        // Length is counted in characters, not bytes.
        assert!(required_text("name", "ééééé", 5).is_ok());
    }

    #[test]
    fn bounded_texts_count_bytes_and_truncation_keeps_characters_whole() {
        assert!(bounded_text("description", "abc", 3).is_ok());
        let err = bounded_text("description", "abcd", 3).unwrap_err();
        assert_eq!(err.field, "description");
        assert!(
            err.reason.contains("no more than 3 bytes"),
            "{}",
            err.reason
        );
        assert!(bounded_text("description", "éé", 3).is_err());
        assert!(bounded_optional_text("description", None, 0).is_ok());
        assert_eq!(truncated("aéb".into(), 2), "a");
        assert_eq!(truncated("aéb".into(), 3), "aé");
        assert_eq!(truncated("ab".into(), 5), "ab");
    }

    #[test]
    fn usernames_allow_the_upstream_character_set_only() {
        assert!(username("recipients", "jean.dupont@aphp").is_ok());
        assert!(username("recipients", "a b").is_err());
        assert!(username("recipients", "").is_err());
        assert!(username("recipients", &"x".repeat(31)).is_err());
    }
}
