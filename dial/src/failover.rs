//! Several addresses of one controller (its replicas, each reachable on its own, or a fallback
//! name): a client tries them in turn, starting with the one that answered last, and moves on
//! to the next only when one cannot be reached. A controller that answers and refuses is an
//! answer, not a reason to ask another replica of the same controller. Every address is dialled
//! the same way: the same pinned CA, the controller's role required of the server. The address
//! that answered last is kept in a file of the client's state, so a restart starts there.

use std::future::Future;
use std::path::Path;

use anyhow::bail;
use tonic::transport::Channel;

/// Why one address did not serve: `try_next` when it could not be reached (another replica
/// may), not when the controller answered with a refusal.
#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    pub try_next: bool,
}

impl Failure {
    /// The address could not be reached: try the next one.
    pub fn unreachable(error: anyhow::Error) -> Self {
        Failure { error, try_next: true }
    }

    /// The controller answered and refused: stop.
    pub fn refused(error: anyhow::Error) -> Self {
        Failure { error, try_next: false }
    }

    /// The outcome of one call to a replica: `Unavailable` means the replica went away between
    /// the handshake and the call (another may answer); any other status is the controller's
    /// refusal, described as "`refusal`: <its message>".
    pub fn from_answer<T>(
        answer: Result<tonic::Response<T>, tonic::Status>,
        refusal: &str,
    ) -> Result<T, Self> {
        match answer {
            Ok(resp) => Ok(resp.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                Err(Self::unreachable(anyhow::anyhow!("{}", s.message())))
            }
            Err(s) => Err(Self::refused(anyhow::anyhow!("{refusal}: {}", s.message()))),
        }
    }
}

/// The indexes of `len` addresses in the order to try them: `first` (the one that answered
/// last), then the others in their configured order, wrapping around.
pub fn rotation(len: usize, first: usize) -> impl Iterator<Item = usize> {
    let start = if first < len { first } else { 0 };
    (0..len).map(move |i| (start + i) % len)
}

/// Runs `attempt` on each address in [`rotation`] order until one succeeds (its result and its
/// index) or refuses (that error). When none can be reached, the error names every address and
/// why.
pub async fn try_in_turn<T, F, Fut>(
    urls: &[String],
    first: usize,
    mut attempt: F,
) -> anyhow::Result<(T, usize)>
where
    F: FnMut(usize, String) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    if urls.is_empty() {
        bail!("no controller address is configured");
    }
    let mut why: Vec<(String, anyhow::Error)> = Vec::new();
    for i in rotation(urls.len(), first) {
        match attempt(i, urls[i].clone()).await {
            Ok(t) => return Ok((t, i)),
            Err(Failure { error, try_next: false }) => return Err(error),
            Err(Failure { error, try_next: true }) => why.push((urls[i].clone(), error)),
        }
    }
    if why.len() == 1
        && let Some((_, only)) = why.pop()
    {
        // One address: its own error, as before there were several.
        return Err(only);
    }
    let each: Vec<String> = why.iter().map(|(url, e)| format!("{url}: {e:#}")).collect();
    bail!("none of the controller's {} addresses could be reached: {}", urls.len(), each.join("; "))
}

/// A mutual-TLS channel to the first reachable address of the controller (see
/// [`crate::session_channel`]), trying `urls` from index `first`; returns the channel and the
/// index of the address that answered.
pub async fn session_channel_any(
    urls: &[String],
    first: usize,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<(Channel, usize)> {
    try_in_turn(urls, first, |_, url| async move {
        crate::session_channel(&url, ca_pem, cert_pem, key_pem).await.map_err(Failure::unreachable)
    })
    .await
}

/// The addresses an enrollment holds, in the order to try them: `all` when it lists them, else
/// the single `first` (enrollments written before clients kept several).
pub fn addresses(first: &str, all: &[String]) -> Vec<String> {
    if all.is_empty() { vec![first.to_string()] } else { all.to_vec() }
}

/// The address that answered last, as kept in `file` (one URL), if it is still one of `urls`.
pub fn last_answered(file: &Path, urls: &[String]) -> Option<usize> {
    let raw = std::fs::read_to_string(file).ok()?;
    urls.iter().position(|u| u == raw.trim())
}

/// Remembers in `file` the address that answered (0600, replaced whole).
pub fn save_answered(file: &Path, url: &str) -> std::io::Result<()> {
    crate::files::write_atomic(file, url.as_bytes())
}

/// [`session_channel_any`] starting with the address that answered last (kept in `file`),
/// remembering the one that answers now. Not being able to remember it is logged, not fatal:
/// the channel is up.
pub async fn session_channel_remembered(
    urls: &[String],
    file: &Path,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<(Channel, usize)> {
    let last = last_answered(file, urls);
    let (channel, answered) = session_channel_any(urls, last.unwrap_or(0), ca_pem, cert_pem, key_pem).await?;
    if last != Some(answered)
        && let Err(e) = save_answered(file, &urls[answered])
    {
        tracing::warn!(file = %file.display(), error = %e, "cannot remember which controller address answered");
    }
    Ok((channel, answered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_replica_is_passed_over_and_any_other_status_is_a_refusal() {
        let ok = Failure::from_answer(Ok(tonic::Response::new(7)), "refused");
        assert_eq!(ok.ok(), Some(7));
        let gone = Failure::from_answer::<()>(Err(tonic::Status::unavailable("going away")), "refused");
        assert!(gone.as_ref().is_err_and(|f| f.try_next), "{gone:?}");
        let no = Failure::from_answer::<()>(
            Err(tonic::Status::permission_denied("the token has expired")),
            "the controller refused enrollment",
        );
        let no = no.err().map(|f| (f.try_next, f.error.to_string()));
        assert_eq!(no, Some((false, "the controller refused enrollment: the token has expired".to_string())));
    }

    #[test]
    fn the_rotation_starts_with_the_last_that_answered_and_wraps() {
        assert_eq!(rotation(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(3, 2).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(rotation(2, 7).collect::<Vec<_>>(), [0, 1], "an index out of range starts at the first");
        assert_eq!(rotation(0, 0).count(), 0);
    }

    #[test]
    fn the_address_that_answered_is_remembered_while_it_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("last-controller");
        let urls: Vec<String> = ["https://a", "https://b"].map(String::from).into();
        assert_eq!(last_answered(&file, &urls), None);
        save_answered(&file, "https://b").unwrap();
        assert_eq!(last_answered(&file, &urls), Some(1));
        assert_eq!(last_answered(&file, &urls[..1]), None, "an address no longer listed");
        assert_eq!(addresses("https://a", &[]), ["https://a"]);
        assert_eq!(addresses("https://a", &urls), urls);
    }

    #[tokio::test]
    async fn unreachable_addresses_are_skipped_and_a_refusal_stops() {
        let urls: Vec<String> = ["https://a", "https://b", "https://c"].map(String::from).into();
        let (got, i) = try_in_turn(&urls, 0, |_, u| async move {
            if u == "https://b" { Ok(u) } else { Err(Failure::unreachable(anyhow::anyhow!("refused"))) }
        })
        .await
        .unwrap();
        assert_eq!((got.as_str(), i), ("https://b", 1));

        let mut tried = Vec::new();
        let err = try_in_turn(&urls, 1, |_, u| {
            tried.push(u);
            async move { Err::<(), _>(Failure::refused(anyhow::anyhow!("token used up"))) }
        })
        .await
        .unwrap_err();
        assert_eq!(tried, ["https://b"], "a refusal is the controller's answer");
        assert_eq!(err.to_string(), "token used up");

        let err = try_in_turn(&urls, 2, |_, _| async move {
            Err::<(), _>(Failure::unreachable(anyhow::anyhow!("connection refused")))
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("none of the controller's 3 addresses could be reached: https://c: connection refused; https://a"), "{err}");

        let one = ["https://a".to_string()];
        let err = try_in_turn(&one, 0, |_, _| async move {
            Err::<(), _>(Failure::unreachable(anyhow::anyhow!("connection refused")))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "connection refused");
    }
}
