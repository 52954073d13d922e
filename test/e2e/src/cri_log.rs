//! CRI container logs (`<time> <stream> <P|F> <text>` lines), as kubelet
//! reads them.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// One line of a CRI container log: `<RFC 3339 time> <stream> <P|F> <text>`,
/// partial (`P`) lines already joined with their continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The timestamp as written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line without its newline.
    pub text: String,
}

/// Parses a CRI log file's contents. Fails on a line that is not in the CRI
/// format.
pub fn parse_log(contents: &str) -> Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    let mut partial: HashMap<String, String> = HashMap::new();
    for raw in contents.lines() {
        let mut parts = raw.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("not a CRI log line: {raw:?}");
        };
        let text = parts.next().unwrap_or("");
        if !time.contains('T') || !matches!(stream, "stdout" | "stderr") {
            bail!("not a CRI log line: {raw:?}");
        }
        let pending = partial.entry(stream.to_string()).or_default();
        pending.push_str(text);
        match tag {
            "P" => {}
            "F" => lines.push(LogLine {
                time: time.to_string(),
                stream: stream.to_string(),
                text: std::mem::take(pending),
            }),
            other => bail!("unknown CRI log tag {other:?} in {raw:?}"),
        }
    }
    Ok(lines)
}

/// The stdout lines of the CRI log at `path`, polling up to `limit` until
/// `last` is among them (the log is written asynchronously).
pub fn wait_log_line(path: &Path, last: &str, limit: Duration) -> Result<Vec<String>> {
    let start = Instant::now();
    loop {
        let contents = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = parse_log(&contents)?
            .into_iter()
            .filter(|l| l.stream == "stdout")
            .map(|l| l.text)
            .collect();
        if lines.iter().any(|l| l == last) {
            return Ok(lines);
        }
        if start.elapsed() > limit {
            bail!(
                "no line {last:?} in {} after {limit:?}; contents:\n{contents}",
                path.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_join_partials() {
        let log = "2024-01-01T00:00:00.1Z stdout P hel\n\
                   2024-01-01T00:00:00.2Z stderr F oops\n\
                   2024-01-01T00:00:00.3Z stdout F lo\n\
                   2024-01-01T00:00:00.4Z stdout F \n";
        let lines = parse_log(log).unwrap();
        let texts: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l.stream.as_str(), l.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [("stderr", "oops"), ("stdout", "hello"), ("stdout", "")]
        );
        assert!(parse_log("hello\n").is_err());
    }
}
