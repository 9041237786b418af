//! Gate hooks: a policy's before- and after-hooks that hold a job exactly where a test wants
//! it (before its backup starts, after its snapshot is saved) for as long as the test holds
//! the gate, so a fault (a kill, a database stop) lands at a known point instead of racing the
//! backup.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cofre_client::{HookSpec, Hooks, OnFailure};

/// The gate run as the before-hook.
pub const BEFORE: &str = "gate-before";
/// The gate run as the after-hook.
pub const AFTER: &str = "gate-after";

/// A hook directory with the two gates and the files that drive them.
pub struct Gates {
    hook_dir: PathBuf,
    dir: PathBuf,
}

impl Gates {
    /// Writes both gate hooks under `root` (`hooks/` for the agent's `--hook-dir`, `gates/` for
    /// the files that drive them).
    pub fn new(root: &Path) -> Result<Gates> {
        let gates = Gates { hook_dir: root.join("hooks"), dir: root.join("gates") };
        std::fs::create_dir_all(&gates.hook_dir)?;
        std::fs::create_dir_all(&gates.dir)?;
        gates.write_hook(BEFORE)?;
        gates.write_hook(AFTER)?;
        Ok(gates)
    }

    /// The directory to start the agent with (`--hook-dir`).
    pub fn hook_dir(&self) -> &Path {
        &self.hook_dir
    }

    /// The policy's hooks: both gates, failing the job if a gate fails.
    pub fn hooks(&self) -> Hooks {
        let gate =
            |name: &str| HookSpec { name: name.into(), timeout_seconds: 120, on_failure: OnFailure::Fail };
        Hooks { before: Some(gate(BEFORE)), after: Some(gate(AFTER)) }
    }

    /// Closes (`on`) or opens gate `name`; either way forgets which job reached it last.
    pub fn hold(&self, name: &str, on: bool) -> Result<()> {
        let p = self.dir.join(format!("{name}.hold"));
        if on {
            std::fs::write(&p, b"")?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.reached")));
        Ok(())
    }

    /// The job that reached gate `name` (since it was last held or opened), if any.
    pub fn reached(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(format!("{name}.reached"))).ok().map(|s| s.trim().to_string())
    }

    /// A gate hook: records the job that reached it in `<gates>/<name>.reached`, then waits
    /// while `<gates>/<name>.hold` exists (at most a minute, so it never outlives the test for
    /// long). The record is written whole (renamed into place), so it is never read half-made.
    fn write_hook(&self, name: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let script = format!(
            "#!/bin/sh\n# e2e gate\necho \"$COFRE_JOB_ID\" > '{gates}/{name}.reached.new'\n\
             mv '{gates}/{name}.reached.new' '{gates}/{name}.reached'\n\
             i=0\nwhile [ -e '{gates}/{name}.hold' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\nexit 0\n",
            gates = self.dir.display()
        );
        let path = self.hook_dir.join(name);
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }
}
