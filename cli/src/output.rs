//! How the CLI prints answers: JSON (the default, for scripts), a table for people, or CSV for
//! spreadsheets (`--output`). Tables and CSV flatten a list of objects into rows (nested values
//! as compact JSON); a single object becomes field/value rows.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Json,
    Table,
    Csv,
}

/// Columns and rows of `v`.
fn rows(v: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) if o.len() == 1 && o.values().next().is_some_and(Value::is_array) => {
            o.values().next().and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
        }
        Value::Object(o) => {
            let rows = o.iter().map(|(k, v)| vec![k.clone(), cell(v)]).collect();
            return (vec!["field".into(), "value".into()], rows);
        }
        other => return (vec!["value".into()], vec![vec![cell(other)]]),
    };
    let mut columns: Vec<String> = Vec::new();
    for item in &items {
        if let Value::Object(o) = item {
            for k in o.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    if columns.is_empty() {
        return (vec!["value".into()], items.iter().map(|v| vec![cell(v)]).collect());
    }
    // What identifies a row first; the rest as they come (alphabetically, as JSON maps are).
    const FIRST: [&str; 6] = ["id", "name", "username", "hostname", "status", "state"];
    columns.sort_by_key(|c| FIRST.iter().position(|f| f == c).unwrap_or(FIRST.len()));
    let rows = items
        .iter()
        .map(|item| columns.iter().map(|c| item.get(c).map(cell).unwrap_or_default()).collect())
        .collect();
    (columns, rows)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// `v` rendered in `format`.
pub fn render(v: &Value, format: Output) -> String {
    match format {
        Output::Json => serde_json::to_string_pretty(v).unwrap_or_default(),
        Output::Csv => {
            let (columns, rows) = rows(v);
            let mut out = columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
            for r in rows {
                out.push_str("\r\n");
                out.push_str(&r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            }
            out
        }
        Output::Table => {
            let (columns, rows) = rows(v);
            let one_line = |s: &str| s.replace(['\n', '\r'], " ");
            let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(one_line(c).chars().count());
                }
            }
            let line = |cells: Vec<String>| {
                let padded: Vec<String> =
                    cells.iter().zip(&widths).map(|(c, w)| format!("{:<w$}", one_line(c), w = *w)).collect();
                padded.join("  ").trim_end().to_string()
            };
            let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
            out.extend(rows.into_iter().map(line));
            out.join("\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_become_rows_and_objects_field_value_pairs() {
        let v = serde_json::json!([
            {"id": 1, "username": "maria", "group_id": null},
            {"id": 2, "username": "jo, \"the\" admin", "role": "admin"}
        ]);
        assert_eq!(
            render(&v, Output::Csv),
            "id,username,group_id,role\r\n1,maria,,\r\n2,\"jo, \"\"the\"\" admin\",,admin"
        );
        let table = render(&v, Output::Table);
        let header = table.lines().next().unwrap_or_default();
        assert!(header.starts_with("ID  USERNAME ") && header.ends_with("GROUP_ID  ROLE"), "{header}");
        assert_eq!(table.lines().count(), 3);
        let one = render(&serde_json::json!({"id": 7, "tags": ["a"]}), Output::Csv);
        assert_eq!(one, "field,value\r\nid,7\r\ntags,\"[\"\"a\"\"]\"");
        let wrapped = render(&serde_json::json!({"items": [{"a": 1}]}), Output::Csv);
        assert_eq!(wrapped, "a\r\n1");
    }
}
