//! The controller's error type: semantic cases, mapped once to HTTP (api/error.rs) and once to
//! gRPC (grpc/error.rs).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// An edit made from a stale copy (If-Match no longer matches).
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{message}")]
    Invalid { message: String, fields: Vec<FieldError> },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// Slow down; the number is the seconds to wait, when known (HTTP `Retry-After`).
    #[error("{0}")]
    TooManyRequests(String, Option<u64>),
    #[error("database error")]
    Db(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One problem with one named field: the same type the policy rules report.
pub use cofre_policy::spec::FieldError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid { message: message.into(), fields: Vec::new() }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::fields(vec![FieldError::new(field, message)])
    }

    /// Several field problems at once (the message names the first and counts the others).
    pub fn fields(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [] => "invalid request".to_string(),
            [f] if f.field.is_empty() => f.message.clone(),
            [f] => format!("{}: {}", f.field, f.message),
            [f, rest @ ..] => format!("{}: {} (and {} more problems)", f.field, f.message, rest.len()),
        };
        Error::Invalid { message, fields }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Error::Internal(e.into())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                // unique_violation
                Some("23505") => {
                    return Error::Conflict(format!(
                        "already exists ({})",
                        db.constraint().unwrap_or("unique constraint")
                    ));
                }
                // foreign_key_violation
                Some("23503") => {
                    return Error::invalid(format!(
                        "refers to something that does not exist ({})",
                        db.constraint().unwrap_or("foreign key")
                    ));
                }
                // check_violation
                Some("23514") => {
                    return Error::invalid(format!(
                        "value not allowed ({})",
                        db.constraint().unwrap_or("check constraint")
                    ));
                }
                _ => {}
            }
        }
        if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed) {
            return Error::Unavailable("database unavailable".into());
        }
        Error::Db(e)
    }
}

impl From<crate::seal::SealError> for Error {
    fn from(e: crate::seal::SealError) -> Self {
        Error::Internal(e.into())
    }
}

/// Logs an internal error once, with its cause chain, where it is mapped for a client.
pub fn log_internal(e: &Error) {
    match e {
        Error::Db(_) | Error::Internal(_) | Error::Unavailable(_) => {
            let mut chain = String::new();
            let mut src: Option<&dyn std::error::Error> = Some(e);
            while let Some(s) = src {
                if !chain.is_empty() {
                    chain.push_str(": ");
                }
                chain.push_str(&s.to_string());
                src = s.source();
            }
            tracing::error!(error = %chain, "request failed");
        }
        _ => {}
    }
}
