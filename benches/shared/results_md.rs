//! `bench/RESULTS.md` sections that benches other than the suite write (included with
//! `#[path = "shared/results_md.rs"] mod results_md;`), and the time they are stamped with.

/// Now, in UTC, to the minute (`date -u`).
pub fn utc_now() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

/// `md` with the section `name` (between its markers, written by `writer`) replaced by
/// `section`, or appended after a blank line.
pub fn with_section(md: &str, name: &str, writer: &str, section: &str) -> String {
    let begin = format!("<!-- {name}: begin (written by {writer}) -->");
    let end = format!("<!-- {name}: end -->");
    let block = format!("{begin}\n{section}{end}\n");
    match (md.find(&begin), md.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &md[..b], &md[e + end.len()..].trim_start_matches('\n')),
        _ => format!("{}\n\n{block}", md.trim_end()),
    }
}
