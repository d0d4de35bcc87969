//! Linux CPU nodes through sysfs: RAPL energy counters for power, hwmon and thermal zones for
//! temperature, the CPU thermal-throttle counters, and `/proc/stat` for utilization.
//!
//! Every path is taken relative to a `sysfs_root` (and an optional `proc_root`) so the whole
//! sensor runs against fixture trees in tests. Reading sysfs is blocking I/O, so each read
//! scans on tokio's blocking pool and then folds the scan into the sensor's state with pure
//! code.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::future::BoxFuture;
use wes_proto::SensorKind;

use super::{Reading, Sensor};
use crate::sensor::thermal::{
    HwmonTemp, LinuxSignals, ThermalThresholds, TripKind, ZoneTemp, linux_state,
};

/// Energy gained by a RAPL counter between two reads, in µJ.
///
/// The counter wraps to 0 after `max_energy_range_uj`, so a smaller value means one wrap
/// (reads are seconds apart; one wrap takes many minutes even at full load). A counter
/// without a known range, or above it, cannot be unwrapped: its new value is taken as the
/// energy since a reset.
pub fn energy_delta_uj(prev: u64, now: u64, max_range_uj: Option<u64>) -> u64 {
    if now >= prev {
        return now - prev;
    }
    match max_range_uj {
        Some(max) if max >= prev => max - prev + now,
        _ => now,
    }
}

/// Why reading a RAPL counter failed, with the fix when it is the usual permission problem.
pub fn rapl_error_text(path: &Path, err: &io::Error) -> String {
    if err.kind() == io::ErrorKind::PermissionDenied {
        format!(
            "cannot read {}: permission denied. Since Linux 5.10 RAPL energy counters are \
             readable only by root (CVE-2020-8694, \"Platypus\"), so power is unknown. Fix: run \
             wes-reporter as root, or grant its user read access with a udev rule such as \
             `ACTION==\"add\", SUBSYSTEM==\"powercap\", RUN+=\"/bin/chgrp wes /sys%p/energy_uj\", \
             RUN+=\"/bin/chmod g+r /sys%p/energy_uj\"` (or `chmod g+r` / `chgrp` on \
             /sys/class/powercap/intel-rapl:*/energy_uj after each boot); prefer a group over \
             a+r, which reopens the side channel to every user",
            path.display()
        )
    } else {
        format!("cannot read {}: {err}", path.display())
    }
}

/// Picks the RAPL zones whose sum is the CPU's power without counting anything twice.
///
/// `entries` are `class/powercap` directory names with their `name` file. Subzones
/// (`intel-rapl:0:0`, core/uncore/dram) are inside their package, `intel-rapl-mmio:*`
/// repeats the package through MMIO, and `psys` (whole platform) contains the packages: so
/// the packages when there are any, else psys, else every top-level zone.
pub fn select_rapl_zones(entries: &[(String, Option<String>)]) -> Vec<String> {
    let top: Vec<&(String, Option<String>)> = entries
        .iter()
        .filter(|(dir, _)| is_top_level_rapl(dir))
        .collect();
    let named = |pred: &dyn Fn(&str) -> bool| -> Vec<String> {
        top.iter()
            .filter(|(_, name)| name.as_deref().is_some_and(pred))
            .map(|(dir, _)| dir.clone())
            .collect()
    };
    let packages = named(&|n| n.starts_with("package"));
    if !packages.is_empty() {
        return packages;
    }
    let psys = named(&|n| n == "psys");
    if !psys.is_empty() {
        return psys;
    }
    top.iter().map(|(dir, _)| dir.clone()).collect()
}

fn is_top_level_rapl(dir: &str) -> bool {
    dir.strip_prefix("intel-rapl:")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// sysfs temperatures are integer millidegrees Celsius.
pub fn parse_millidegrees(s: &str) -> Option<f64> {
    let v = s.trim().parse::<i64>().ok()? as f64 / 1000.0;
    // Disconnected inputs read -128, -273 or 255; none is a running machine.
    (-40.0..=150.0).contains(&v).then_some(v)
}

/// The aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|v| v.parse().ok())
        .collect();
    if f.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal; guest time is already inside user.
    let total: u64 = f.iter().take(8).sum();
    let idle = f[3] + f.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

pub fn cpu_busy_pct(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(prev.total)?;
    let busy = now.busy.checked_sub(prev.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

/// The node temperature to report: the hottest CPU sensor when the machine names one,
/// otherwise the hottest of all (an NVMe is a poor proxy, but better than nothing).
pub fn pick_temperature(sources: &[(String, f64)]) -> Option<f64> {
    const CPU: &[&str] = &[
        "coretemp",
        "k10temp",
        "zenpower",
        "cpu_thermal",
        "cpu-thermal",
        "x86_pkg_temp",
        "soc_thermal",
        "cpu",
    ];
    let hottest = |cpu_only: bool| {
        sources
            .iter()
            .filter(|(name, _)| !cpu_only || CPU.contains(&name.as_str()))
            .map(|(_, t)| *t)
            .reduce(f64::max)
    };
    hottest(true).or_else(|| hottest(false))
}

/// One RAPL zone as read in one scan.
#[derive(Debug)]
struct RaplRead {
    dir: String,
    energy_uj: Result<u64, String>,
    max_range_uj: Option<u64>,
}

/// Everything one pass over sysfs and procfs found; no interpretation yet.
#[derive(Debug, Default)]
struct Scan {
    powercap_present: bool,
    rapl: Vec<RaplRead>,
    hwmon: Vec<(String, HwmonTemp)>,
    zones: Vec<(String, ZoneTemp)>,
    temp_error: Option<String>,
    throttle_total: Option<u64>,
    cpu_times: Option<Result<CpuTimes, String>>,
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string())
}

/// Directory entries of `dir` whose names start with `prefix`, sorted so scans (and
/// therefore error messages) are stable.
fn entries(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.starts_with(prefix).then(|| (name, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn scan(sysfs: &Path, proc_root: Option<&Path>) -> Scan {
    let powercap = sysfs.join("class/powercap");
    let (powercap_present, rapl) = scan_rapl(&powercap);
    let mut temp_error = None;
    let hwmon = scan_hwmon(&sysfs.join("class/hwmon"), &mut temp_error);
    let zones = scan_zones(&sysfs.join("class/thermal"), &mut temp_error);
    Scan {
        powercap_present,
        rapl,
        hwmon,
        zones,
        temp_error,
        throttle_total: scan_throttle(&sysfs.join("devices/system/cpu")),
        cpu_times: proc_root.map(|root| read_cpu_times(&root.join("stat"))),
    }
}

fn scan_rapl(powercap: &Path) -> (bool, Vec<RaplRead>) {
    let zones = entries(powercap, "intel-rapl");
    let named: Vec<(String, Option<String>)> = zones
        .iter()
        .map(|(dir, path)| (dir.clone(), read_trimmed(&path.join("name")).ok()))
        .collect();
    let reads = select_rapl_zones(&named)
        .into_iter()
        .map(|dir| {
            let zone = powercap.join(&dir);
            let path = zone.join("energy_uj");
            let energy_uj = read_trimmed(&path)
                .map_err(|e| rapl_error_text(&path, &e))
                .and_then(|v| {
                    v.parse::<u64>()
                        .map_err(|e| format!("{}: not a counter ({e}): {v:?}", path.display()))
                });
            let max_range_uj = read_trimmed(&zone.join("max_energy_range_uj"))
                .ok()
                .and_then(|v| v.parse().ok());
            RaplRead {
                dir,
                energy_uj,
                max_range_uj,
            }
        })
        .collect();
    (!zones.is_empty(), reads)
}

/// A single unreadable input is normal (a sleeping device); it only matters, and is only
/// reported, when no temperature at all could be read.
fn scan_hwmon(class: &Path, last_error: &mut Option<String>) -> Vec<(String, HwmonTemp)> {
    let mut out = Vec::new();
    for (_, dir) in entries(class, "hwmon") {
        let name = read_trimmed(&dir.join("name")).unwrap_or_else(|_| "hwmon".to_string());
        for (file, path) in entries(&dir, "temp") {
            let Some(base) = file.strip_suffix("_input") else {
                continue;
            };
            let limit = |suffix: &str| {
                read_trimmed(&dir.join(format!("{base}_{suffix}")))
                    .ok()
                    .and_then(|v| parse_millidegrees(&v))
            };
            match read_trimmed(&path) {
                Ok(v) => {
                    if let Some(temp_c) = parse_millidegrees(&v) {
                        let t = HwmonTemp {
                            temp_c,
                            max_c: limit("max"),
                            crit_c: limit("crit"),
                        };
                        out.push((name.clone(), t));
                    }
                }
                Err(e) => *last_error = Some(format!("{}: {e}", path.display())),
            }
        }
    }
    out
}

fn scan_zones(class: &Path, last_error: &mut Option<String>) -> Vec<(String, ZoneTemp)> {
    let mut out = Vec::new();
    for (_, dir) in entries(class, "thermal_zone") {
        let kind = read_trimmed(&dir.join("type")).unwrap_or_else(|_| "thermal_zone".to_string());
        let temp_path = dir.join("temp");
        let temp_c = match read_trimmed(&temp_path) {
            Ok(v) => parse_millidegrees(&v),
            Err(e) => {
                *last_error = Some(format!("{}: {e}", temp_path.display()));
                None
            }
        };
        let Some(temp_c) = temp_c else { continue };
        let mut trips = Vec::new();
        for (file, path) in entries(&dir, "trip_point_") {
            let Some(base) = file.strip_suffix("_type") else {
                continue;
            };
            let kind = read_trimmed(&path).ok().and_then(|k| TripKind::parse(&k));
            let temp = read_trimmed(&dir.join(format!("{base}_temp")))
                .ok()
                .and_then(|v| parse_millidegrees(&v));
            if let (Some(k), Some(t)) = (kind, temp) {
                trips.push((k, t));
            }
        }
        out.push((kind, ZoneTemp { temp_c, trips }));
    }
    out
}

/// The sum of every CPU's throttle counters; only its growth matters. (Each CPU repeats its
/// package's count, which inflates the sum but not whether it grew.)
fn scan_throttle(cpus: &Path) -> Option<u64> {
    let mut total: Option<u64> = None;
    for (_, cpu) in entries(cpus, "cpu") {
        for counter in ["core_throttle_count", "package_throttle_count"] {
            let v = read_trimmed(&cpu.join("thermal_throttle").join(counter)).ok();
            if let Some(v) = v.and_then(|v| v.parse::<u64>().ok()) {
                total = Some(total.unwrap_or(0).saturating_add(v));
            }
        }
    }
    total
}

fn read_cpu_times(path: &Path) -> Result<CpuTimes, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_proc_stat(&text).ok_or_else(|| format!("{}: no aggregate cpu line", path.display()))
}

/// What the sensor found under a sysfs root, for auto-detection: `Ok` says what will be
/// used, `Err` why nothing can be.
pub fn probe(sysfs_root: &Path) -> Result<String, String> {
    let s = scan(sysfs_root, None);
    let readable = s.rapl.iter().filter(|z| z.energy_uj.is_ok()).count();
    let temps = s.hwmon.len() + s.zones.len();
    let rapl_problem = if !s.powercap_present {
        Some(format!(
            "no RAPL zone under {}",
            sysfs_root.join("class/powercap").display()
        ))
    } else if readable == 0 {
        s.rapl
            .iter()
            .find_map(|z| z.energy_uj.as_ref().err().cloned())
    } else {
        None
    };
    let mut found = Vec::new();
    if readable > 0 {
        found.push(format!("RAPL energy from {readable} zone(s)"));
    }
    if temps > 0 {
        found.push(format!("{temps} temperature source(s)"));
    }
    match (found.is_empty(), rapl_problem) {
        (true, problem) => Err(format!(
            "no readable RAPL counter and no hwmon/thermal-zone temperature under {}{}",
            sysfs_root.display(),
            problem.map(|p| format!(" ({p})")).unwrap_or_default()
        )),
        (false, Some(problem)) => Ok(format!("{}; power unknown: {problem}", found.join(", "))),
        (false, None) => Ok(found.join(", ")),
    }
}

#[derive(Debug)]
struct ZoneCounter {
    last_uj: u64,
}

pub struct LinuxSensor {
    sysfs_root: PathBuf,
    proc_root: Option<PathBuf>,
    thresholds: ThermalThresholds,
    zones: BTreeMap<String, ZoneCounter>,
    energy_total_uj: u128,
    /// The instant and total of the last read where every zone answered: watts are the
    /// energy between two such reads, so a failed read in between only widens the window.
    last_complete: Option<(Instant, u128)>,
    last_throttle: Option<u64>,
    last_cpu: Option<CpuTimes>,
}

impl LinuxSensor {
    /// Utilization comes from `/proc/stat` only when `sysfs_root` is the real `/sys`: a
    /// fixture tree must not be mixed with the host's load.
    pub fn new(sysfs_root: PathBuf, thresholds: ThermalThresholds) -> Self {
        let proc_root = (sysfs_root == Path::new("/sys")).then(|| PathBuf::from("/proc"));
        Self::with_proc_root(sysfs_root, proc_root, thresholds)
    }

    pub fn with_proc_root(
        sysfs_root: PathBuf,
        proc_root: Option<PathBuf>,
        thresholds: ThermalThresholds,
    ) -> Self {
        LinuxSensor {
            sysfs_root,
            proc_root,
            thresholds,
            zones: BTreeMap::new(),
            energy_total_uj: 0,
            last_complete: None,
            last_throttle: None,
            last_cpu: None,
        }
    }

    /// A read stamped with `now`, so tests control the time base of watts.
    pub async fn read_at(&mut self, now: Instant) -> Reading {
        let sysfs = self.sysfs_root.clone();
        let proc_root = self.proc_root.clone();
        match tokio::task::spawn_blocking(move || scan(&sysfs, proc_root.as_deref())).await {
            Ok(s) => self.fold(s, now),
            Err(e) => Reading::unknown(format!("linux sensor: sysfs scan failed: {e}")),
        }
    }

    fn fold(&mut self, s: Scan, now: Instant) -> Reading {
        let mut r = Reading::default();

        self.fold_energy(&s, now, &mut r);

        let throttle_grew = match (self.last_throttle, s.throttle_total) {
            (Some(prev), Some(now)) => now > prev,
            _ => false,
        };
        if s.throttle_total.is_some() {
            self.last_throttle = s.throttle_total;
        }
        r.cpu_throttled = throttle_grew;

        let signals = LinuxSignals {
            hwmon: s.hwmon.iter().map(|(_, t)| t.clone()).collect(),
            zones: s.zones.iter().map(|(_, z)| z.clone()).collect(),
            throttle_grew,
        };
        r.thermal = linux_state(&signals, &self.thresholds);
        let temps: Vec<(String, f64)> = s
            .hwmon
            .iter()
            .map(|(n, t)| (n.clone(), t.temp_c))
            .chain(s.zones.iter().map(|(n, z)| (n.clone(), z.temp_c)))
            .collect();
        r.temperature_c = pick_temperature(&temps);
        if temps.is_empty() {
            r.errors.push(format!(
                "no hwmon temp*_input or thermal_zone*/temp readable under {}{}",
                self.sysfs_root.display(),
                s.temp_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ));
        }

        match s.cpu_times {
            Some(Ok(now_times)) => {
                r.utilization_pct = self.last_cpu.and_then(|prev| cpu_busy_pct(prev, now_times));
                self.last_cpu = Some(now_times);
            }
            Some(Err(e)) => r.errors.push(format!("utilization unknown: {e}")),
            None => {}
        }
        r
    }

    fn fold_energy(&mut self, s: &Scan, now: Instant, r: &mut Reading) {
        if s.rapl.is_empty() {
            r.errors.push(format!(
                "power unknown: no RAPL zone under {} (no intel_rapl/powercap driver, or a \
                 virtual machine)",
                self.sysfs_root.join("class/powercap").display()
            ));
            return;
        }
        let mut complete = true;
        for zone in &s.rapl {
            match &zone.energy_uj {
                Ok(uj) => {
                    let delta = match self.zones.get(&zone.dir) {
                        Some(c) => energy_delta_uj(c.last_uj, *uj, zone.max_range_uj),
                        None => 0,
                    };
                    self.energy_total_uj += u128::from(delta);
                    self.zones
                        .insert(zone.dir.clone(), ZoneCounter { last_uj: *uj });
                }
                Err(e) => {
                    complete = false;
                    r.errors.push(e.clone());
                }
            }
        }
        if !complete {
            return;
        }
        let total = self.energy_total_uj;
        r.energy_joules = Some(total as f64 / 1e6);
        match self.last_complete {
            Some((then, prev)) => {
                let secs = now.saturating_duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    r.watts = Some(total.saturating_sub(prev) as f64 / 1e6 / secs);
                } else {
                    r.errors
                        .push("watts unknown: two RAPL reads at the same instant".to_string());
                }
            }
            None => r.errors.push(
                "watts unknown until the second reading (RAPL counts energy, not power)"
                    .to_string(),
            ),
        }
        self.last_complete = Some((now, total));
    }
}

impl Sensor for LinuxSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::Linux
    }

    fn read(&mut self) -> BoxFuture<'_, Reading> {
        Box::pin(self.read_at(Instant::now()))
    }
}

/// Copies a fixture tree from `tests/fixtures/NAME` into a fresh temp dir that tests may
/// rewrite. Shared with the auto-detection tests.
#[cfg(test)]
pub(crate) fn copy_fixture(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        let _ = std::fs::create_dir_all(to);
        for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &target);
            } else if let Err(err) = std::fs::copy(e.path(), &target) {
                panic!("copying fixture {}: {err}", e.path().display());
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(src.is_dir(), "missing fixture {}", src.display());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    copy(&src, dir.path());
    dir
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wes_proto::ThermalState;

    fn write(root: &Path, rel: &str, value: &str) {
        std::fs::write(root.join(rel), value).unwrap();
    }

    const PKG: &str = "class/powercap/intel-rapl:0/energy_uj";

    #[test]
    fn energy_delta_table() {
        let max = Some(262_143_328_850);
        assert_eq!(energy_delta_uj(1_000, 1_500, max), 500);
        assert_eq!(energy_delta_uj(1_000, 1_000, max), 0);
        assert_eq!(
            energy_delta_uj(262_143_000_000, 1_000_000, max),
            328_850 + 1_000_000,
            "wrap"
        );
        assert_eq!(
            energy_delta_uj(5_000, 100, None),
            100,
            "no range: treated as reset"
        );
        assert_eq!(
            energy_delta_uj(5_000, 100, Some(1_000)),
            100,
            "prev above range: reset"
        );
    }

    #[test]
    fn zone_selection() {
        let e = |d: &str, n: Option<&str>| (d.to_string(), n.map(str::to_string));
        let desktop = [
            e("intel-rapl", None),
            e("intel-rapl:0", Some("package-0")),
            e("intel-rapl:0:0", Some("core")),
            e("intel-rapl:1", Some("psys")),
            e("intel-rapl-mmio:0", Some("package-0")),
        ];
        assert_eq!(select_rapl_zones(&desktop), vec!["intel-rapl:0"]);
        let two_sockets = [
            e("intel-rapl:0", Some("package-0")),
            e("intel-rapl:1", Some("package-1")),
        ];
        assert_eq!(
            select_rapl_zones(&two_sockets),
            vec!["intel-rapl:0", "intel-rapl:1"]
        );
        let psys_only = [
            e("intel-rapl:1", Some("psys")),
            e("intel-rapl:1:0", Some("x")),
        ];
        assert_eq!(select_rapl_zones(&psys_only), vec!["intel-rapl:1"]);
        let unnamed = [e("intel-rapl:0", None), e("intel-rapl:0:1", None)];
        assert_eq!(select_rapl_zones(&unnamed), vec!["intel-rapl:0"]);
        assert!(select_rapl_zones(&[e("intel-rapl:", None), e("intel-rapl:x", None)]).is_empty());
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_millidegrees("45000\n"), Some(45.0));
        assert_eq!(parse_millidegrees("-273150"), None);
        assert_eq!(parse_millidegrees("255000"), None);
        assert_eq!(parse_millidegrees("hot"), None);
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(
            parse_proc_stat(stat),
            Some(CpuTimes {
                busy: 150,
                total: 1000
            })
        );
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        let a = CpuTimes {
            busy: 150,
            total: 1000,
        };
        assert_eq!(
            cpu_busy_pct(
                a,
                CpuTimes {
                    busy: 200,
                    total: 1100
                }
            ),
            Some(50.0)
        );
        assert_eq!(cpu_busy_pct(a, a), None);
        assert_eq!(cpu_busy_pct(a, CpuTimes { busy: 0, total: 0 }), None);
        let t = |n: &str, v: f64| (n.to_string(), v);
        assert_eq!(
            pick_temperature(&[t("nvme", 60.0), t("coretemp", 45.0)]),
            Some(45.0)
        );
        assert_eq!(
            pick_temperature(&[t("nvme", 60.0), t("acpitz", 30.0)]),
            Some(60.0)
        );
        assert_eq!(pick_temperature(&[]), None);
    }

    #[test]
    fn permission_error_explains_platypus_and_fix() {
        let err = io::Error::from(io::ErrorKind::PermissionDenied);
        let text = rapl_error_text(
            Path::new("/sys/class/powercap/intel-rapl:0/energy_uj"),
            &err,
        );
        for needle in [
            "permission denied",
            "5.10",
            "CVE-2020-8694",
            "Platypus",
            "root",
            "udev",
            "chmod",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        let other = rapl_error_text(Path::new("/x"), &io::Error::from(io::ErrorKind::NotFound));
        assert!(!other.contains("Platypus"));
    }

    #[tokio::test]
    async fn desktop_watts_from_energy_counter() {
        let dir = copy_fixture("sysfs-desktop");
        let root = dir.path();
        let mut s = LinuxSensor::new(root.to_path_buf(), ThermalThresholds::default());
        let t0 = Instant::now();

        let r = s.read_at(t0).await;
        assert_eq!(r.energy_joules, Some(0.0));
        assert_eq!(r.watts, None);
        assert!(
            r.errors.iter().any(|e| e.contains("second reading")),
            "{:?}",
            r.errors
        );
        assert_eq!(r.thermal, ThermalState::Normal);
        assert_eq!(r.temperature_c, Some(45.0));
        assert_eq!(r.utilization_pct, None, "no /proc for a fixture root");
        assert!(!r.cpu_throttled);

        // 30 J in 2 s on the package; the subzones, psys and MMIO move too but must not count.
        write(root, PKG, "1030000000");
        write(root, "class/powercap/intel-rapl:0:0/energy_uj", "620000000");
        write(root, "class/powercap/intel-rapl:1/energy_uj", "3090000000");
        write(
            root,
            "class/powercap/intel-rapl-mmio:0/energy_uj",
            "1030000000",
        );
        let r = s.read_at(t0 + Duration::from_secs(2)).await;
        assert_eq!(r.energy_joules, Some(30.0));
        assert_eq!(r.watts, Some(15.0));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(s.kind(), SensorKind::Linux);
    }

    #[tokio::test]
    async fn hot_fixture_wraparound_and_throttling() {
        let dir = copy_fixture("sysfs-hot");
        let root = dir.path();
        let mut s = LinuxSensor::new(root.to_path_buf(), ThermalThresholds::default());
        let t0 = Instant::now();
        let r = s.read_at(t0).await;
        assert_eq!(
            r.thermal,
            ThermalState::Serious,
            "92 °C is above temp1_max 90"
        );
        assert_eq!(r.temperature_c, Some(92.0));
        assert!(
            !r.cpu_throttled,
            "the first read has nothing to compare with"
        );

        // The counter wraps: 262143000000 -> max 262143328850 -> 0 -> 99671150.
        write(root, PKG, "99671150");
        write(
            root,
            "devices/system/cpu/cpu2/thermal_throttle/core_throttle_count",
            "18",
        );
        let r = s.read_at(t0 + Duration::from_secs(1)).await;
        assert_eq!(r.energy_joules, Some(100.0));
        assert_eq!(r.watts, Some(100.0));
        assert!(r.cpu_throttled);
        assert_eq!(r.thermal, ThermalState::Serious);

        write(root, "class/hwmon/hwmon0/temp1_input", "101000");
        let r = s.read_at(t0 + Duration::from_secs(2)).await;
        assert_eq!(r.thermal, ThermalState::Critical);
        assert!(!r.cpu_throttled, "counters did not grow again");
        assert_eq!(r.watts, Some(0.0));
    }

    #[tokio::test]
    async fn failed_zone_read_widens_the_window() {
        let dir = copy_fixture("sysfs-hot");
        let root = dir.path();
        let mut s = LinuxSensor::new(root.to_path_buf(), ThermalThresholds::default());
        let t0 = Instant::now();
        write(root, PKG, "1000000");
        s.read_at(t0).await;
        write(root, PKG, "garbage");
        let r = s.read_at(t0 + Duration::from_secs(1)).await;
        assert_eq!((r.energy_joules, r.watts), (None, None));
        assert!(
            r.errors.iter().any(|e| e.contains("not a counter")),
            "{:?}",
            r.errors
        );
        write(root, PKG, "41000000");
        let r = s.read_at(t0 + Duration::from_secs(4)).await;
        assert_eq!(r.energy_joules, Some(40.0));
        assert_eq!(
            r.watts,
            Some(10.0),
            "40 J over the 4 s since the last complete read"
        );
    }

    #[tokio::test]
    async fn no_rapl_still_reports_temperatures() {
        let dir = copy_fixture("sysfs-norapl");
        let mut s = LinuxSensor::new(dir.path().to_path_buf(), ThermalThresholds::default());
        let r = s.read().await;
        assert_eq!((r.watts, r.energy_joules), (None, None));
        assert!(
            r.errors.iter().any(|e| e.contains("no RAPL zone")),
            "{:?}",
            r.errors
        );
        assert_eq!(
            r.thermal,
            ThermalState::Fair,
            "the NVMe is within 5 °C of its max"
        );
        assert_eq!(
            r.temperature_c,
            Some(55.125),
            "the CPU sensor, not the hotter NVMe"
        );
    }

    #[tokio::test]
    async fn empty_root_is_unknown_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LinuxSensor::new(dir.path().to_path_buf(), ThermalThresholds::default());
        let r = s.read().await;
        assert_eq!(r.thermal, ThermalState::Unknown);
        assert_eq!((r.watts, r.temperature_c), (None, None));
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    }

    #[tokio::test]
    async fn utilization_from_proc_root() {
        let sys = copy_fixture("sysfs-desktop");
        let proc_dir = copy_fixture("proc");
        let mut s = LinuxSensor::with_proc_root(
            sys.path().to_path_buf(),
            Some(proc_dir.path().to_path_buf()),
            ThermalThresholds::default(),
        );
        assert_eq!(s.read().await.utilization_pct, None);
        // +300 busy ticks (user) and +100 idle ticks.
        write(
            proc_dir.path(),
            "stat",
            "cpu  10300 500 3000 80100 1000 200 300 0 0 0\n",
        );
        assert_eq!(s.read().await.utilization_pct, Some(75.0));
        std::fs::remove_file(proc_dir.path().join("stat")).unwrap();
        let r = s.read().await;
        assert!(
            r.errors
                .iter()
                .any(|e| e.starts_with("utilization unknown")),
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn probe_fixtures() {
        let desktop = copy_fixture("sysfs-desktop");
        let found = probe(desktop.path()).unwrap();
        assert!(found.contains("RAPL energy from 1 zone(s)"), "{found}");
        assert!(found.contains("6 temperature source(s)"), "{found}");
        let norapl = copy_fixture("sysfs-norapl");
        let found = probe(norapl.path()).unwrap();
        assert!(found.contains("power unknown: no RAPL zone"), "{found}");
        let empty = tempfile::tempdir().unwrap();
        let why = probe(empty.path()).unwrap_err();
        assert!(why.contains("no readable RAPL counter"), "{why}");
    }

    /// Only meaningful where the real /sys has RAPL: as root it reads, otherwise the error
    /// must be the explained one.
    #[tokio::test]
    async fn real_sys_never_panics() {
        let mut s = LinuxSensor::new(PathBuf::from("/sys"), ThermalThresholds::default());
        let r = s.read().await;
        for e in &r.errors {
            if e.contains("energy_uj") && e.contains("permission denied") {
                assert!(e.contains("Platypus"), "{e}");
            }
        }
    }
}
