//! A small block-style YAML writer for the job definitions: maps and lists
//! in block style, strings plain when YAML reads them back as the same
//! string and double-quoted (JSON escapes, which YAML shares) otherwise.
//! LAVA reads them with PyYAML; the tests read them back the same way.

use serde_json::Value;

/// `value` as a YAML document, each line of `comment` as a `#` line first.
pub fn to_yaml(value: &Value, comment: &str) -> String {
    let mut out = String::new();
    for line in comment.lines() {
        out.push_str(if line.is_empty() { "#" } else { "# " });
        out.push_str(line);
        out.push('\n');
    }
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_list(&mut out, items, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

/// Keys written first, in this order, wherever they appear (the way LAVA's
/// own examples read: what a job is before how it runs); other keys follow
/// in alphabetical order.
const KEY_ORDER: &[&str] = &[
    "device_type",
    "job_name",
    "timeouts",
    "priority",
    "visibility",
    "context",
    "metadata",
    "to",
    "method",
    "media",
    "from",
    "name",
    "path",
    "command",
    "image_arg",
    "url",
    "timeout",
];

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by_key(|(k, _)| {
        (
            KEY_ORDER
                .iter()
                .position(|o| o == k)
                .unwrap_or(KEY_ORDER.len()),
            k.as_str(),
        )
    });
    for (i, (key, value)) in entries.into_iter().enumerate() {
        // The first key of a map inside a list shares the "- " line.
        if i > 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&string(key));
        out.push(':');
        write_value(out, value, indent);
    }
}

fn write_list(out: &mut String, items: &[Value], indent: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_map(out, map, indent + 2),
            Value::Array(inner) if !inner.is_empty() => write_list(out, inner, indent + 2),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// Writes what follows `key:`.
fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_list(out, items, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A string, plain when that reads back as the same string.
fn string(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_owned()
    } else {
        // A JSON string literal is a valid YAML double-quoted scalar.
        Value::String(s.to_owned()).to_string()
    }
}

fn is_plain_safe(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || first == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_lists_are_block_style() {
        let v = json!({
            "job_name": "cloister qemu-virt",
            "timeouts": {"job": {"minutes": 20}},
            "context": {"extra_options": ["-smp 2"]},
            "actions": [
                {"deploy": {"to": "tmpfs", "images": {}}},
                {"boot": {"prompts": ["cloister-host:/#"], "media": "tmpfs"}},
            ],
            "flags": [true, null, 3],
        });
        let text = to_yaml(&v, "generated\n\nsecond");
        assert_eq!(
            text,
            "\
# generated
#
# second
job_name: \"cloister qemu-virt\"
timeouts:
  job:
    minutes: 20
context:
  extra_options:
  - \"-smp 2\"
actions:
- deploy:
    to: tmpfs
    images: {}
- boot:
    media: tmpfs
    prompts:
    - \"cloister-host:/#\"
flags:
- true
- null
- 3
"
        );
    }

    #[test]
    fn strings_yaml_would_misread_are_quoted() {
        for s in [
            "yes", "No", "null", "", "1.5", "-smp", "a: b", "x #y", "{k}", "it's",
        ] {
            assert!(string(s).starts_with('"'), "{s:?} -> {}", string(s));
        }
        for s in ["tmpfs", "qemu", "file.yaml", "/sbin/x", "max"] {
            assert_eq!(string(s), s);
        }
        assert_eq!(string("a\"b\nc"), r#""a\"b\nc""#);
    }
}
