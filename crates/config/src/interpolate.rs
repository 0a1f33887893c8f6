use crate::Env;

/// Replaces `${NAME}` and `${NAME:-default}` in `input` with values from `env`.
/// `$$` is a literal `$`. An unset variable without a default is an error naming it.
pub fn interpolate(input: &str, env: &dyn Env) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name `{name}` in `${{{expr}}}`"));
            }
            match (env.get(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapEnv;

    #[test]
    fn replaces_defaults_and_escapes() {
        let env = MapEnv::from_pairs([("KEY", "sk-1"), ("EMPTY", "")]);
        assert_eq!(interpolate("Bearer ${KEY}", &env).unwrap(), "Bearer sk-1");
        assert_eq!(interpolate("${NOPE:-x}-${EMPTY}", &env).unwrap(), "x-");
        assert_eq!(
            interpolate("$$5 and $ alone", &env).unwrap(),
            "$5 and $ alone"
        );
        let err = interpolate("${MISSING}", &env).unwrap_err();
        assert!(err.contains("MISSING"), "{err}");
        assert!(interpolate("${UNCLOSED", &env).is_err());
        assert!(interpolate("${bad name}", &env).is_err());
    }
}
