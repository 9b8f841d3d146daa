//! How instance fields read on a terminal: commands quoted like a shell would need them, times as
//! ages, and aligned tables.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use aegis_proto::api::Instance;

/// `argv` as one line a POSIX shell would parse back into the same words.
pub fn quote_command(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| quote_word(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `text` cut to `max` characters, ending in `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An RFC 3339 time as its age: `12s ago`, `5m ago`, `3h ago`, `2d ago` (the text itself when it
/// does not parse).
pub fn age(rfc3339: &str, now: OffsetDateTime) -> String {
    let Ok(at) = OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return rfc3339.to_owned();
    };
    let secs = (now - at).whole_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3_599 => format!("{}m ago", secs / 60),
        3_600..=86_399 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// How an instance is named in messages: `web (inst-…)` or the bare id.
pub fn label(instance: &Instance) -> String {
    match &instance.handle {
        Some(handle) => format!("{handle} ({})", instance.id),
        None => instance.id.clone(),
    }
}

/// Left-aligned columns separated by three spaces. `paint` may wrap a cell in colour codes,
/// which do not count towards the width.
pub fn table(
    header: &[&str],
    rows: &[Vec<String>],
    paint: impl Fn(usize, &str) -> String,
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for (r, row) in std::iter::once(&header).chain(rows).enumerate() {
        let last = row.len().saturating_sub(1);
        for (c, cell) in row.iter().enumerate() {
            let shown = if r == 0 { cell.clone() } else { paint(c, cell) };
            out.push_str(&shown);
            if c < last {
                let pad = widths[c] - cell.chars().count() + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let argv = ["sh", "-c", "echo 'hi' $X", "", "a=b"].map(str::to_owned);
        assert_eq!(quote_command(&argv), r"sh -c 'echo '\''hi'\'' $X' '' a=b");
    }

    #[test]
    fn ages() {
        let now = OffsetDateTime::parse("2024-05-01T12:00:00Z", &Rfc3339).unwrap();
        assert_eq!(age("2024-05-01T11:59:58.123Z", now), "1s ago");
        assert_eq!(age("2024-05-01T11:50:00Z", now), "10m ago");
        assert_eq!(age("2024-05-01T09:00:00Z", now), "3h ago");
        assert_eq!(age("2024-04-28T12:00:00Z", now), "3d ago");
        assert_eq!(age("garbage", now), "garbage");
    }

    #[test]
    fn tables_align() {
        let rows = vec![vec!["a".to_owned(), "long".to_owned(), "x".to_owned()]];
        assert_eq!(
            table(&["ID", "NAME", "END"], &rows, |_, c| c.to_owned()),
            "ID   NAME   END\na    long   x\n"
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
