//! `cofre-agent enroll`: generate a key pair on this machine (it never leaves it), prove the
//! controller is the one the token names (its TLS chain must end at a CA whose SHA-256 is in
//! the token: there is no insecure mode), and exchange the token and a CSR for a certificate.
//! The controller may be given several addresses (its replicas): the first reachable one
//! enrolls the machine, and the agent keeps them all.

use anyhow::bail;
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
            let req = pb::EnrollRequest { token: token.whole.clone(), csr_der, inventory: Some(inventory()) };
            match client.enroll(req).await {
                Ok(resp) => Ok((resp.into_inner(), ca_pem)),
                // The replica went away between the handshake and the call: another may answer.
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    Err(Failure::unreachable(anyhow::anyhow!("{}", s.message())))
                }
                Err(s) => Err(Failure::refused(anyhow::anyhow!(
                    "the controller refused enrollment: {}",
                    s.message()
                ))),
            }
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
