//! The `command` sensor (docs/contract.md, Command sensor): runs an operator's `sh -c CMD` once per read and takes
//! one JSON object from its standard output. It covers smart plugs, PDUs, `ipmitool dcmi
//! power reading` behind a `jq`, and makes every downstream path testable.
//!
//! Any failure (exit status, timeout, bad JSON, bad value) makes that one reading wholly
//! unknown, with a reason that quotes what the command said: a half-trusted reading from a
//! misbehaving script is worse than none.

use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use wes_proto::{SensorKind, ThermalState};

use super::{Reading, Sensor};

/// Enough for any sane JSON object; a runaway command cannot fill memory.
const OUTPUT_LIMIT: u64 = 64 * 1024;
/// How much of stdout/stderr an error message quotes.
const SNIPPET_CHARS: usize = 200;

/// The values one command run reported; every one optional.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandValues {
    pub watts: Option<f64>,
    pub energy_joules: Option<f64>,
    pub thermal_state: ThermalState,
    pub temperature_c: Option<f64>,
    /// Requests the engine is working on, where the script knows.
    pub engine_in_flight: Option<u32>,
}

/// Parses the command's whole stdout as exactly one JSON object. `null` counts as absent;
/// keys other than the four are ignored so scripts may carry extra fields.
pub fn parse_command_output(stdout: &str) -> Result<CommandValues, String> {
    let text = stdout.trim();
    if text.is_empty() {
        return Err("printed nothing on stdout (expected one JSON object)".to_string());
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("stdout is not one JSON object ({e}): {}", snippet(text)))?;
    let Value::Object(map) = value else {
        return Err(format!(
            "stdout is JSON but not an object: {}",
            snippet(text)
        ));
    };

    let number = |key: &str| -> Result<Option<f64>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
                _ => Err(format!("\"{key}\" must be a finite number >= 0, got {n}")),
            },
            Some(other) => Err(format!("\"{key}\" must be a number, got {other}")),
        }
    };
    let thermal_state = match map.get("thermal_state") {
        None | Some(Value::Null) => ThermalState::Unknown,
        Some(Value::String(name)) => ThermalState::from_display_name(name).ok_or_else(|| {
            format!(
                "\"thermal_state\" must be one of Normal, Fair, Serious, Critical, Unknown; \
                 got \"{name}\""
            )
        })?,
        Some(other) => return Err(format!("\"thermal_state\" must be a string, got {other}")),
    };
    let engine_in_flight = match number("engine_in_flight")? {
        None => None,
        Some(n) if n.fract() == 0.0 && n <= f64::from(u32::MAX) => Some(n as u32),
        Some(n) => {
            return Err(format!(
                "\"engine_in_flight\" must be a whole number, got {n}"
            ));
        }
    };
    Ok(CommandValues {
        watts: number("watts")?,
        energy_joules: number("energy_joules")?,
        thermal_state,
        temperature_c: number("temperature_c")?,
        engine_in_flight,
    })
}

/// At most [`SNIPPET_CHARS`] characters of `s` on one line, marked when cut.
fn snippet(s: &str) -> String {
    let one_line = s.trim().replace(['\n', '\r'], " ");
    match one_line.char_indices().nth(SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// The command's energy figure is often a lifetime meter (a PDU's kWh). [`Reading`] wants
/// energy since this sensor started, so the first value becomes the baseline, and a meter
/// that goes back (replaced, reset) restarts the count from its new value.
#[derive(Debug, Default)]
struct EnergyBaseline {
    last: Option<f64>,
    total: f64,
}

impl EnergyBaseline {
    fn update(&mut self, now: f64) -> f64 {
        self.total += match self.last {
            None => 0.0,
            Some(prev) if now >= prev => now - prev,
            Some(_) => now,
        };
        self.last = Some(now);
        self.total
    }
}

pub struct CommandSensor {
    command: String,
    timeout: Duration,
    energy: EnergyBaseline,
}

impl CommandSensor {
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        CommandSensor {
            command: command.into(),
            timeout,
            energy: EnergyBaseline::default(),
        }
    }

    async fn read_once(&mut self) -> Reading {
        let out = match run_with_timeout(&self.command, self.timeout).await {
            Ok(out) => out,
            Err(why) => return Reading::unknown(format!("command sensor: {why}")),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let said = if stderr.trim().is_empty() {
                format!("stdout: {}", snippet(&stdout))
            } else {
                format!("stderr: {}", snippet(&stderr))
            };
            return Reading::unknown(format!(
                "command sensor: `{}` {}; {said}",
                self.command, out.status
            ));
        }
        match parse_command_output(&stdout) {
            Ok(v) => Reading {
                watts: v.watts,
                energy_joules: v.energy_joules.map(|e| self.energy.update(e)),
                thermal: v.thermal_state,
                temperature_c: v.temperature_c,
                engine_in_flight: v.engine_in_flight,
                ..Reading::default()
            },
            Err(why) => Reading::unknown(format!("command sensor: `{}` {why}", self.command)),
        }
    }
}

impl Sensor for CommandSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::Command
    }

    fn read(&mut self) -> BoxFuture<'_, Reading> {
        Box::pin(self.read_once())
    }
}

struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `sh -c command` in its own process group, so a timeout kills the whole pipeline
/// (`curl … | jq …`), not just the shell, and no grandchild keeps running or holds the pipes.
async fn run_with_timeout(command: &str, timeout: Duration) -> Result<Output, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {command}`: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let run = async {
        let (status, stdout, stderr) =
            tokio::join!(child.wait(), read_limited(stdout), read_limited(stderr));
        (status, stdout, stderr)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((status, stdout, stderr)) => {
            let status = status.map_err(|e| format!("waiting for `{command}`: {e}"))?;
            Ok(Output {
                status,
                stdout,
                stderr,
            })
        }
        Err(_) => {
            kill_group(pid);
            // Reap it so no zombie is left; SIGKILL makes this quick.
            let _ = child.wait().await;
            Err(format!(
                "`{command}` timed out after {timeout:?} and was killed"
            ))
        }
    }
}

async fn read_limited<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        // A read error only shortens what we quote or parse; the exit status still decides.
        let _ = pipe.take(OUTPUT_LIMIT).read_to_end(&mut buf).await;
    }
    buf
}

fn kill_group(pid: Option<u32>) {
    let Some(pgid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group; the group is the one
    // the child leads (process_group(0)) and the child is not yet reaped, so the id cannot
    // have been reused.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let full = CommandValues {
            watts: Some(212.5),
            energy_joules: Some(1000.0),
            thermal_state: ThermalState::Fair,
            temperature_c: Some(71.0),
            engine_in_flight: None,
        };
        let none = CommandValues {
            watts: None,
            energy_joules: None,
            thermal_state: ThermalState::Unknown,
            temperature_c: None,
            engine_in_flight: None,
        };
        let ok: &[(&str, CommandValues)] = &[
            (
                r#"{"watts": 212.5, "energy_joules": 1000, "thermal_state": "Fair", "temperature_c": 71}"#,
                full.clone(),
            ),
            ("  {}\n", none.clone()),
            (
                r#"{"watts": 80}"#,
                CommandValues {
                    watts: Some(80.0),
                    ..none.clone()
                },
            ),
            (r#"{"watts": null, "thermal_state": null}"#, none.clone()),
            (
                r#"{"thermal_state": "critical", "extra": [1,2]}"#,
                CommandValues {
                    thermal_state: ThermalState::Critical,
                    ..none.clone()
                },
            ),
            (r#"{"thermal_state": "Unknown"}"#, none.clone()),
            (
                r#"{"engine_in_flight": 3}"#,
                CommandValues {
                    engine_in_flight: Some(3),
                    ..none.clone()
                },
            ),
            (
                r#"{"watts": 0}"#,
                CommandValues {
                    watts: Some(0.0),
                    ..none.clone()
                },
            ),
        ];
        for (input, want) in ok {
            assert_eq!(parse_command_output(input).as_ref(), Ok(want), "{input}");
        }

        let bad: &[(&str, &str)] = &[
            ("", "printed nothing"),
            ("   \n", "printed nothing"),
            ("Power: 212 W", "not one JSON object"),
            (r#"{"watts": 1} {"watts": 2}"#, "not one JSON object"),
            ("[1, 2]", "not an object"),
            ("212.5", "not an object"),
            (
                r#"{"watts": -3}"#,
                "\"watts\" must be a finite number >= 0, got -3",
            ),
            (
                r#"{"watts": "212"}"#,
                "\"watts\" must be a number, got \"212\"",
            ),
            (
                r#"{"energy_joules": true}"#,
                "\"energy_joules\" must be a number",
            ),
            (
                r#"{"temperature_c": -1.5}"#,
                "\"temperature_c\" must be a finite number >= 0",
            ),
            (r#"{"watts": 1e999}"#, "not one JSON object"),
            (r#"{"thermal_state": "Hot"}"#, "got \"Hot\""),
            (
                r#"{"engine_in_flight": 1.5}"#,
                "\"engine_in_flight\" must be a whole number",
            ),
            (
                r#"{"thermal_state": 2}"#,
                "\"thermal_state\" must be a string",
            ),
        ];
        for (input, want) in bad {
            let err = parse_command_output(input).unwrap_err();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn snippet_cuts_on_char_boundary() {
        let long = "é".repeat(500);
        let s = snippet(&long);
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
        assert!(s.ends_with('…'));
        assert_eq!(snippet("a\nb"), "a b");
    }

    #[test]
    fn energy_baseline() {
        let mut e = EnergyBaseline::default();
        let seen: Vec<f64> = [5000.0, 5010.0, 5010.0, 20.0, 25.0]
            .map(|v| e.update(v))
            .to_vec();
        assert_eq!(seen, vec![0.0, 10.0, 10.0, 30.0, 35.0]);
    }

    fn sensor(cmd: &str) -> CommandSensor {
        CommandSensor::new(cmd, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn good_output() {
        let mut s = sensor(
            r#"echo '{"watts": 212.5, "energy_joules": 100, "thermal_state": "Serious", "temperature_c": 81}'"#,
        );
        let r = s.read().await;
        assert_eq!(r.watts, Some(212.5));
        assert_eq!(r.energy_joules, Some(0.0));
        assert_eq!(r.thermal, ThermalState::Serious);
        assert_eq!(r.temperature_c, Some(81.0));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(s.kind(), SensorKind::Command);
    }

    #[tokio::test]
    async fn energy_rebased_across_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("e");
        std::fs::write(&file, "1000").unwrap();
        let mut s = sensor(&format!(
            r#"printf '{{"energy_joules": %s}}' "$(cat {})""#,
            file.display()
        ));
        assert_eq!(s.read().await.energy_joules, Some(0.0));
        std::fs::write(&file, "1250.5").unwrap();
        assert_eq!(s.read().await.energy_joules, Some(250.5));
    }

    #[tokio::test]
    async fn partial_output() {
        let r = sensor(r#"echo '{"watts": 42}'"#).read().await;
        assert_eq!(r.watts, Some(42.0));
        assert_eq!(r.energy_joules, None);
        assert_eq!(r.thermal, ThermalState::Unknown);
        assert!(r.errors.is_empty());
    }

    #[tokio::test]
    async fn garbage_is_unknown_with_snippet() {
        let r = sensor("echo 'Current Power : 212 Watts'").read().await;
        assert_eq!(r.watts, None);
        assert_eq!(r.thermal, ThermalState::Unknown);
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0].contains("not one JSON object"),
            "{}",
            r.errors[0]
        );
        assert!(
            r.errors[0].contains("Current Power : 212 Watts"),
            "{}",
            r.errors[0]
        );
    }

    #[tokio::test]
    async fn negative_watts_is_unknown() {
        let r = sensor(r#"echo '{"watts": -3, "thermal_state": "Normal"}'"#)
            .read()
            .await;
        assert_eq!(r.watts, None);
        assert_eq!(
            r.thermal,
            ThermalState::Unknown,
            "the whole reading is dropped"
        );
        assert!(
            r.errors[0].contains("\"watts\" must be a finite number >= 0"),
            "{:?}",
            r.errors
        );
    }

    #[tokio::test]
    async fn nonzero_exit_quotes_stderr() {
        let r = sensor(r#"echo '{"watts": 1}'; echo 'ipmi: no BMC' >&2; exit 3"#)
            .read()
            .await;
        assert_eq!(r.watts, None);
        let e = &r.errors[0];
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("stderr: ipmi: no BMC"), "{e}");
    }

    #[tokio::test]
    async fn nonzero_exit_without_stderr_quotes_stdout() {
        let r = sensor("echo partial; exit 1").read().await;
        assert!(r.errors[0].contains("stdout: partial"), "{:?}", r.errors);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // A pipeline whose grandchild would outlive a plain kill of `sh`.
        let cmd = format!(
            "(sleep 2; touch {}) & sleep 30; echo '{{}}'",
            marker.display()
        );
        let mut s = CommandSensor::new(cmd, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let r = s.read().await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(r.thermal, ThermalState::Unknown);
        assert!(
            r.errors[0].contains("timed out after 300ms"),
            "{:?}",
            r.errors
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a grandchild survived the timeout");
    }

    #[tokio::test]
    async fn missing_program_is_an_exit_status() {
        let r = sensor("definitely-not-a-command-wes").read().await;
        assert!(r.errors[0].contains("exit status: 127"), "{:?}", r.errors);
        assert!(r.errors[0].contains("not found"), "{:?}", r.errors);
    }
}
