//! The usage log (`[usage] log = PATH`): the ledger as append-only JSON lines, so that usage
//! survives a restart. One line per settled request, one per node per minute for the energy
//! drawn with nothing in flight. At start the ledger is rebuilt from the file; a torn last line
//! (a crash mid-write) is skipped and reported.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ledger::{Entry, Ledger};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    Request(Entry),
    /// A node's energy over one minute's intervals.
    Node {
        t: u64,
        node: Arc<str>,
        idle_joules: f64,
        measured_joules: f64,
    },
}

impl Line {
    fn apply(self, ledger: &mut Ledger) {
        match self {
            Line::Request(entry) => ledger.add(&entry),
            Line::Node {
                t,
                node,
                idle_joules,
                measured_joules,
            } => ledger.add_node_energy(&node, t, idle_joules, measured_joules),
        }
    }
}

/// Lines read back, and how many could not be.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    pub lines: u64,
    pub skipped: u64,
}

/// Rebuilds `ledger` from the file at `path`; a missing file is an empty log.
pub fn replay(path: &Path, ledger: &mut Ledger) -> std::io::Result<Replayed> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(e),
    };
    let mut replayed = Replayed::default();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(l) => {
                l.apply(ledger);
                replayed.lines += 1;
            }
            Err(_) => replayed.skipped += 1,
        }
    }
    Ok(replayed)
}

/// Appends lines, each written whole and flushed, so a crash loses at most the line in hand.
pub struct Writer {
    file: File,
}

impl Writer {
    /// Opens for appending; a torn last line is ended first, so the next line starts clean.
    pub fn open(path: &Path) -> std::io::Result<Writer> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(Writer { file })
    }

    pub fn append(&mut self, line: &Line) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_rebuilt_from_its_log_reports_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        let mut ledger = Ledger::default();
        let mut writer = Writer::open(&path).unwrap();
        let e = Entry {
            at_unix_ms: 1_000,
            key: Some("team-a".into()),
            model: "m".into(),
            node: "n".into(),
            input_tokens: 3,
            output_tokens: 9,
            requests: 1,
            joules: 12.5,
            baseline_joules: 2.0,
            cost: Some(0.001),
            carbon_g: None,
            complete: true,
        };
        ledger.add(&e);
        writer.append(&Line::Request(e.clone())).unwrap();
        let node = Line::Node {
            t: 2_000,
            node: "n".into(),
            idle_joules: 4.0,
            measured_joules: 16.5,
        };
        writer.append(&node).unwrap();
        ledger.add_node_energy(&"n".into(), 2_000, 4.0, 16.5);
        // A torn last line, as a crash leaves it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"kind\":\"request\",\"t\":3")
            .unwrap();
        // Reopened after the crash: the next line starts on its own line.
        Writer::open(&path).unwrap().append(&node).unwrap();
        ledger.add_node_energy(&"n".into(), 2_000, 4.0, 16.5);
        let mut rebuilt = Ledger::default();
        let replayed = replay(&path, &mut rebuilt).unwrap();
        assert_eq!(
            replayed,
            Replayed {
                lines: 3,
                skipped: 1
            }
        );
        assert_eq!(rebuilt.report(None), ledger.report(None));
        let missing = replay(&dir.path().join("none"), &mut Ledger::default()).unwrap();
        assert_eq!(missing, Replayed::default());
    }
}
