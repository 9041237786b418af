//! `cofre-agent enroll`: generate a key pair on this machine (it never leaves it), prove the
//! controller is the one the token names (its TLS chain must end at a CA whose SHA-256 is in
//! the token: there is no insecure mode), and exchange the token and a CSR for a certificate.
//! The controller may be given several addresses (its replicas): the first reachable one
//! enrolls the machine, and the agent keeps them all.

use anyhow::{Context, bail};
use cofre_proto::agent::v1 as pb;

use cofre_dial::failover::{Failure, try_in_turn};

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

/// Enrolls with the controller at `controllers` (its addresses, tried in turn: the first
/// reachable one enrolls this machine; a refusal is final). Every address is kept, in order.
pub async fn enroll(
    state: &StateDir,
    controllers: &[String],
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
    let urls = cofre_dial::controller_urls(controllers)?;
    let (key_pem, csr_der) = cofre_dial::new_key_and_csr()?;
    let ((resp, ca_pem), answered) = try_in_turn(controllers, 0, |i, _| {
        let (url, token, csr_der) = (&urls[i], &token, csr_der.clone());
        async move {
            let (channel, ca_pem) =
                cofre_dial::enrollment_channel(url, token).await.map_err(Failure::unreachable)?;
            let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
            let req = pb::EnrollRequest {
                token: token.whole.clone(),
                csr_der,
                inventory: Some(inventory()),
                ..Default::default()
            };
            Failure::from_answer(client.enroll(req).await, "the controller refused enrollment")
                .map(|resp| (resp, ca_pem))
        }
    })
    .await?;
    cofre_dial::check_returned_ca(&resp.ca_certificate_pem, &ca_pem, &token)?;
    let id = Identity {
        machine_id: resp.machine_id.clone(),
        controller_url: controllers[0].clone(),
        controller_urls: if controllers.len() > 1 { controllers.to_vec() } else { Vec::new() },
        ca_fingerprint: token.ca_fingerprint.clone(),
    };
    state.save_enrollment(&id, &ca_pem, &resp.certificate_pem, &key_pem)?;
    state.save_last_controller(&controllers[answered])?;
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

/// Re-enrolls this machine after its certificate expired while it was away: a new token from
/// an administrator, the previous certificate, and a CSR made with the key this agent already
/// holds (the proof that it is the same machine). The controller issues a new certificate for
/// the same machine id, so the plan, the repository, the schedule and unsent results all stay.
/// `controllers` replaces the stored addresses when given.
pub async fn reenroll(state: &StateDir, controllers: &[String], token: &str) -> anyhow::Result<Identity> {
    let mut id = state.identity().context("re-enrollment keeps this machine's identity, but it has none")?;
    let (previous_cert, key_pem) = state.certificate()?;
    let token = cofre_dial::parse_token(token)?;
    if token.ca_fingerprint != id.ca_fingerprint {
        bail!(
            "this token is for another controller (its CA is {}, this agent's is {}); to join it as a new \
             machine, use `enroll --force`",
            token.ca_fingerprint,
            id.ca_fingerprint
        );
    }
    let controllers = if controllers.is_empty() { id.controllers() } else { controllers.to_vec() };
    let urls = cofre_dial::controller_urls(&controllers)?;
    let csr_der = cofre_dial::csr_for_key(&key_pem)?;
    let ((resp, ca_pem), answered) =
        try_in_turn(&controllers, state.last_controller(&controllers).unwrap_or(0), |i, _| {
            let (url, token, csr_der, previous) = (&urls[i], &token, csr_der.clone(), previous_cert.clone());
            async move {
                let (channel, ca_pem) =
                    cofre_dial::enrollment_channel(url, token).await.map_err(Failure::unreachable)?;
                let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
                let req = pb::EnrollRequest {
                    token: token.whole.clone(),
                    csr_der,
                    inventory: Some(inventory()),
                    previous_certificate_pem: previous,
                };
                Failure::from_answer(client.enroll(req).await, "the controller refused re-enrollment")
                    .map(|resp| (resp, ca_pem))
            }
        })
        .await?;
    cofre_dial::check_returned_ca(&resp.ca_certificate_pem, &ca_pem, &token)?;
    if resp.machine_id != id.machine_id {
        bail!(
            "the controller answered for machine {} instead of {}: nothing was changed here",
            resp.machine_id,
            id.machine_id
        );
    }
    state.save_certificate(&resp.certificate_pem, &key_pem)?;
    if controllers != id.controllers() {
        id = state.save_controllers(&controllers)?;
    }
    state.save_last_controller(&controllers[answered])?;
    let unsent = std::fs::read_dir(state.spool_dir()).map(|rd| rd.count()).unwrap_or(0);
    println!(
        "Re-enrolled: machine {} keeps its identity, plan and {unsent} unsent result(s); a running agent \
         reconnects within seconds.",
        id.machine_id
    );
    if resp.pending_approval {
        println!("An administrator must approve it again before it receives a plan.");
    }
    Ok(id)
}
