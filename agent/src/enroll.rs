//! `cofre-agent enroll`: generate a key pair on this machine (it never leaves it), prove the
//! controller is the one the token names (its TLS chain must end at a CA whose SHA-256 is in
//! the token: there is no insecure mode), and exchange the token and a CSR for a certificate.

use anyhow::bail;
use cofre_proto::agent::v1 as pb;

use crate::state::{Identity, StateDir};

pub fn inventory() -> pb::Inventory {
    pb::Inventory {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into()),
        os: os_name(),
        arch: std::env::consts::ARCH.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

pub async fn enroll(
    state: &StateDir,
    controller: &str,
    token: &str,
    force: bool,
) -> anyhow::Result<Identity> {
    if state.is_enrolled() && !force {
        bail!(
            "this agent is already enrolled (state in {}); use --force to enroll again as a new machine",
            state.root().display()
        );
    }
    let token = cofre_dial::parse_token(token)?;
    let url = cofre_dial::controller_url(controller)?;
    let (channel, ca_pem) = cofre_dial::enrollment_channel(&url, &token).await?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let (key_pem, csr_der) = cofre_dial::new_key_and_csr()?;
    let resp = client
        .enroll(pb::EnrollRequest { token: token.whole.clone(), csr_der, inventory: Some(inventory()) })
        .await
        .map_err(|s| anyhow::anyhow!("the controller refused enrollment: {}", s.message()))?
        .into_inner();
    cofre_dial::check_returned_ca(&resp.ca_certificate_pem, &ca_pem, &token)?;
    let id = Identity {
        machine_id: resp.machine_id.clone(),
        controller_url: controller.to_string(),
        ca_fingerprint: token.ca_fingerprint.clone(),
    };
    state.save_enrollment(&id, &ca_pem, &resp.certificate_pem, &key_pem)?;
    if resp.pending_approval {
        println!(
            "Enrolled as machine {}; an administrator must approve it before it receives a plan.",
            id.machine_id
        );
    } else {
        println!("Enrolled as machine {}.", id.machine_id);
    }
    println!("Start the agent with: cofre-agent run --state-dir {}", state.root().display());
    Ok(id)
}
