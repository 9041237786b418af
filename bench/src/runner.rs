//! The benchmark run: data set, server, the scenarios run after run, the ceiling, the report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::BenchArgs;
use crate::ceiling;
use crate::dataset::{self, Dataset, Shape};
use crate::machine::{self, Machine};
use crate::measure::{self, Invocation, Meter};
use crate::report::{DatasetInfo, Measurement, Profile, Report, Scenario, Versions, summarise};
use crate::server::{self, RepoServer};
use crate::tools::{self, Repo, Tool, Tools};

/// Scale of the smoke data set: ~100 small files and 8 x 640 KiB.
const SMOKE_SCALE: f64 = 0.002;

/// Runs the whole benchmark and writes the report.
pub fn run(mut args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if args.smoke {
        args.runs = 1;
        args.scale = args.scale.min(SMOKE_SCALE);
    }
    if args.runs == 0 || args.scale.is_nan() || args.scale <= 0.0 {
        bail!("--runs must be at least 1 and --scale positive");
    }
    let mut machine = Machine::detect();
    if args.drop_caches {
        measure::drop_page_cache()?;
    }
    let tools = Tools::find()?;
    let versions = Versions {
        restic: tools.restic_version()?,
        server: String::new(),
        cofre: format!("cofre-engine {} (rustic_core 0.13, rustic_backend 0.7)", env!("CARGO_PKG_VERSION")),
    };
    let work = &args.work_dir;
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let work = work.canonicalize()?;

    let shape = if args.million_files {
        Shape::million(args.seed, args.scale)
    } else {
        Shape::standard(args.seed, args.scale)
    };
    progress(&format!("data set: {} (seed {}, scale {})", shape.name, shape.seed, shape.scale));
    let t = Instant::now();
    let set = Dataset::ensure(&work, shape)?;
    let generation_s = if set.generated { t.elapsed().as_secs_f64() } else { 0.0 };
    progress(&format!(
        "data set ready at {} ({} files, {:.2} GiB, {})",
        set.root.display(),
        set.summary.files,
        gib(set.summary.bytes),
        if set.generated { format!("generated in {generation_s:.1} s") } else { "reused".to_owned() }
    ));

    if args.compare_servers {
        set.warm_page_cache()?;
        let md = crate::compare::run(&args, &tools, &set, &work, &machine)?;
        println!("{md}");
        if let Some(out) = &args.out {
            fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        }
        return Ok(());
    }
    let mut run_names: Vec<String> = (1..=args.runs).map(|r| format!("r{r}")).collect();
    if args.perf {
        run_names.push("perf".to_owned());
    }
    let repo_names: Vec<String> = run_names
        .iter()
        .flat_map(|r| [Tool::Restic, Tool::Cofre].map(|t| format!("{}-{r}", t.name())))
        .collect();
    let server = server::start(args.server, &work.join("server"), args.tls, &repo_names)?;
    let versions = Versions { server: server.describe(), ..versions };
    progress(&format!("REST server: {}, {}", versions.server, server.transport()));

    let logs = work.join("logs");
    if logs.exists() {
        fs::remove_dir_all(&logs)?;
    }
    let mut meter = Meter::new(&logs, args.drop_caches)?;
    meter.set_server_pid(server.pid());
    let page_cache = if args.drop_caches {
        "cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every measured process (--drop-caches)."
            .to_owned()
    } else {
        let bytes = set.warm_page_cache()?;
        format!(
            "warm: the data set ({:.2} GiB) was read once before the first run, and the machine's RAM \
             ({:.0} GiB) holds it and the repositories, so no scenario reads from disk (no \
             --drop-caches).",
            gib(bytes),
            machine.ram_gib
        )
    };

    let ctx = Ctx { tools: &tools, server: server.as_ref(), set: &set, work: &work };
    let mut measurements = Vec::new();
    for run in 1..=args.runs {
        measurements.extend(ctx.one_run(&mut meter, run, &format!("r{run}"))?);
    }
    let mut notes = Vec::new();
    let profiles = if args.perf { ctx.profile_run(&mut meter, &mut notes)? } else { Vec::new() };

    let ceiling = if args.no_ceiling {
        None
    } else {
        progress("CPU ceiling: measuring the pipeline stages (single thread)");
        let (corpus, per_stage) = if args.smoke {
            (2 * 1024 * 1024, Duration::from_millis(20))
        } else {
            (48 * 1024 * 1024, Duration::from_secs(1))
        };
        let (mut c, background) =
            measure::background_while(|| ceiling::measure(&set, machine.cores, corpus, per_stage))?;
        c.background_cores = background;
        Some(c)
    };
    machine.load_end = machine::load_average();

    if measurements.iter().any(|m| m.sample.background_cores > 0.3) {
        notes.push(
            "Other processes used more than 0.3 cores during at least one measurement (see the \
             background rows): treat these numbers as preliminary."
                .to_owned(),
        );
    }
    let results = summarise(&measurements, &set.summary);
    let report = Report {
        command,
        machine,
        versions,
        transport: server.transport(),
        dataset: DatasetInfo {
            path: set.root.display().to_string(),
            shape: set.shape.clone(),
            summary: set.summary.clone(),
            generation_s,
        },
        runs: args.runs,
        page_cache,
        cache_state: cache_state(&set),
        results,
        measurements,
        ceiling,
        profiles,
        notes,
        duration_s: started.elapsed().as_secs_f64(),
    };
    let md = report.markdown();
    println!("{md}");
    if let Some(out) = &args.out {
        fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(json) = &args.json {
        fs::write(json, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", json.display()))?;
    }
    Ok(())
}

fn cache_state(set: &Dataset) -> Vec<(Scenario, String)> {
    vec![
        (
            Scenario::InitialBackup,
            "fresh repository per run; each tool's own cache dir starts empty (restic `--cache-dir`, \
             Cofre `set_cache_dir`, one per repository)."
                .to_owned(),
        ),
        (
            Scenario::UnchangedBackup,
            "same repository, right after the initial backup; cache dirs kept; the parent snapshot is \
             the initial one (both tools find it by host and path)."
                .to_owned(),
        ),
        (
            Scenario::ChangedBackup,
            format!(
                "{} files rewritten just before (same sizes, new content and mtimes); cache dirs kept; \
                 parent = the unchanged re-backup's snapshot.",
                set.summary.mutated_files
            ),
        ),
        (
            Scenario::Restore,
            "the snapshot of the changed re-backup, by id, into a new empty directory; cache dirs \
             kept; the repository's files are in the page cache (the server runs on this machine). \
             The restored tree's file count and bytes are checked against the data set."
                .to_owned(),
        ),
    ]
}

struct Ctx<'a> {
    tools: &'a Tools,
    server: &'a dyn RepoServer,
    set: &'a Dataset,
    work: &'a Path,
}

impl Ctx<'_> {
    fn new_repos(&self, run: &str) -> Result<Vec<Repo>> {
        let dir = self.work.join("repos");
        let mut repos = Vec::new();
        for tool in [Tool::Restic, Tool::Cofre] {
            let name = format!("{}-{run}", tool.name());
            self.server.delete_repo(&name)?;
            let mut repo = self.tools.repo(tool, &name, self.server.access(&name), &dir)?;
            self.tools.init(&mut repo)?;
            repos.push(repo);
        }
        Ok(repos)
    }

    fn drop_repos(&self, repos: &[Repo]) -> Result<()> {
        for repo in repos {
            self.server.delete_repo(&repo.name)?;
            if repo.cache_dir.exists() {
                fs::remove_dir_all(&repo.cache_dir)?;
            }
        }
        Ok(())
    }

    /// One run: fresh repositories, then the four scenarios, restic and Cofre alternating.
    fn one_run(&self, meter: &mut Meter, run: u32, name: &str) -> Result<Vec<Measurement>> {
        self.set.undo_mutation()?;
        let repos = self.new_repos(name)?;
        // Odd runs restic first, even runs Cofre first: whoever goes second in a scenario never
        // profits systematically from the first one's effects (page cache, CPU frequency).
        let order: Vec<&Repo> =
            if run % 2 == 1 { vec![&repos[0], &repos[1]] } else { vec![&repos[1], &repos[0]] };
        let mut out = Vec::new();
        let mut last_snapshot = [String::new(), String::new()];
        for scenario in Scenario::ALL {
            if scenario == Scenario::ChangedBackup {
                self.set.mutate()?;
            }
            let mut line = format!("[run {run}] {}:", scenario.title());
            for repo in &order {
                let slot = usize::from(repo.tool == Tool::Cofre);
                let label = format!("{}-{}-{name}", repo.tool.name(), scenario.slug());
                let m = if scenario == Scenario::Restore {
                    self.restore(meter, repo, &label, &last_snapshot[slot], scenario, run)?
                } else {
                    let inv = self.tools.backup(repo, &label, &self.set.root)?;
                    let (sample, stdout) = meter.run(&inv)?;
                    let summary = tools::parse_backup(&stdout).with_context(|| label.clone())?;
                    last_snapshot[slot].clone_from(&summary.snapshot_id);
                    Measurement { scenario, tool: repo.tool, run, sample, backup: Some(summary) }
                };
                line.push_str(&format!(
                    " {} {:.2} s / {:.2} CPU s / {:.0} MiB;",
                    repo.tool.name(),
                    m.sample.wall_s,
                    m.sample.cpu_s(),
                    m.sample.max_rss_kib as f64 / 1024.0
                ));
                out.push(m);
            }
            progress(&line);
        }
        self.set.undo_mutation()?;
        self.drop_repos(&repos)?;
        Ok(out)
    }

    fn restore(
        &self,
        meter: &mut Meter,
        repo: &Repo,
        label: &str,
        snapshot: &str,
        scenario: Scenario,
        run: u32,
    ) -> Result<Measurement> {
        let dest = self.work.join("restore").join(repo.tool.name());
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        fs::create_dir_all(&dest)?;
        let (sample, _) = meter.run(&self.tools.restore(repo, label, snapshot, &dest))?;
        let restored = dest.join(self.set.root.strip_prefix("/").unwrap_or(&self.set.root));
        dataset::check_restored(self.set, &restored).with_context(|| format!("{label}: restore check"))?;
        fs::remove_dir_all(&dest)?;
        Ok(Measurement { scenario, tool: repo.tool, run, sample, backup: None })
    }

    /// An extra, unmeasured run: each tool's initial backup, unchanged re-backup and restore
    /// under `perf record`; the report quotes the top of `perf report` for each.
    fn profile_run(&self, meter: &mut Meter, notes: &mut Vec<String>) -> Result<Vec<Profile>> {
        let perf = PathBuf::from("perf");
        let dir = self.work.join("perf");
        fs::create_dir_all(&dir)?;
        self.set.undo_mutation()?;
        let repos = self.new_repos("perf")?;
        let mut profiles = Vec::new();
        let mut snapshots = [String::new(), String::new()];
        for scenario in [Scenario::InitialBackup, Scenario::UnchangedBackup, Scenario::Restore] {
            for repo in &repos {
                let slot = usize::from(repo.tool == Tool::Cofre);
                let label = format!("{}-{}-perf", repo.tool.name(), scenario.slug());
                let data = dir.join(format!("{}-{}.perf.data", repo.tool.name(), scenario.slug()));
                let dest = self.work.join("restore").join(repo.tool.name());
                let inner = if scenario == Scenario::Restore {
                    if dest.exists() {
                        fs::remove_dir_all(&dest)?;
                    }
                    fs::create_dir_all(&dest)?;
                    self.tools.restore(repo, &label, &snapshots[slot], &dest)
                } else {
                    self.tools.backup(repo, &label, &self.set.root)?
                };
                let mut inv = Invocation::new(&label, &perf)
                    .arg("record")
                    .arg("-F")
                    .arg("999")
                    .arg("-o")
                    .arg(&data)
                    .arg("--");
                inv.args.push(inner.program.clone().into());
                inv.args.extend(inner.args.iter().cloned());
                inv.env.clone_from(&inner.env);
                inv.env_remove.clone_from(&inner.env_remove);
                progress(&format!("perf: recording {label}"));
                let stdout = match meter.run(&inv) {
                    Ok((_, stdout)) => stdout,
                    Err(err) => {
                        notes.push(format!("perf record of {label} failed: {err:#}"));
                        continue;
                    }
                };
                if scenario == Scenario::Restore {
                    fs::remove_dir_all(&dest)?;
                } else {
                    snapshots[slot] = tools::parse_backup(&stdout)?.snapshot_id;
                }
                let top = format!(
                    "by binary:\n{}\n\nby thread:\n{}\n\nby function:\n{}",
                    perf_report(&perf, &data, "dso", 6)?,
                    perf_report(&perf, &data, "pid", 8)?,
                    perf_report(&perf, &data, "dso,symbol", 25)?
                );
                profiles.push(Profile {
                    tool: repo.tool,
                    scenario,
                    data_file: data.display().to_string(),
                    command: format!(
                        "perf report --stdio --no-children --sort dso,symbol -i {}",
                        data.display()
                    ),
                    top,
                });
            }
        }
        self.drop_repos(&repos)?;
        Ok(profiles)
    }
}

/// The first `lines` entries of `perf report` sorted by `sort` (self time), without the headers
/// and the empty columns perf pads with.
fn perf_report(perf: &Path, data: &Path, sort: &str, lines: usize) -> Result<String> {
    let out = Command::new(perf)
        .args(["report", "--stdio", "--no-children", "--percent-limit", "0.5", "--sort", sort, "-i"])
        .arg(data)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(lines)
        .map(strip_empty_columns)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Drops the trailing `-` columns (srcline and friends, empty here) perf pads lines with.
fn strip_empty_columns(line: &str) -> &str {
    let mut line = line.trim_end();
    while let Some(rest) = line.strip_suffix('-').filter(|r| r.ends_with(char::is_whitespace)) {
        line = rest.trim_end();
    }
    line
}

fn progress(msg: &str) {
    eprintln!("cofre-bench: {msg}");
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0 / 1024.0
}
