//! What machine and build the numbers come from.

use std::fs;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    /// CPU features the pipeline's crates use when present (SHA-NI, AES-NI, AVX2, ...).
    pub cpu_features: Vec<String>,
    pub ram_gib: f64,
    pub kernel: String,
    /// 1-minute load average at the start and at the end of the run.
    pub load_start: f64,
    pub load_end: f64,
    /// `release` or `debug` (debug numbers say nothing about speed).
    pub build: String,
    /// `git describe --always --dirty` of the workspace, if available.
    pub revision: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let flags = field("flags");
        let cpu_features = ["sha_ni", "aes", "pclmulqdq", "avx2", "avx512f"]
            .iter()
            .filter(|f| flags.split_whitespace().any(|x| x == **f))
            .map(|f| (*f).to_owned())
            .collect();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        // KiB of RAM
        let ram_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            cpu_model: field("model name"),
            cpu_features,
            ram_gib,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            load_start: load_average(),
            load_end: 0.0,
            build: if cfg!(debug_assertions) { "debug" } else { "release" }.to_owned(),
            revision: command_line(
                "git",
                &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty", "--abbrev=10"],
            ),
        }
    }
}

pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
