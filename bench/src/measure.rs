//! Measuring one whole process: wall time, user and system CPU time and peak RSS (GNU time,
//! i.e. the child's `wait4` rusage), plus what else the machine did meanwhile: the REST
//! server's CPU time and everybody else's ("background", from /proc/stat), so a noisy
//! measurement can be seen as such.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

const GNU_TIME: &str = "/usr/bin/time";

/// A command line to measure.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Short name for log files ("restic-backup-initial").
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    /// Variables removed from the inherited environment.
    pub env_remove: Vec<String>,
}

impl Invocation {
    pub fn new(label: &str, program: impl Into<PathBuf>) -> Invocation {
        Invocation {
            label: label.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Invocation {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Invocation {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The command itself, unmeasured.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for key in &self.env_remove {
            cmd.env_remove(key);
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs it unmeasured, failing with its output if it fails; returns stdout.
    pub fn run_plain(&self) -> Result<String> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.label))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                self.label,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// What one measured process cost.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
    pub major_faults: u64,
    /// CPU time the REST server used meanwhile.
    pub server_cpu_s: f64,
    /// Cores busy with anything else (other users' builds...) on average meanwhile.
    pub background_cores: f64,
}

impl Sample {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

/// Runs invocations under GNU time, one at a time.
pub struct Meter {
    log_dir: PathBuf,
    server_pid: Option<u32>,
    drop_caches: bool,
    clock_ticks: f64,
    count: u32,
}

impl Meter {
    pub fn new(log_dir: &Path, drop_caches: bool) -> Result<Meter> {
        if !Path::new(GNU_TIME).is_file() {
            bail!("{GNU_TIME} (GNU time) is needed: apt-get install time");
        }
        fs::create_dir_all(log_dir)?;
        Ok(Meter {
            log_dir: log_dir.to_path_buf(),
            server_pid: None,
            drop_caches,
            clock_ticks: clock_ticks(),
            count: 0,
        })
    }

    pub fn set_server_pid(&mut self, pid: u32) {
        self.server_pid = Some(pid);
    }

    /// Runs `inv` measured; returns the sample and the process's stdout. Fails if it fails.
    pub fn run(&mut self, inv: &Invocation) -> Result<(Sample, String)> {
        self.count += 1;
        let base = self.log_dir.join(format!("{:03}-{}", self.count, inv.label));
        let time_file = base.with_extension("time");
        let out_file = base.with_extension("out");
        let err_file = base.with_extension("err");
        if self.drop_caches {
            drop_page_cache()?;
        }
        let mut timed = Command::new(GNU_TIME);
        timed.arg("-f").arg("%e %U %S %M %F").arg("-o").arg(&time_file).arg(&inv.program).args(&inv.args);
        for key in &inv.env_remove {
            timed.env_remove(key);
        }
        for (key, value) in &inv.env {
            timed.env(key, value);
        }
        timed.stdin(Stdio::null()).stdout(fs::File::create(&out_file)?).stderr(fs::File::create(&err_file)?);

        let busy_before = busy_seconds(self.clock_ticks)?;
        let server_before = self.server_cpu()?;
        let start = Instant::now();
        let status = timed.status().with_context(|| format!("running {}", inv.label))?;
        let wall_s = start.elapsed().as_secs_f64();
        let server_cpu_s = self.server_cpu()? - server_before;
        let busy = busy_seconds(self.clock_ticks)? - busy_before;
        let stdout = fs::read_to_string(&out_file).unwrap_or_default();
        if !status.success() {
            let stderr = fs::read_to_string(&err_file).unwrap_or_default();
            bail!(
                "{} failed ({status}); stderr ({}):\n{}",
                inv.label,
                err_file.display(),
                tail(&stderr, 4000)
            );
        }
        let time = fs::read_to_string(&time_file)?;
        let mut sample = parse_gnu_time(&time).with_context(|| format!("parsing {}", time_file.display()))?;
        sample.wall_s = wall_s;
        sample.server_cpu_s = server_cpu_s;
        sample.background_cores = ((busy - sample.cpu_s() - server_cpu_s) / wall_s).max(0.0);
        Ok((sample, stdout))
    }

    fn server_cpu(&self) -> Result<f64> {
        self.server_pid.map_or(Ok(0.0), |pid| process_cpu_seconds(pid, self.clock_ticks))
    }
}

/// The last line of GNU time's `-o` file in our format `%e %U %S %M %F` (a failing command
/// adds a "Command exited with non-zero status" line before it).
fn parse_gnu_time(text: &str) -> Result<Sample> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).context("empty GNU time output")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 5 {
        bail!("unexpected GNU time output: {line:?}");
    }
    Ok(Sample {
        wall_s: f[0].parse()?,
        user_s: f[1].parse()?,
        sys_s: f[2].parse()?,
        max_rss_kib: f[3].parse()?,
        major_faults: f[4].parse()?,
        ..Sample::default()
    })
}

/// Cores other processes kept busy while `work` ran in this process.
pub fn background_while<T>(work: impl FnOnce() -> T) -> Result<(T, f64)> {
    let ticks = clock_ticks();
    let own = || process_cpu_seconds(std::process::id(), ticks);
    let (busy0, own0, start) = (busy_seconds(ticks)?, own()?, Instant::now());
    let value = work();
    let wall = start.elapsed().as_secs_f64();
    let others = busy_seconds(ticks)? - busy0 - (own()? - own0);
    Ok((value, (others / wall).max(0.0)))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds all cores spent busy since boot (/proc/stat: user, nice, system, irq, softirq, steal).
fn busy_seconds(ticks: f64) -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<f64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0.0)).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    Ok((get(0) + get(1) + get(2) + get(5) + get(6) + get(7)) / ticks)
}

/// utime + stime of a process (/proc/PID/stat fields 14 and 15).
fn process_cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((get(11) + get(12)) / ticks)
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`.
pub fn drop_page_cache() -> Result<()> {
    let status = Command::new("sync").status()?;
    if !status.success() {
        bail!("sync failed");
    }
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("writing /proc/sys/vm/drop_caches (needs root; --drop-caches is not available here)")
}

pub fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_time_lines_are_parsed() {
        let s = parse_gnu_time("Command exited with non-zero status 1\n1.50 2.25 0.50 123456 3\n").unwrap();
        assert_eq!((s.user_s, s.sys_s, s.max_rss_kib, s.major_faults), (2.25, 0.5, 123_456, 3));
        assert!(parse_gnu_time("").is_err());
    }

    #[test]
    fn a_process_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let mut meter = Meter::new(dir.path(), false).unwrap();
        meter.set_server_pid(std::process::id());
        let (sample, out) = meter.run(&Invocation::new("echo", "/bin/echo").arg("hi")).unwrap();
        assert_eq!(out, "hi\n");
        assert!(sample.max_rss_kib > 0 && sample.wall_s > 0.0);
        assert!(meter.run(&Invocation::new("false", "/bin/false")).is_err());
    }
}
