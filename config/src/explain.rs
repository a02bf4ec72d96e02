//! Saying more than the YAML parser does: which key a position belongs to
//! (its dotted path, from the indentation above it), which block a missing
//! key belongs in, where an unclosed bracket was opened, and plain words
//! for the parser's jargon. Works on the source text and a position; it
//! only improves messages, never decides validity.

use crate::diagnostic::Pos;

/// One line's indentation and key (`  - region: us` -> (4, "region")).
fn line_key(line: &str) -> (usize, Option<&str>) {
    let trimmed = line.trim_start();
    let mut indent = line.len() - trimmed.len();
    let mut rest = trimmed;
    while let Some(r) = rest.strip_prefix("- ") {
        indent += 2;
        rest = r.trim_start();
    }
    let key = rest.split_once(':').and_then(|(k, _)| {
        let k = k.trim();
        (!k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .then_some(k)
    });
    (indent, key)
}

fn content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The keys from the top level down to the one on `line` (1-based), and
/// the position of each.
pub(crate) fn path_at(text: &str, line: usize) -> Vec<(String, Pos)> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = line.checked_sub(1).filter(|i| *i < lines.len()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (mut indent, key) = line_key(lines[start]);
    if let Some(k) = key {
        out.push((k.to_owned(), pos_of(lines[start], start, k)));
    }
    for i in (0..start).rev() {
        if indent == 0 {
            break;
        }
        if !content(lines[i]) {
            continue;
        }
        let (ind, key) = line_key(lines[i]);
        if ind < indent {
            if let Some(k) = key {
                out.push((k.to_owned(), pos_of(lines[i], i, k)));
            }
            indent = ind;
        }
    }
    out.reverse();
    out
}

fn pos_of(line: &str, index: usize, key: &str) -> Pos {
    pos(index + 1, line.find(key).map_or(1, |c| c + 1))
}

/// A position from 1-based line and column.
fn pos(line: usize, column: usize) -> Pos {
    Pos {
        line: line as u64,
        column: column as u64,
    }
}

/// A position's 1-based line and column.
fn at_of(p: Pos) -> (usize, usize) {
    (
        usize::try_from(p.line).unwrap_or(usize::MAX),
        usize::try_from(p.column).unwrap_or(usize::MAX),
    )
}

/// Dotted path of keys.
pub(crate) fn dotted(path: &[(String, Pos)]) -> String {
    path.iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// Inside a `{ key: value, ... }` on `line` (1-based), the key and value
/// at `column`.
pub(crate) fn flow_entry(text: &str, at: Pos) -> Option<(String, String)> {
    let (line, column) = at_of(at);
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let col = column.checked_sub(1)?.min(l.len());
    let before = l.get(..col)?;
    let open = before.rfind('{')?;
    let start = before.rfind(',').filter(|c| *c > open).unwrap_or(open) + 1;
    let (key, _) = before.get(start..)?.split_once(':')?;
    let after = l.get(col..)?;
    let end = after.find([',', '}']).unwrap_or(after.len());
    Some((key.trim().to_owned(), after.get(..end)?.trim().to_owned()))
}

/// The value written after `key:` on `line` (1-based), if any.
pub(crate) fn value_at(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (_, v) = l.split_once(':')?;
    let v = v.split(" #").next()?.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// The block a key is missing from, for an error reported at `at` (the
/// parser points at the block's last key, or inside a `{ ... }`): its
/// path and position.
pub(crate) fn block_of(text: &str, at: Pos) -> Vec<(String, Pos)> {
    let (at_line, at_column) = at_of(at);
    let Some(line) = text.lines().nth(at_line.saturating_sub(1)) else {
        return Vec::new();
    };
    let mut path = path_at(text, at_line);
    let in_flow = line
        .char_indices()
        .any(|(i, c)| c == '{' && i + 1 < at_column);
    if !in_flow {
        // The reported key is a sibling of the missing one.
        path.pop();
    }
    path
}

/// An unclosed `[` or `{` before `at`, on an earlier line: its position.
pub(crate) fn unclosed_before(text: &str, at: Pos) -> Option<(char, Pos)> {
    let (at_line, at_column) = at_of(at);
    let mut open: Vec<(char, Pos)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i + 1 > at_line {
            break;
        }
        let mut quote: Option<char> = None;
        for (c_i, c) in line.char_indices() {
            if i + 1 == at_line && c_i + 1 >= at_column {
                break;
            }
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if c_i == 0 || line[..c_i].ends_with(' ') => break,
                (None, '[' | '{') => open.push((c, pos(i + 1, c_i + 1))),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    open.pop().filter(|(_, p)| p.line < at.line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const TEXT: &str =
        "region: eu\ntls:\n  cert: c\n  ca: a\nlinks:\n  - region: us\n    cost: -5\n";

    #[test]
    fn paths_follow_indentation_and_list_items() {
        assert_eq!(dotted(&path_at(TEXT, 4)), "tls.ca");
        assert_eq!(dotted(&path_at(TEXT, 7)), "links.cost");
        assert_eq!(path_at(TEXT, 7)[0].1, Pos { line: 5, column: 1 });
        assert_eq!(value_at(TEXT, 7).as_deref(), Some("-5"));
        let block = block_of(TEXT, Pos { line: 4, column: 3 });
        assert_eq!(dotted(&block), "tls");
        let flow = "tls: { cert: c }\n";
        let b = "broker: { url: x, shared: maybe }\n";
        assert_eq!(
            flow_entry(
                b,
                Pos {
                    line: 1,
                    column: 27
                }
            ),
            Some(("shared".to_owned(), "maybe".to_owned()))
        );
        assert_eq!(
            dotted(&block_of(
                flow,
                Pos {
                    line: 1,
                    column: 16
                }
            )),
            "tls"
        );
    }

    #[test]
    fn an_unclosed_bracket_is_found_where_it_opened() {
        let text = "links:\n  - endpoints: [a:1\n    cost: 5\n";
        let (c, p) = unclosed_before(text, Pos { line: 3, column: 9 }).unwrap();
        assert_eq!(
            (c, p),
            (
                '[',
                Pos {
                    line: 2,
                    column: 16
                }
            )
        );
        assert_eq!(
            unclosed_before("a: [1]\nb: 2\n", Pos { line: 2, column: 2 }),
            None
        );
        assert_eq!(
            unclosed_before("a: \"[\"\nb: 2\n", Pos { line: 2, column: 2 }),
            None
        );
    }
}
