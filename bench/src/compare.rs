//! `--compare-servers`: the restic CLI backs up the data set and restores it through
//! rustic-server and through cofre-store (same data, same transport, the order alternating
//! between runs); the report gives medians and the ratio cofre-store / rustic-server. This is
//! the throughput check of issue #3: identity checks, hashing every upload and fsyncs must not
//! make the store the bottleneck.

use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::dataset::{self, Dataset};
use crate::machine::Machine;
use crate::measure::{Meter, Sample};
use crate::report::median;
use crate::server::{self, RepoServer};
use crate::tools::{self, Tool, Tools};
use crate::{BenchArgs, ServerKind};

struct Row {
    server: usize,
    backup: Sample,
    restore: Sample,
}

pub fn run(args: &BenchArgs, tools: &Tools, set: &Dataset, work: &Path, machine: &Machine) -> Result<String> {
    let names: Vec<String> = (1..=args.runs).map(|r| format!("cmp-r{r}")).collect();
    let servers: Vec<Box<dyn RepoServer>> = vec![
        server::start(ServerKind::RusticServer, &work.join("server-rustic"), args.tls, &names)?,
        server::start(ServerKind::CofreStore, &work.join("server-store"), args.tls, &names)?,
    ];
    let labels = ["rustic-server", "cofre-store"];
    let logs = work.join("logs-compare");
    if logs.exists() {
        fs::remove_dir_all(&logs)?;
    }
    let mut meter = Meter::new(&logs, args.drop_caches)?;
    let mut rows = Vec::new();
    for run in 1..=args.runs {
        let order: [usize; 2] = if run % 2 == 1 { [0, 1] } else { [1, 0] };
        for &i in &order {
            let srv = servers[i].as_ref();
            let name = format!("cmp-r{run}");
            srv.delete_repo(&name)?;
            let dir = work.join("repos-compare").join(labels[i]);
            let mut repo = tools.repo(Tool::Restic, &name, srv.access(&name), &dir)?;
            tools.init(&mut repo)?;
            meter.set_server_pid(srv.pid());
            let label = format!("{}-backup-r{run}", labels[i]);
            let (backup, stdout) = meter.run(&tools.backup(&repo, &label, &set.root)?)?;
            let summary = tools::parse_backup(&stdout).with_context(|| label.clone())?;
            let dest = work.join("restore-compare");
            if dest.exists() {
                fs::remove_dir_all(&dest)?;
            }
            fs::create_dir_all(&dest)?;
            let label = format!("{}-restore-r{run}", labels[i]);
            let (restore, _) = meter.run(&tools.restore(&repo, &label, &summary.snapshot_id, &dest))?;
            let restored = dest.join(set.root.strip_prefix("/").unwrap_or(&set.root));
            dataset::check_restored(set, &restored).with_context(|| format!("{label}: restore check"))?;
            fs::remove_dir_all(&dest)?;
            srv.delete_repo(&name)?;
            if repo.cache_dir.exists() {
                fs::remove_dir_all(&repo.cache_dir)?;
            }
            eprintln!(
                "[run {run}] {}: backup {:.2} s, restore {:.2} s (server CPU {:.2} + {:.2} s)",
                labels[i], backup.wall_s, restore.wall_s, backup.server_cpu_s, restore.server_cpu_s
            );
            rows.push(Row { server: i, backup, restore });
        }
    }
    let med = |server: usize, f: &dyn Fn(&Row) -> f64| {
        median(rows.iter().filter(|r| r.server == server).map(f).collect())
    };
    let mut md = String::new();
    md.push_str("# restic through cofre-store vs through rustic-server\n\n");
    md.push_str(&format!(
        "`restic` ({}) backs up the data set ({} files, {:.2} GiB) into a fresh repository and \
         restores it, through each server, {}; median of {} run(s), the order alternating. \
         Machine: {} cores, {}; {} build; load average {:.2} at the start.\n\n",
        tools.restic_version().unwrap_or_default(),
        set.summary.files,
        set.summary.bytes as f64 / f64::from(1u32 << 30),
        servers[0].transport(),
        args.runs,
        machine.cores,
        machine.cpu_model,
        machine.build,
        machine.load_start,
    ));
    md.push_str(
        "| median | rustic-server | cofre-store | cofre-store / rustic-server |\n|---|---:|---:|---:|\n",
    );
    let line = |md: &mut String, what: &str, f: &dyn Fn(&Row) -> f64, unit: &str| {
        let (a, b) = (med(0, f), med(1, f));
        let ratio = if a > 0.0 { format!("**{:.2}**", b / a) } else { "–".to_owned() };
        md.push_str(&format!("| {what} | {a:.2} {unit} | {b:.2} {unit} | {ratio} |\n"));
    };
    line(&mut md, "backup wall time", &|r| r.backup.wall_s, "s");
    line(&mut md, "restore wall time", &|r| r.restore.wall_s, "s");
    line(&mut md, "restic CPU, backup", &|r| r.backup.cpu_s(), "s");
    line(&mut md, "restic CPU, restore", &|r| r.restore.cpu_s(), "s");
    line(&mut md, "server CPU, backup", &|r| r.backup.server_cpu_s, "s");
    line(&mut md, "server CPU, restore", &|r| r.restore.server_cpu_s, "s");
    line(
        &mut md,
        "background load (cores)",
        &|r| r.backup.background_cores.max(r.restore.background_cores),
        "",
    );
    md.push_str(&format!(
        "\nServers: {} and {}. cofre-store serves an htpasswd user with full rights (bcrypt, verified \
         once then cached); it hashes every upload against its name and fsyncs each object and its \
         directory before answering, which rustic-server does not do.\n",
        servers[0].describe(),
        servers[1].describe()
    ));
    Ok(md)
}
