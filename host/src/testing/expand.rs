//! Cases generated from a table: a case with `matrix` (every combination of
//! the listed values) or `rows` (one case per row) becomes one case per
//! combination, with `${name}` replaced everywhere in it. A string that is
//! exactly `${name}` takes the value with its type, so `status: ${code}`
//! stays a number.

use serde_norway::{Mapping, Value};

/// Cases one matrix may produce.
pub const MAX_COMBINATIONS: usize = 10_000;

type Combination = Vec<(String, Value)>;

/// The cases one entry stands for, each with the suffix naming its values.
pub type Expanded = Vec<(Value, Option<String>)>;

/// The cases `entry` stands for, each with a name suffix naming its
/// values (`None` for a plain case). Errors are (field, message).
pub fn expand(entry: &Value) -> Result<Expanded, (String, String)> {
    let Some(map) = entry.as_mapping() else {
        return Ok(vec![(entry.clone(), None)]);
    };
    let matrix = map.get("matrix");
    let rows = map.get("rows");
    let combinations = match (matrix, rows) {
        (None, None) => return Ok(vec![(entry.clone(), None)]),
        (Some(_), Some(_)) => {
            return Err(("matrix".into(), "give `matrix` or `rows`, not both".into()));
        }
        (Some(m), None) => product(m)?,
        (None, Some(r)) => table(r)?,
    };
    let mut base = map.clone();
    base.remove("matrix");
    base.remove("rows");
    let base = Value::Mapping(base);
    let named = map
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.contains("${"));
    let mut out = Vec::with_capacity(combinations.len());
    for combo in combinations {
        let value = substitute(&base, &combo)?;
        let suffix = (!named).then(|| {
            let parts: Vec<String> = combo
                .iter()
                .map(|(k, v)| format!("{k}={}", scalar_text(v)))
                .collect();
            format!("[{}]", parts.join(", "))
        });
        out.push((value, suffix));
    }
    Ok(out)
}

fn product(matrix: &Value) -> Result<Vec<Combination>, (String, String)> {
    let Some(m) = matrix.as_mapping() else {
        return Err((
            "matrix".into(),
            "expected a mapping of name to a list of values".into(),
        ));
    };
    let mut combos: Vec<Combination> = vec![Vec::new()];
    for (k, values) in m {
        let name = var_name(k, "matrix")?;
        let Some(values) = values.as_sequence() else {
            return Err((format!("matrix.{name}"), "expected a list of values".into()));
        };
        if values.is_empty() {
            return Err((format!("matrix.{name}"), "the list is empty".into()));
        }
        let mut next = Vec::with_capacity(combos.len() * values.len());
        for c in &combos {
            for (i, v) in values.iter().enumerate() {
                check_scalar(v, &format!("matrix.{name}[{i}]"))?;
                let mut c = c.clone();
                c.push((name.clone(), v.clone()));
                next.push(c);
            }
        }
        if next.len() > MAX_COMBINATIONS {
            return Err((
                "matrix".into(),
                format!("more than {MAX_COMBINATIONS} combinations"),
            ));
        }
        combos = next;
    }
    Ok(combos)
}

fn table(rows: &Value) -> Result<Vec<Combination>, (String, String)> {
    let Some(rows) = rows.as_sequence() else {
        return Err(("rows".into(), "expected a list of mappings".into()));
    };
    if rows.len() > MAX_COMBINATIONS {
        return Err(("rows".into(), format!("more than {MAX_COMBINATIONS} rows")));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let Some(row) = row.as_mapping() else {
            return Err((format!("rows[{i}]"), "expected a mapping".into()));
        };
        let mut combo = Vec::new();
        for (k, v) in row {
            let name = var_name(k, &format!("rows[{i}]"))?;
            check_scalar(v, &format!("rows[{i}].{name}"))?;
            combo.push((name, v.clone()));
        }
        out.push(combo);
    }
    Ok(out)
}

fn var_name(k: &Value, at: &str) -> Result<String, (String, String)> {
    match k.as_str() {
        Some(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Ok(s.to_owned())
        }
        _ => Err((
            at.to_owned(),
            format!("{k:?} is not a variable name (letters, digits, `_`)"),
        )),
    }
}

fn check_scalar(v: &Value, at: &str) -> Result<(), (String, String)> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
        _ => Err((at.to_owned(), "expected a string, number or boolean".into())),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn substitute(v: &Value, combo: &Combination) -> Result<Value, (String, String)> {
    Ok(match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
                && let Some((_, val)) = combo.iter().find(|(k, _)| k == name)
            {
                return Ok(val.clone());
            }
            let mut out = s.clone();
            for (k, val) in combo {
                out = out.replace(&format!("${{{k}}}"), &scalar_text(val));
            }
            if let Some(start) = out.find("${") {
                let rest = &out[start..];
                let end = rest.find('}').map(|e| e + 1).unwrap_or(rest.len());
                return Err((
                    "matrix".into(),
                    format!("{} names no variable of this case", &rest[..end]),
                ));
            }
            Value::String(out)
        }
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .map(|i| substitute(i, combo))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (k, val) in m {
                out.insert(substitute(k, combo)?, substitute(val, combo)?);
            }
            Value::Mapping(out)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_norway::from_str(s).unwrap()
    }

    #[test]
    fn a_matrix_gives_every_combination_with_typed_values() {
        let cases = expand(&yaml(
            "name: u\nmatrix: {user: [alice, bob], code: [200, 403]}\nrequest: {headers: {x-user: '${user}'}}\nexpect: {status: '${code}'}",
        ))
        .unwrap();
        assert_eq!(cases.len(), 4);
        let (v, suffix) = &cases[1];
        assert_eq!(suffix.as_deref(), Some("[user=alice, code=403]"));
        assert_eq!(v["request"]["headers"]["x-user"], Value::from("alice"));
        assert_eq!(v["expect"]["status"], Value::from(403));
        assert!(v.get("matrix").is_none());
    }

    #[test]
    fn rows_give_one_case_each_and_named_cases_keep_their_name() {
        let cases = expand(&yaml(
            "name: '${user} gets ${code}'\nrows: [{user: a, code: 1}, {user: b, code: 2}]",
        ))
        .unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[1].0["name"], Value::from("b gets 2"));
        assert_eq!(cases[1].1, None);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, field, msg) in [
            ("matrix: {a: [1]}\nrows: []", "matrix", "not both"),
            ("matrix: {a: []}", "matrix.a", "empty"),
            ("matrix: {a: [[1]]}", "matrix.a[0]", "expected a string"),
            ("matrix: {a: [1]}\nname: '${b}'", "matrix", "${b}"),
        ] {
            let (f, m) = expand(&yaml(text)).unwrap_err();
            assert_eq!(f, field, "{text}");
            assert!(m.contains(msg), "{text}: {m}");
        }
    }
}
