//! TOML parse errors told in one line, with where in the text they are:
//! what plugin manifests and workflow definitions report.

/// `e`, raised reading `text`, as `line L, column C: message`.
pub fn one_line(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().lines().next().unwrap_or("invalid TOML").trim();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}
