//! `cofre policy …`: policies as code. A spec comes from a JSON or TOML file (`--file`, the
//! shape `cofre policy show --spec` prints), from flags, or both (flags win); `edit` starts
//! from the policy's current spec and refuses to overwrite a change made meanwhile. Every
//! field of the spec has a flag; the controller validates everything and names each bad field.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use cofre_client::{HookSpec, OnFailure, PolicySpec, RetentionSpec, ScheduleSpec, WindowSpec};
use uuid::Uuid;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Create a policy from a file and/or flags.
    Create(SpecArgs),
    /// Change a policy: its current spec, then the file's, then the flags.
    Edit {
        id: Uuid,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// List policies.
    List,
    /// Show a policy (`--spec`: only its spec, ready to edit and give back with --file).
    Show {
        id: Uuid,
        #[arg(long)]
        spec: bool,
    },
    /// Every version of a policy: who changed it, when, to what.
    Versions { id: Uuid },
    /// What changed between two versions.
    Diff {
        id: Uuid,
        #[arg(long)]
        from: i64,
        #[arg(long)]
        to: i64,
    },
    /// Apply a policy to a machine or to every machine of a group.
    Assign {
        id: Uuid,
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        machine: Option<Uuid>,
        #[arg(long)]
        group: Option<Uuid>,
    },
    /// Where a policy is assigned.
    Assignments { id: Uuid },
    /// Machines whose agent does not run the current plan of its policies.
    Stale,
    /// Remove an assignment.
    Unassign {
        id: Uuid,
        #[arg(long)]
        assignment: Uuid,
    },
}

/// Every field of a spec as a flag; absent flags leave the field as it is.
#[derive(Args, Default, Clone, PartialEq)]
pub struct SpecArgs {
    /// A spec as JSON or TOML (by extension; `-` reads JSON from stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    repository: Option<Uuid>,
    /// A path to back up (repeat; replaces the list).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// A restic-style exclude glob (repeat; replaces the list).
    #[arg(long = "exclude")]
    excludes: Vec<String>,
    /// An exclude glob that ignores case (repeat; replaces the list).
    #[arg(long = "iexclude")]
    iexcludes: Vec<String>,
    /// Leave out directories holding a file of this name (repeat; replaces the list).
    #[arg(long = "exclude-if-present")]
    exclude_if_present: Vec<String>,
    /// Leave out files larger than this (500M, 2G; `none` clears it).
    #[arg(long)]
    exclude_larger_than: Option<String>,
    /// Stay on each path's file system (`--one-file-system=false` to turn it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    one_file_system: Option<bool>,
    /// An extra snapshot tag (repeat; replaces the list).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Back up every this many seconds.
    #[arg(long, conflicts_with_all = ["cron", "on_demand"])]
    interval_seconds: Option<u64>,
    /// Back up at the times of a five-field cron expression (with --timezone).
    #[arg(long, conflicts_with = "on_demand")]
    cron: Option<String>,
    /// IANA zone of the cron expression and the window, e.g. America/Sao_Paulo.
    #[arg(long)]
    timezone: Option<String>,
    /// Start each machine up to this many seconds late, fixed per machine.
    #[arg(long)]
    jitter_seconds: Option<u64>,
    /// Only start runs between these local times, e.g. 19:00-07:00 (`none` clears it).
    #[arg(long)]
    window: Option<String>,
    /// No schedule: backups only on demand.
    #[arg(long)]
    on_demand: bool,
    #[arg(long)]
    keep_last: Option<u32>,
    #[arg(long)]
    keep_hourly: Option<u32>,
    #[arg(long)]
    keep_daily: Option<u32>,
    #[arg(long)]
    keep_weekly: Option<u32>,
    #[arg(long)]
    keep_monthly: Option<u32>,
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep everything newer than this, relative to the latest snapshot (restic's 1y6m3d2h).
    #[arg(long)]
    keep_within: Option<String>,
    #[arg(long)]
    keep_within_hourly: Option<String>,
    #[arg(long)]
    keep_within_daily: Option<String>,
    #[arg(long)]
    keep_within_weekly: Option<String>,
    #[arg(long)]
    keep_within_monthly: Option<String>,
    #[arg(long)]
    keep_within_yearly: Option<String>,
    /// Keep snapshots with these tags (comma: all of them; repeat; replaces the list).
    #[arg(long = "keep-tag")]
    keep_tags: Vec<String>,
    /// No retention: keep every snapshot.
    #[arg(long, conflicts_with_all = ["keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_within"])]
    keep_all: bool,
    /// Maximum age of the last good backup (compliance).
    #[arg(long)]
    rpo_seconds: Option<u64>,
    /// How long an agent may be silent (compliance).
    #[arg(long)]
    heartbeat_allowance_seconds: Option<u64>,
    /// Forget (apply the retention) every this many seconds.
    #[arg(long)]
    forget_interval_seconds: Option<u64>,
    /// Forget at the times of a cron expression (with --maintenance-timezone).
    #[arg(long)]
    forget_cron: Option<String>,
    #[arg(long)]
    prune_interval_seconds: Option<u64>,
    #[arg(long)]
    prune_cron: Option<String>,
    #[arg(long)]
    check_interval_seconds: Option<u64>,
    #[arg(long)]
    check_cron: Option<String>,
    /// IANA zone of the maintenance cron expressions.
    #[arg(long)]
    maintenance_timezone: Option<String>,
    /// How much data a check reads: none, all, n/t (1/7) or x% (10%).
    #[arg(long)]
    check_read_data: Option<String>,
    /// Unused space a prune may leave, in percent.
    #[arg(long)]
    max_unused_percent: Option<u32>,
    /// Run this hook (from the agent's hook directory) before each backup (`none` clears it).
    #[arg(long)]
    before_hook: Option<String>,
    #[arg(long)]
    before_hook_timeout_seconds: Option<u64>,
    /// fail, skip-backup or continue.
    #[arg(long)]
    before_hook_on_failure: Option<String>,
    /// Run this hook after each backup (`none` clears it).
    #[arg(long)]
    after_hook: Option<String>,
    #[arg(long)]
    after_hook_timeout_seconds: Option<u64>,
    /// fail or continue.
    #[arg(long)]
    after_hook_on_failure: Option<String>,
}

/// Runs a `cofre policy` command.
pub async fn run(client: &cofre_client::Client, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Create(args) => {
            let spec = args.build(None)?;
            let p: cofre_client::Policy = client.post("/api/v1/policies", &spec).await?;
            crate::print(&p)?;
        }
        PolicyCommand::Edit { id, spec } => {
            let current = client.get_policy(id).await?;
            let body = spec.build(Some(serde_json::to_value(&current.spec)?))?;
            let spec: PolicySpec = serde_json::from_value(body.clone()).unwrap_or(current.spec);
            let p = client.update_policy(id, &spec, Some(current.revision)).await?;
            crate::print(&p)?;
        }
        PolicyCommand::List => crate::print(&client.list_policies().await?)?,
        PolicyCommand::Show { id, spec } => {
            let p = client.get_policy(id).await?;
            if spec { crate::print(&p.spec)? } else { crate::print(&p)? }
        }
        PolicyCommand::Versions { id } => crate::print(&client.policy_versions(id).await?)?,
        PolicyCommand::Diff { id, from, to } => crate::print(&client.policy_diff(id, from, to).await?)?,
        PolicyCommand::Assign { id, machine, group } => {
            let a = match (machine, group) {
                (Some(m), _) => client.assign_policy_to_machine(id, m).await?,
                (None, Some(g)) => client.assign_policy_to_group(id, g).await?,
                (None, None) => anyhow::bail!("give --machine or --group"),
            };
            crate::print(&a)?;
        }
        PolicyCommand::Assignments { id } => crate::print(&client.list_assignments(id).await?)?,
        PolicyCommand::Stale => crate::print(&client.stale_plans().await?)?,
        PolicyCommand::Unassign { id, assignment } => {
            client.unassign_policy(id, assignment).await?;
            crate::out("unassigned")?;
        }
    }
    Ok(())
}

/// Reads a spec file: TOML by extension, JSON otherwise (`-`: JSON on stdin).
fn read_file(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the spec from stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    if path.extension().is_some_and(|e| e == "toml") {
        let v: toml::Value =
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(serde_json::to_value(v)?)
    } else {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    }
}

fn on_failure(s: &str) -> anyhow::Result<OnFailure> {
    Ok(match s {
        "fail" => OnFailure::Fail,
        "skip-backup" | "skip_backup" => OnFailure::SkipBackup,
        "continue" => OnFailure::Continue,
        other => anyhow::bail!("{other:?}: use fail, skip-backup or continue"),
    })
}

fn hook(
    current: Option<HookSpec>,
    name: Option<&str>,
    timeout: Option<u64>,
    failure: Option<&str>,
) -> anyhow::Result<Option<HookSpec>> {
    let mut h = match (name, current) {
        (Some("none"), _) => return Ok(None),
        (Some(n), Some(mut h)) => {
            h.name = n.to_string();
            h
        }
        (Some(n), None) => {
            HookSpec { name: n.to_string(), timeout_seconds: 300, on_failure: OnFailure::default() }
        }
        (None, Some(h)) => h,
        (None, None) => {
            if timeout.is_some() || failure.is_some() {
                anyhow::bail!("a hook's timeout or on-failure needs the hook's name");
            }
            return Ok(None);
        }
    };
    if let Some(t) = timeout {
        h.timeout_seconds = t;
    }
    if let Some(f) = failure {
        h.on_failure = on_failure(f)?;
    }
    Ok(Some(h))
}

fn maintenance_schedule(
    current: &mut ScheduleSpec,
    interval: Option<u64>,
    cron: Option<&String>,
    tz: Option<&String>,
) {
    if let Some(i) = interval {
        *current = ScheduleSpec { interval_seconds: Some(i), ..Default::default() };
    }
    if let Some(c) = cron {
        *current = ScheduleSpec { cron: Some(c.clone()), timezone: tz.cloned(), ..Default::default() };
    }
}

impl SpecArgs {
    /// The spec: `base` (create: none; edit: the current one), then the file, then the flags.
    /// The file and the flags are merged as JSON, so the controller names any bad field.
    pub fn build(self, base: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
        let mut spec = match (&self.file, base) {
            (Some(f), _) => read_file(f)?,
            (None, Some(b)) => b,
            (None, None) => {
                let (Some(name), Some(repo)) = (&self.name, self.repository) else {
                    anyhow::bail!("give --file, or at least --name, --repository and --path");
                };
                serde_json::to_value(PolicySpec::new(name.clone(), repo, Vec::new()))?
            }
        };
        // Flags apply to a typed spec; a file the client cannot even read as one is handed
        // to the controller as it is (it names the problem).
        if !self.has_flags() {
            return Ok(spec);
        }
        let mut s: PolicySpec = serde_json::from_value(spec.clone())
            .with_context(|| "the spec does not parse, so flags cannot be applied to it".to_string())?;
        self.apply(&mut s)?;
        spec = serde_json::to_value(s)?;
        Ok(spec)
    }

    fn has_flags(&self) -> bool {
        // Any difference from no flags at all (the file aside) is a flag.
        SpecArgs { file: None, ..self.clone() } != SpecArgs::default()
    }

    fn apply(self, s: &mut PolicySpec) -> anyhow::Result<()> {
        if let Some(n) = self.name {
            s.name = n;
        }
        if let Some(r) = self.repository {
            s.repository_id = r;
        }
        if !self.paths.is_empty() {
            s.paths = self.paths;
        }
        if !self.excludes.is_empty() {
            s.excludes = self.excludes;
        }
        if !self.iexcludes.is_empty() {
            s.iexcludes = self.iexcludes;
        }
        if !self.exclude_if_present.is_empty() {
            s.exclude_if_present = self.exclude_if_present;
        }
        match self.exclude_larger_than.as_deref() {
            Some("none") => s.exclude_larger_than_bytes = None,
            Some(v) => s.exclude_larger_than_bytes = Some(crate::parse_size(v)?),
            None => {}
        }
        if let Some(b) = self.one_file_system {
            s.one_file_system = b;
        }
        if !self.tags.is_empty() {
            s.tags = self.tags;
        }
        if self.on_demand {
            s.schedule = None;
        }
        let touches_schedule = self.interval_seconds.is_some()
            || self.cron.is_some()
            || self.timezone.is_some()
            || self.jitter_seconds.is_some()
            || self.window.is_some();
        if touches_schedule {
            let mut sched = s.schedule.take().unwrap_or_default();
            if let Some(i) = self.interval_seconds {
                sched.interval_seconds = Some(i);
                sched.cron = None;
            }
            if let Some(c) = self.cron {
                sched.cron = Some(c);
                sched.interval_seconds = None;
            }
            if let Some(tz) = self.timezone {
                sched.timezone = Some(tz);
            }
            if let Some(j) = self.jitter_seconds {
                sched.jitter_seconds = j;
            }
            match self.window.as_deref() {
                Some("none") => sched.window = None,
                Some(w) => {
                    let (start, end) =
                        w.split_once('-').context("--window takes HH:MM-HH:MM, e.g. 19:00-07:00")?;
                    sched.window = Some(WindowSpec { start: start.trim().into(), end: end.trim().into() });
                }
                None => {}
            }
            s.schedule = Some(sched);
        }
        if self.keep_all {
            s.retention = None;
        }
        let mut r = s.retention.take().unwrap_or_default();
        for (field, v) in [
            (&mut r.keep_last, self.keep_last),
            (&mut r.keep_hourly, self.keep_hourly),
            (&mut r.keep_daily, self.keep_daily),
            (&mut r.keep_weekly, self.keep_weekly),
            (&mut r.keep_monthly, self.keep_monthly),
            (&mut r.keep_yearly, self.keep_yearly),
        ] {
            if let Some(v) = v {
                *field = v;
            }
        }
        for (field, v) in [
            (&mut r.keep_within, self.keep_within),
            (&mut r.keep_within_hourly, self.keep_within_hourly),
            (&mut r.keep_within_daily, self.keep_within_daily),
            (&mut r.keep_within_weekly, self.keep_within_weekly),
            (&mut r.keep_within_monthly, self.keep_within_monthly),
            (&mut r.keep_within_yearly, self.keep_within_yearly),
        ] {
            if let Some(v) = v {
                *field = (v != "none").then_some(v);
            }
        }
        if !self.keep_tags.is_empty() {
            r.keep_tags = self.keep_tags;
        }
        // An empty retention keeps everything, like none at all.
        s.retention = (r != RetentionSpec::default()).then_some(r);
        if let Some(v) = self.rpo_seconds {
            s.rpo_seconds = v;
        }
        if let Some(v) = self.heartbeat_allowance_seconds {
            s.heartbeat_allowance_seconds = v;
        }
        let tz = self.maintenance_timezone.as_ref();
        let m = &mut s.maintenance;
        maintenance_schedule(&mut m.forget, self.forget_interval_seconds, self.forget_cron.as_ref(), tz);
        maintenance_schedule(&mut m.prune, self.prune_interval_seconds, self.prune_cron.as_ref(), tz);
        maintenance_schedule(&mut m.check, self.check_interval_seconds, self.check_cron.as_ref(), tz);
        if let Some(d) = self.check_read_data {
            m.check_read_data = d;
        }
        if let Some(p) = self.max_unused_percent {
            m.max_unused_percent = p;
        }
        s.hooks.before = hook(
            s.hooks.before.take(),
            self.before_hook.as_deref(),
            self.before_hook_timeout_seconds,
            self.before_hook_on_failure.as_deref(),
        )?;
        s.hooks.after = hook(
            s.hooks.after.take(),
            self.after_hook.as_deref(),
            self.after_hook_timeout_seconds,
            self.after_hook_on_failure.as_deref(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        spec: SpecArgs,
    }

    fn parse(args: &[&str]) -> SpecArgs {
        T::parse_from(std::iter::once("t").chain(args.iter().copied())).spec
    }

    #[test]
    fn flags_build_a_spec_and_override_a_base() {
        let repo = Uuid::nil();
        let v = parse(&[
            "--name",
            "docs",
            "--repository",
            &repo.to_string(),
            "--path",
            "/home",
            "--cron",
            "0 19 * * *",
            "--timezone",
            "America/Sao_Paulo",
            "--window",
            "19:00-07:00",
            "--keep-daily",
            "7",
            "--keep-within",
            "1y",
            "--before-hook",
            "dump-db",
            "--before-hook-on-failure",
            "skip-backup",
            "--exclude-larger-than",
            "2G",
        ])
        .build(None)
        .unwrap();
        let s: PolicySpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.paths, vec!["/home"]);
        let sched = s.schedule.unwrap();
        assert_eq!(sched.cron.as_deref(), Some("0 19 * * *"));
        assert_eq!(sched.window.unwrap().end, "07:00");
        assert_eq!(s.retention.as_ref().unwrap().keep_daily, 7);
        assert_eq!(s.hooks.before.as_ref().unwrap().on_failure, OnFailure::SkipBackup);
        assert_eq!(s.exclude_larger_than_bytes, Some(2 << 30));
        // Edit: the base stays but for what the flags say.
        let edited: PolicySpec =
            serde_json::from_value(parse(&["--keep-all", "--on-demand"]).build(Some(v)).unwrap()).unwrap();
        assert!(edited.retention.is_none() && edited.schedule.is_none());
        assert_eq!(edited.hooks.before.unwrap().name, "dump-db");
    }

    #[test]
    fn a_file_without_flags_goes_to_the_controller_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "name = \"x\"\nrepository_id = \"00000000-0000-0000-0000-000000000000\"\npaths = [\"/\"]\nbogus = 1\n").unwrap();
        let v = parse(&["--file", f.to_str().unwrap()]).build(None).unwrap();
        assert_eq!(v["bogus"], 1, "the controller names unknown fields");
        assert!(parse(&[]).build(None).is_err(), "nothing to build from");
    }
}
