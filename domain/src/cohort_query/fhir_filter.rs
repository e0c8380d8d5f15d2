//! The subset of FHIR's `_filter` syntax the front-end writes: comparisons (`eq`, `ne`, `gt`,
//! `lt`, `ge`, `le`) of a parameter with a value, `eq "*"` for "has a value", combined with `and`,
//! `or`, `not` and parentheses. For example, "include missing dates":
//! `(encounter.period-start ge 2024-01-01 and encounter.period-start le 2024-12-31) or not (encounter.period-start eq "*")`.
//! What a parameter means for a row is the data source's business ([`FilterExpr::eval`]).

use super::fhir_search::{Prefix, SearchValue};

#[derive(Debug, Clone, PartialEq)]
pub enum FilterExpr {
    And(Box<FilterExpr>, Box<FilterExpr>),
    Or(Box<FilterExpr>, Box<FilterExpr>),
    Not(Box<FilterExpr>),
    /// `param op value`; the value keeps the search syntax (a date, a number, a code).
    Compare {
        param: String,
        value: SearchValue,
    },
    /// `param eq "*"`: the parameter has a value.
    Present {
        param: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Word(String),
    Quoted(String),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("an unclosed quote".into()),
                    }
                }
                out.push(Token::Quoted(s));
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || n == '(' || n == ')' || n == '"' {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Token::Word(s));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expr(&mut self) -> Result<FilterExpr, String> {
        let mut left = self.term()?;
        while self.peek_word("or") {
            self.at += 1;
            left = FilterExpr::Or(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<FilterExpr, String> {
        let mut left = self.factor()?;
        while self.peek_word("and") {
            self.at += 1;
            left = FilterExpr::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<FilterExpr, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(FilterExpr::Not(Box::new(self.factor()?)));
        }
        match self.next() {
            Some(Token::Open) => {
                let e = self.expr()?;
                match self.next() {
                    Some(Token::Close) => Ok(e),
                    _ => Err("a parenthesis is not closed".into()),
                }
            }
            Some(Token::Word(param)) => {
                let op = match self.next() {
                    Some(Token::Word(op)) => op.to_ascii_lowercase(),
                    _ => return Err(format!("`{param}` is not followed by an operator")),
                };
                let prefix = match op.as_str() {
                    "eq" => Prefix::Eq,
                    "ne" => Prefix::Ne,
                    "gt" => Prefix::Gt,
                    "lt" => Prefix::Lt,
                    "ge" => Prefix::Ge,
                    "le" => Prefix::Le,
                    other => return Err(format!("the operator `{other}` is not supported")),
                };
                let value = match self.next() {
                    Some(Token::Word(v) | Token::Quoted(v)) => v,
                    _ => return Err(format!("`{param} {op}` has no value")),
                };
                if prefix == Prefix::Eq && value == "*" {
                    return Ok(FilterExpr::Present { param });
                }
                Ok(FilterExpr::Compare {
                    param,
                    value: SearchValue {
                        prefix: Some(prefix),
                        text: value,
                    },
                })
            }
            _ => Err("an expression is expected".into()),
        }
    }
}

/// Parses a `_filter` expression.
pub fn parse_filter(text: &str) -> Result<FilterExpr, String> {
    let mut p = Parser {
        tokens: tokens(text)?,
        at: 0,
    };
    let e = p.expr()?;
    if p.at < p.tokens.len() {
        return Err("unexpected text after the expression".into());
    }
    Ok(e)
}

impl FilterExpr {
    /// Every parameter the expression names.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Self::And(a, b) | Self::Or(a, b) => {
                let mut v = a.params();
                v.extend(b.params());
                v
            }
            Self::Not(a) => a.params(),
            Self::Compare { param, .. } | Self::Present { param } => vec![param],
        }
    }

    /// Evaluates against one row: `compare(param, value)` says whether the row's value of
    /// `param` compares as the value (with its prefix) says, `None` when the row has none;
    /// a comparison with a missing value is false.
    pub fn eval(&self, compare: &impl Fn(&str, Option<&SearchValue>) -> Option<bool>) -> bool {
        match self {
            Self::And(a, b) => a.eval(compare) && b.eval(compare),
            Self::Or(a, b) => a.eval(compare) || b.eval(compare),
            Self::Not(a) => !a.eval(compare),
            Self::Compare { param, value } => compare(param, Some(value)).unwrap_or(false),
            Self::Present { param } => compare(param, None).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_ends_missing_dates_filter_parses_and_evaluates() {
        let f = parse_filter(
            "(encounter.period-start ge 2024-01-01 and encounter.period-start le 2024-12-31) or not (encounter.period-start eq \"*\")",
        )
        .unwrap();
        assert_eq!(f.params(), ["encounter.period-start"; 3]);
        // A row dated `day` (None: no date), with dates compared as text (same format).
        let row = |day: Option<&'static str>| {
            move |_: &str, v: Option<&SearchValue>| -> Option<bool> {
                let d = day?;
                Some(match v {
                    None => true,
                    Some(v) => match v.prefix {
                        Some(Prefix::Ge) => d >= v.text.as_str(),
                        Some(Prefix::Le) => d <= v.text.as_str(),
                        _ => d == v.text,
                    },
                })
            }
        };
        assert!(f.eval(&row(Some("2024-06-01"))));
        assert!(!f.eval(&row(Some("2023-06-01"))));
        assert!(f.eval(&row(None)), "a missing date is included");
        assert!(parse_filter("code sw E1").is_err());
        assert!(parse_filter("(date ge 2024-01-01").is_err());
        assert!(parse_filter("date ge").is_err());
    }
}
