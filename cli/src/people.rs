//! `cofre user …`, `cofre me` and `cofre api-token …`: people, their roles and groups (admins
//! only, except `me`), and API tokens for scripts (anyone signed in, for themselves).

use clap::Subcommand;
use cofre_client::Client;
use cofre_client::cofre_api::users::{NewApiToken, NewUser, UpdateUser};
use uuid::Uuid;

use crate::print;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Every user.
    List,
    /// Create a user; a password is generated and printed once unless --password-stdin.
    Create {
        username: String,
        /// admin, operator or auditor.
        #[arg(long)]
        role: String,
        /// Limit the user to this group's machines.
        #[arg(long)]
        group: Option<Uuid>,
        /// Read the password from stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role or group (their current tokens follow at once).
    Update {
        id: Uuid,
        #[arg(long)]
        role: Option<String>,
        #[arg(long, conflicts_with = "fleet_wide")]
        group: Option<Uuid>,
        /// Remove the group limit.
        #[arg(long)]
        fleet_wide: bool,
    },
    /// Disable a user: their tokens stop working at once.
    Disable { id: Uuid },
    /// Enable a disabled user.
    Enable { id: Uuid },
    /// Set a new password (generated and printed once unless --password-stdin).
    ResetPassword {
        id: Uuid,
        #[arg(long)]
        password_stdin: bool,
    },
}

fn password_from_stdin(wanted: bool) -> anyhow::Result<Option<String>> {
    if !wanted {
        return Ok(None);
    }
    let mut pw = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut pw)?;
    Ok(Some(pw.trim_end_matches(['\n', '\r']).to_string()))
}

pub async fn run(client: &Client, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::List => print(&client.list_users().await?),
        UserCommand::Create { username, role, group, password_stdin } => {
            let password = password_from_stdin(password_stdin)?;
            print(&client.create_user(&NewUser { username, role, group_id: group, password }).await?)
        }
        UserCommand::Update { id, role, group, fleet_wide } => {
            let group_id = if fleet_wide { Some(None) } else { group.map(Some) };
            print(&client.update_user(id, &UpdateUser { role, group_id }).await?)
        }
        UserCommand::Disable { id } => print(&client.set_user_disabled(id, true).await?),
        UserCommand::Enable { id } => print(&client.set_user_disabled(id, false).await?),
        UserCommand::ResetPassword { id, password_stdin } => {
            print(&client.reset_user_password(id, password_from_stdin(password_stdin)?).await?)
        }
    }
}

#[derive(Subcommand)]
pub enum ApiTokenCommand {
    /// Create a token for scripts; its secret is printed once (use it as COFRE_TOKEN).
    Create {
        #[arg(long)]
        name: String,
        /// At most your own role (default: yours).
        #[arg(long)]
        role: Option<String>,
        /// Limit it to one group's machines.
        #[arg(long)]
        group: Option<Uuid>,
        /// Only reads.
        #[arg(long)]
        read_only: bool,
        /// Lifetime in days (1 to 366; default 90).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Your tokens (--all: everyone's, for fleet-wide admins).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token: it stops working at once.
    Revoke { id: Uuid },
}

pub async fn api_token(client: &Client, cmd: ApiTokenCommand) -> anyhow::Result<()> {
    match cmd {
        ApiTokenCommand::Create { name, role, group, read_only, days } => {
            let req = NewApiToken { name, role, group_id: group, read_only, expires_in_days: days };
            print(&client.create_api_token(&req).await?)
        }
        ApiTokenCommand::List { all } => print(&client.list_api_tokens(all).await?),
        ApiTokenCommand::Revoke { id } => print(&client.revoke_api_token(id).await?),
    }
}
