//! The results: every measured process, medians per scenario and tool, Cofre/restic ratios, the
//! CPU ceiling; rendered as Markdown and serialised as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::ceiling::Ceiling;
use crate::dataset::{Shape, Summary};
use crate::machine::Machine;
use crate::measure::Sample;
use crate::tools::{BackupSummary, Tool};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    InitialBackup,
    UnchangedBackup,
    ChangedBackup,
    Restore,
}

impl Scenario {
    pub const ALL: [Scenario; 4] =
        [Scenario::InitialBackup, Scenario::UnchangedBackup, Scenario::ChangedBackup, Scenario::Restore];

    pub fn title(self) -> &'static str {
        match self {
            Scenario::InitialBackup => "Initial backup",
            Scenario::UnchangedBackup => "Re-backup, nothing changed",
            Scenario::ChangedBackup => "Re-backup, 5% of files changed",
            Scenario::Restore => "Restore of the latest snapshot",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Scenario::InitialBackup => "initial",
            Scenario::UnchangedBackup => "unchanged",
            Scenario::ChangedBackup => "changed",
            Scenario::Restore => "restore",
        }
    }
}

/// One measured process.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: Scenario,
    pub tool: Tool,
    pub run: u32,
    pub sample: Sample,
    pub backup: Option<BackupSummary>,
}

/// Medians over the runs of one scenario for one tool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Medians {
    pub runs: usize,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_mib: f64,
    pub server_cpu_s: f64,
    /// Highest background load seen in any run of this scenario (cores).
    pub background_cores_max: f64,
    pub wall_all_s: Vec<f64>,
}

impl Medians {
    fn of(samples: &[&Sample]) -> Medians {
        let med = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
        Medians {
            runs: samples.len(),
            wall_s: med(&|s| s.wall_s),
            cpu_s: med(&Sample::cpu_s),
            user_s: med(&|s| s.user_s),
            sys_s: med(&|s| s.sys_s),
            max_rss_mib: med(&|s| s.max_rss_kib as f64 / 1024.0),
            server_cpu_s: med(&|s| s.server_cpu_s),
            background_cores_max: samples.iter().map(|s| s.background_cores).fold(0.0, f64::max),
            wall_all_s: samples.iter().map(|s| s.wall_s).collect(),
        }
    }

    pub fn cores_used(&self) -> f64 {
        if self.wall_s > 0.0 { self.cpu_s / self.wall_s } else { 0.0 }
    }
}

/// A scenario's medians for both tools and their ratios.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub restic: Medians,
    pub cofre: Medians,
    pub ratio_wall: f64,
    pub ratio_cpu: f64,
    pub ratio_rss: f64,
    /// Files per second of wall time (backups).
    pub restic_files_per_s: f64,
    pub cofre_files_per_s: f64,
    /// MiB of the data set per second of wall time.
    pub restic_mib_per_s: f64,
    pub cofre_mib_per_s: f64,
    /// Backup summaries of run 1, for the file counts.
    pub restic_backup: Option<BackupSummary>,
    pub cofre_backup: Option<BackupSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub restic: String,
    pub server: String,
    pub cofre: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    pub path: String,
    pub shape: Shape,
    pub summary: Summary,
    /// Seconds spent generating it in this invocation (0 when reused).
    pub generation_s: f64,
}

/// A perf profile of one tool's initial backup.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub tool: Tool,
    pub scenario: Scenario,
    pub data_file: String,
    pub command: String,
    pub top: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub versions: Versions,
    pub transport: String,
    pub dataset: DatasetInfo,
    pub runs: u32,
    pub page_cache: String,
    pub cache_state: Vec<(Scenario, String)>,
    pub results: Vec<ScenarioResult>,
    pub measurements: Vec<Measurement>,
    pub ceiling: Option<Ceiling>,
    pub profiles: Vec<Profile>,
    pub notes: Vec<String>,
    pub duration_s: f64,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// Medians and ratios per scenario.
pub fn summarise(measurements: &[Measurement], data: &Summary) -> Vec<ScenarioResult> {
    let mut out = Vec::new();
    for scenario in Scenario::ALL {
        let pick = |tool: Tool| -> Vec<&Measurement> {
            measurements.iter().filter(|m| m.scenario == scenario && m.tool == tool).collect()
        };
        let (r, c) = (pick(Tool::Restic), pick(Tool::Cofre));
        if r.is_empty() || c.is_empty() {
            continue;
        }
        let restic = Medians::of(&r.iter().map(|m| &m.sample).collect::<Vec<_>>());
        let cofre = Medians::of(&c.iter().map(|m| &m.sample).collect::<Vec<_>>());
        let (files, mib) = (data.files as f64, data.bytes as f64 / MIB);
        out.push(ScenarioResult {
            scenario,
            ratio_wall: ratio(cofre.wall_s, restic.wall_s),
            ratio_cpu: ratio(cofre.cpu_s, restic.cpu_s),
            ratio_rss: ratio(cofre.max_rss_mib, restic.max_rss_mib),
            restic_files_per_s: ratio(files, restic.wall_s),
            cofre_files_per_s: ratio(files, cofre.wall_s),
            restic_mib_per_s: ratio(mib, restic.wall_s),
            cofre_mib_per_s: ratio(mib, cofre.wall_s),
            restic_backup: r.first().and_then(|m| m.backup.clone()),
            cofre_backup: c.first().and_then(|m| m.backup.clone()),
            restic,
            cofre,
        });
    }
    out
}

impl Report {
    fn result(&self, s: Scenario) -> Option<&ScenarioResult> {
        self.results.iter().find(|r| r.scenario == s)
    }

    /// The report as Markdown.
    // one linear document
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let d = &self.dataset.summary;
        let gib = d.bytes as f64 / MIB / 1024.0;
        let _ = writeln!(md, "# cofre-bench report\n");
        let _ = writeln!(md, "Command: `{}`  ", self.command);
        let _ = writeln!(
            md,
            "Median of {} run(s) per scenario; every run uses fresh repositories; restic and Cofre \
             alternate (restic first in odd runs, Cofre first in even runs). Wall clock {:.0} s in all.\n",
            self.runs, self.duration_s
        );
        if m.build != "release" {
            let _ = writeln!(md, "**Debug build: the numbers say nothing about speed (smoke test only).**\n");
        }

        let _ = writeln!(md, "## Summary (medians; ratio < 1 means Cofre is faster or smaller)\n");
        let _ = writeln!(
            md,
            "| scenario | restic wall (s) | Cofre wall (s) | Cofre/restic wall | Cofre/restic CPU | Cofre/restic peak RSS |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for r in &self.results {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} |",
                r.scenario.title(),
                r.restic.wall_s,
                r.cofre.wall_s,
                r.ratio_wall,
                r.ratio_cpu,
                r.ratio_rss
            );
        }
        let _ = writeln!(md);
        self.targets(&mut md);

        let _ = writeln!(md, "## Machine and tools\n");
        let _ = writeln!(
            md,
            "- {} cores: {} ({}); {:.1} GiB RAM; Linux {}",
            m.cores,
            m.cpu_model,
            m.cpu_features.join(", "),
            m.ram_gib,
            m.kernel
        );
        let _ = writeln!(
            md,
            "- Load average (1 min): {:.2} at the start, {:.2} at the end. The machine is shared: the \
             `background` rows show how many cores other processes used during each measurement.",
            m.load_start, m.load_end
        );
        let _ = writeln!(md, "- {}", self.versions.restic);
        let _ =
            writeln!(md, "- Cofre: {} ({} build, workspace {})", self.versions.cofre, m.build, m.revision);
        let _ = writeln!(md, "- REST server: {}, {}", self.versions.server, self.transport);
        let _ = writeln!(
            md,
            "- Measurement: each backup or restore is one process under GNU time (`/usr/bin/time`): wall \
             time, user + system CPU time, peak RSS (max resident set size) of that process. The REST \
             server's CPU time is read from /proc meanwhile and shown separately (not in the ratios).\n"
        );

        let _ = writeln!(md, "## Data set\n");
        let s = &self.dataset.shape;
        let sizes = if s.tiny_percent >= 100 {
            format!("all of 0-{} B", s.tiny_max)
        } else {
            format!(
                "{}% of 0-{} B, the rest log-uniform {}-{} KiB",
                s.tiny_percent,
                s.tiny_max,
                s.small_min / 1024,
                s.small_max / 1024
            )
        };
        let large = if s.large_files == 0 {
            "no large files".to_owned()
        } else {
            format!("large files: {} x {:.1} MiB", s.large_files, s.large_size as f64 / MIB)
        };
        let kept = self.ceiling.as_ref().map_or("an unmeasured part".to_owned(), |c| {
            format!("{:.0}%", c.zstd_ratio_compressible * 100.0)
        });
        let _ = writeln!(
            md,
            "`{}` ({} shape, seed {}, scale {}): {} files in {} directories (depth up to {}), {gib:.2} GiB. \
             Small files: {} ({sizes}); {large}. Half of the files are compressible text (zstd-3 keeps \
             {kept} of it), half random bytes. The changed scenario rewrites {} files ({}%; large ones \
             get 1 MiB overwritten in the middle), same sizes.",
            self.dataset.path,
            s.name,
            s.seed,
            s.scale,
            d.files,
            d.dirs,
            d.max_depth,
            s.small_files,
            d.mutated_files,
            s.mutate_percent,
        );
        if self.dataset.generation_s > 0.0 {
            let _ = writeln!(md, "Generated in this invocation in {:.1} s.", self.dataset.generation_s);
        } else {
            let _ = writeln!(md, "Reused from an earlier invocation (marker file matched).");
        }
        let _ = writeln!(md, "\nPage cache: {}\n", self.page_cache);

        for r in &self.results {
            self.scenario_table(&mut md, r);
        }
        self.ceiling_section(&mut md);
        for p in &self.profiles {
            let _ = writeln!(
                md,
                "## Profile: {}, {} (`perf record -F 999`, self time; a separate unmeasured run)\n",
                p.tool.name(),
                p.scenario.title().to_lowercase()
            );
            let _ = writeln!(md, "Data: `{}`; re-read with `{}`.", p.data_file, p.command);
            if p.tool == Tool::Restic {
                let _ = writeln!(md, "Debian's restic binary is stripped: its functions show as addresses.");
            }
            let _ = writeln!(md);
            let _ = writeln!(md, "```\n{}\n```\n", p.top.trim_end());
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    fn targets(&self, md: &mut String) {
        let mut rows: Vec<(String, String, bool)> = Vec::new();
        let mut wall = |s: Scenario, max: f64| {
            if let Some(r) = self.result(s) {
                rows.push((
                    format!("{}: wall <= {max:.1}x restic", s.title()),
                    format!("{:.2}x", r.ratio_wall),
                    r.ratio_wall <= max,
                ));
            }
        };
        wall(Scenario::InitialBackup, 0.8);
        wall(Scenario::Restore, 0.8);
        wall(Scenario::UnchangedBackup, 1.0);
        if let Some(r) = self.result(Scenario::UnchangedBackup) {
            rows.push((
                "Unchanged re-backup: >= 30,000 files/s".to_owned(),
                format!("{:.0} files/s", r.cofre_files_per_s),
                r.cofre_files_per_s >= 30_000.0,
            ));
        }
        let worst_rss = self.results.iter().map(|r| r.ratio_rss).fold(0.0, f64::max);
        if !self.results.is_empty() {
            rows.push((
                "Peak RSS <= restic's (worst scenario)".to_owned(),
                format!("{worst_rss:.2}x"),
                worst_rss <= 1.0,
            ));
        }
        if let (Some(c), Some(r)) = (&self.ceiling, self.result(Scenario::InitialBackup)) {
            let f = r.cofre_mib_per_s / c.ceiling_mib_s;
            rows.push((
                "Initial backup >= 60% of the CPU ceiling (whole data set)".to_owned(),
                format!("{:.0}%", f * 100.0),
                f >= 0.6,
            ));
            let v = r.cofre_mib_per_s / c.verified_pipeline_mib_s;
            rows.push((
                "Initial backup >= 60% of the ceiling of a pipeline that verifies before upload".to_owned(),
                format!("{:.0}%", v * 100.0),
                v >= 0.6,
            ));
        }
        if self.dataset.shape.name == "million" {
            for (what, restore) in [("backups", false), ("restore", true)] {
                let peak = self
                    .results
                    .iter()
                    .filter(|r| (r.scenario == Scenario::Restore) == restore)
                    .map(|r| r.cofre.max_rss_mib)
                    .fold(0.0, f64::max);
                rows.push((
                    format!("{} files, {what}: peak RSS <= 256 MB", self.dataset.summary.files),
                    format!("{:.0} MB", peak * MIB / 1e6),
                    peak * MIB <= 256e6,
                ));
            }
        }
        let _ = writeln!(md, "### Targets of issue #4 (Cofre, this run)\n");
        let _ = writeln!(md, "| target | measured | met |");
        let _ = writeln!(md, "|---|---:|:---:|");
        for (t, v, ok) in rows {
            let _ = writeln!(md, "| {t} | {v} | {} |", if ok { "yes" } else { "**no**" });
        }
        let _ = writeln!(md);
    }

    fn scenario_table(&self, md: &mut String, r: &ScenarioResult) {
        let s = r.scenario;
        let _ = writeln!(md, "## {}\n", s.title());
        if let Some((_, state)) = self.cache_state.iter().find(|(x, _)| *x == s) {
            let _ = writeln!(md, "Cache state: {state}\n");
        }
        let _ = writeln!(md, "| median of {} run(s) | restic | Cofre | Cofre/restic |", r.restic.runs);
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let row = |md: &mut String, name: &str, a: String, b: String, ratio: String| {
            let _ = writeln!(md, "| {name} | {a} | {b} | {ratio} |");
        };
        row(
            md,
            "wall time (s)",
            format!("{:.2}", r.restic.wall_s),
            format!("{:.2}", r.cofre.wall_s),
            format!("**{:.2}**", r.ratio_wall),
        );
        row(
            md,
            "CPU time, user + sys (s)",
            format!("{:.2}", r.restic.cpu_s),
            format!("{:.2}", r.cofre.cpu_s),
            format!("**{:.2}**", r.ratio_cpu),
        );
        row(
            md,
            "  of which sys (s)",
            format!("{:.2}", r.restic.sys_s),
            format!("{:.2}", r.cofre.sys_s),
            format!("{:.2}", ratio(r.cofre.sys_s, r.restic.sys_s)),
        );
        row(
            md,
            "cores used (CPU / wall)",
            format!("{:.2}", r.restic.cores_used()),
            format!("{:.2}", r.cofre.cores_used()),
            String::new(),
        );
        row(
            md,
            "peak RSS (MiB)",
            format!("{:.1}", r.restic.max_rss_mib),
            format!("{:.1}", r.cofre.max_rss_mib),
            format!("**{:.2}**", r.ratio_rss),
        );
        row(
            md,
            "throughput (data set MiB / wall s)",
            format!("{:.1}", r.restic_mib_per_s),
            format!("{:.1}", r.cofre_mib_per_s),
            String::new(),
        );
        if s == Scenario::UnchangedBackup {
            row(
                md,
                "files / s",
                format!("{:.0}", r.restic_files_per_s),
                format!("{:.0}", r.cofre_files_per_s),
                String::new(),
            );
        }
        row(
            md,
            "REST server CPU meanwhile (s)",
            format!("{:.2}", r.restic.server_cpu_s),
            format!("{:.2}", r.cofre.server_cpu_s),
            String::new(),
        );
        row(
            md,
            "background load, max over runs (cores)",
            format!("{:.2}", r.restic.background_cores_max),
            format!("{:.2}", r.cofre.background_cores_max),
            String::new(),
        );
        let walls =
            |m: &Medians| m.wall_all_s.iter().map(|w| format!("{w:.2}")).collect::<Vec<_>>().join(", ");
        row(md, "wall time of each run (s)", walls(&r.restic), walls(&r.cofre), String::new());
        if let (Some(a), Some(b)) = (&r.restic_backup, &r.cofre_backup) {
            let files =
                |x: &BackupSummary| format!("{} / {} / {}", x.files_new, x.files_changed, x.files_unmodified);
            row(md, "files new / changed / unmodified (run 1)", files(a), files(b), String::new());
            let added = |x: &BackupSummary| match x.data_added_packed {
                Some(p) => format!("{:.1} ({:.1} stored)", x.data_added as f64 / MIB, p as f64 / MIB),
                None => format!("{:.1}", x.data_added as f64 / MIB),
            };
            row(md, "data added, MiB (run 1)", added(a), added(b), String::new());
        }
        let _ = writeln!(md);
    }

    fn ceiling_section(&self, md: &mut String) {
        let Some(c) = &self.ceiling else { return };
        let _ = writeln!(md, "## CPU ceiling\n");
        let _ = writeln!(
            md,
            "Single-thread throughput of each pipeline stage on this machine, with the crates rustic_core \
             0.13 uses, on a {:.0} MiB corpus per content kind shaped like the data set (best of three \
             slices of {:.2} s per stage; other processes kept {:.2} cores busy meanwhile). The chunker \
             is rustic's Rabin64 `ChunkIter`, reproduced step by step (it is crate-private in \
             rustic_core).\n",
            c.corpus_mib,
            c.seconds_per_stage / 3.0,
            c.background_cores
        );
        let _ = writeln!(md, "| stage | content | input | MiB/s (1 core) |");
        let _ = writeln!(md, "|---|---|---|---:|");
        for s in &c.stages {
            let _ = writeln!(md, "| {} | {} | {} | {:.0} |", s.stage, s.content, s.input, s.mib_s);
        }
        let _ = writeln!(
            md,
            "\nzstd-3 stores {:.1}% of the compressible input and {:.1}% of the random input.\n",
            c.zstd_ratio_compressible * 100.0,
            c.zstd_ratio_random * 100.0
        );
        let _ = writeln!(
            md,
            "Ideal {}-core ceiling (chunk + SHA-256 + zstd-3 + encrypt + SHA-256 of the stored bytes, \
             summed per byte, divided by {} cores; reading and uploading free): **{:.0} MiB/s** for \
             this data set ({:.0} MiB/s compressible half alone, {:.0} MiB/s random half alone). With \
             rustic_core's own choices (a zstd context per blob, extra verification of every blob): {:.0} MiB/s. \
             The ideal pipeline plus verification of every blob before upload (what restic does since \
             0.17 and Cofre does by default): {:.0} MiB/s.\n",
            c.cores,
            c.cores,
            c.ceiling_mib_s,
            c.ceiling_compressible_mib_s,
            c.ceiling_random_mib_s,
            c.rustic_pipeline_mib_s,
            c.verified_pipeline_mib_s
        );
        let _ = writeln!(
            md,
            "Per-file cost outside the per-byte pipeline: rustic_core builds a new Rabin64 chunker \
             (two 256-entry tables) for every file it reads: {:.1} us each, {:.1} CPU s for the {} \
             files of this data set.\n",
            c.rabin_setup_us, c.rabin_setup_total_s, self.dataset.summary.files
        );
        if let Some(r) = self.result(Scenario::InitialBackup) {
            let _ = writeln!(
                md,
                "| initial backup | MiB/s (median) | fraction of the ideal ceiling | fraction of the verified-pipeline ceiling | fraction of the rustic-pipeline ceiling |"
            );
            let _ = writeln!(md, "|---|---:|---:|---:|---:|");
            for (name, v) in [("restic", r.restic_mib_per_s), ("Cofre", r.cofre_mib_per_s)] {
                let _ = writeln!(
                    md,
                    "| {name} | {v:.1} | {:.0}% | {:.0}% | {:.0}% |",
                    v / c.ceiling_mib_s * 100.0,
                    v / c.verified_pipeline_mib_s * 100.0,
                    v / c.rustic_pipeline_mib_s * 100.0
                );
            }
            let _ = writeln!(md);
        }
    }
}
