//! One product, one environment: the variables the CLI and the agent read (`COFRE_TOKEN`,
//! `COFRE_URL`, `COFRE_AGENT_STATE_DIR`, …) do not stop the controller, while a misspelt
//! setting of its own still does, naming the variable.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::harness::cofre::Controller;
use crate::harness::pg::PgCluster;
use crate::harness::procs::{Proc, wait_until, workspace_bin};

#[test]
fn the_controller_ignores_other_programs_variables_and_refuses_its_own_typos() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pg = PgCluster::start()?;
    let mut ctrl = Controller::start(&pg, &tmp.path().join("controller"), "environment")?;
    ctrl.stop()?;
    let serve = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(workspace_bin("cofre-controller"));
        cmd.arg("-c").arg(ctrl.config_path()).arg("serve").env_remove("COFRE_MASTER_KEY");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    };
    // What a user of the CLI and an agent on the same machine have exported.
    let shared = [
        ("COFRE_TOKEN", "eyJhbGciOi.not-a-setting"),
        ("COFRE_URL", "https://cofre.prefeitura.example"),
        ("COFRE_CA_FILE", "/etc/cofre/ca.pem"),
        ("COFRE_AGENT_STATE_DIR", "/var/lib/cofre-agent"),
        ("COFRE_STORE_CONFIG", "/etc/cofre/store.toml"),
    ];
    let mut p = Proc::spawn("controller-env", serve(&shared), tmp.path())?;
    let url = format!("{}/readyz", ctrl.api_url());
    wait_until("the controller is ready", Duration::from_secs(60), Duration::from_millis(200), || {
        if !p.is_running() {
            return Err(format!("exited:\n{}", p.log()));
        }
        let ok = crate::harness::block_on_isolated(async {
            reqwest::get(&url).await.map(|r| r.status().is_success()).unwrap_or(false)
        });
        if ok { Ok(()) } else { Err("not ready".into()) }
    })?;
    drop(p);

    for (typo, named) in [("COFRE_DATABASE__URLL", "urll"), ("COFRE_DATABSE__URL", "COFRE_DATABSE__URL")] {
        let out = serve(&[(typo, "postgres://x")]).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{typo} must be refused");
        assert!(err.contains(named), "{typo}: {err}");
    }
    Ok(())
}
