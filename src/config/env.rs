//! `${VAR}` expansion in every string of a TOML table.
//!
//! `${VAR}` is replaced by the variable's value; `${VAR:-default}` falls back
//! to `default` when the variable is unset or empty; `$$` is a literal `$`.
//! An unset variable without a default is a problem at the key where it
//! appears, never an empty string.

use super::Problem;

/// Expands every string in `table`, collecting one problem per unset variable.
pub(super) fn expand_table(
    table: &mut toml::Table,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    for (key, value) in table.iter_mut() {
        expand_value(value, key, lookup, &mut problems);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn expand_value(
    value: &mut toml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(s) => match expand_str(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                path: path.to_owned(),
                message,
            }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), lookup, problems);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_value(item, &format!("{path}.{key}"), lookup, problems);
            }
        }
        _ => {}
    }
}

/// Expands one string.
pub(super) fn expand_str(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    let mut missing = Vec::new();
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("unclosed `${{` in {input:?}"));
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{expr}}}` is not a valid variable reference"));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => missing.push(name.to_owned()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing
            .iter()
            .map(|name| format!("environment variable {name} is not set"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_rules() {
        assert_eq!(expand_str("x${A}y", &env).unwrap(), "xalphay");
        assert_eq!(expand_str("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${EMPTY}", &env).unwrap(), "");
        assert_eq!(
            expand_str("cost $$5 and $x", &env).unwrap(),
            "cost $5 and $x"
        );
        assert!(
            expand_str("${B}", &env)
                .unwrap_err()
                .contains("B is not set")
        );
        assert!(expand_str("${A", &env).unwrap_err().contains("unclosed"));
        assert!(
            expand_str("${A B}", &env)
                .unwrap_err()
                .contains("not a valid")
        );
    }
}
