//! A criterion's `filterFhir`: a FHIR search string (`a=x,y&b=ge2024-01-01&code=sys|C01`) split
//! into parameters. What each parameter means for a resource is the data source's business; this
//! only reads the syntax: `&` between parameters, `,` between alternatives, `name:modifier`, the
//! comparison prefixes (`eq`, `ne`, `gt`, `lt`, `ge`, `le`) and percent-encoding (a `+` stays a `+`:
//! it is the offset sign of dates).

/// A FHIR comparison prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

/// One alternative of a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchValue {
    /// The prefix, when the value is a number or date that starts with one.
    pub prefix: Option<Prefix>,
    /// The value without its prefix (`system|code` kept whole).
    pub text: String,
}

impl SearchValue {
    /// The code of a `system|code` token (the whole text when there is no system).
    pub fn code(&self) -> &str {
        self.text.rsplit('|').next().unwrap_or(&self.text)
    }

    /// The instants a date value stands for, in seconds since the Unix epoch (UTC): a whole day
    /// for `YYYY-MM-DD`, one instant for a date-time (with or without an offset, UTC if none).
    pub fn instant_range(&self) -> Option<(i64, i64)> {
        let text = self.text.trim();
        if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            let lo = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
            return Some((lo, lo + 86_399));
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return Some((t.timestamp(), t.timestamp()));
        }
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
            .ok()
            .map(|t| (t.and_utc().timestamp(), t.and_utc().timestamp()))
    }
}

/// `name[:modifier]=v1,v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    pub name: String,
    pub modifier: Option<String>,
    pub values: Vec<SearchValue>,
}

/// Splits a search string. Empty parameters are skipped.
pub fn parse_search(filter: &str) -> Vec<SearchParam> {
    filter
        .split('&')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let key = percent_decode(key.trim());
            let (name, modifier) = match key.split_once(':') {
                Some((n, m)) => (n.to_string(), Some(m.to_string())),
                None => (key.clone(), None),
            };
            let values = value
                .split(',')
                .map(|v| percent_decode(v.trim()))
                .filter(|v| !v.is_empty())
                .map(|v| split_prefix(&v))
                .collect();
            SearchParam {
                name,
                modifier,
                values,
            }
        })
        .collect()
}

/// A prefix is only read before a digit (`ge2024…`, `le6.5`), so codes such as `gender` values or
/// `le`-initial words stay whole.
fn split_prefix(v: &str) -> SearchValue {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
    ];
    for (p, prefix) in prefixes {
        if let Some(rest) = v.strip_prefix(p)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        {
            return SearchValue {
                prefix: Some(prefix),
                text: rest.to_string(),
            };
        }
    }
    SearchValue {
        prefix: None,
        text: v.to_string(),
    }
}

/// Decodes `%XX` escapes (a `+` stays a `+`).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_values_prefixes_and_encoding() {
        let p = parse_search(
            "subject.active=true&code=http://loinc.org|4548-4,X&value-quantity=ge6.5&_text=a%20b&type:not=doc&gender=",
        );
        assert_eq!(p.len(), 6);
        assert_eq!(p[1].values[0].text, "http://loinc.org|4548-4");
        assert_eq!(p[1].values[1].text, "X");
        assert_eq!(p[2].values[0].prefix, Some(Prefix::Ge));
        assert_eq!(p[2].values[0].text, "6.5");
        assert_eq!(p[3].values[0].text, "a b");
        assert_eq!(p[4].modifier.as_deref(), Some("not"));
        assert!(p[5].values.is_empty());
        assert_eq!(p[1].values[0].code(), "4548-4");
        let day = SearchValue {
            prefix: None,
            text: "2024-01-02".into(),
        };
        assert_eq!(day.instant_range(), Some((1_704_153_600, 1_704_239_999)));
        let instant = SearchValue {
            prefix: None,
            text: "2024-01-02T01:00:00+01:00".into(),
        };
        assert_eq!(
            instant.instant_range(),
            Some((1_704_153_600, 1_704_153_600))
        );
        // `le` before a letter is not a prefix.
        assert_eq!(parse_search("class=lent")[0].values[0].prefix, None);
    }
}
