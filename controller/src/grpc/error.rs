//! Maps the controller's errors to gRPC statuses, once. A refusal the agent should try again
//! later carries the delay in the status metadata `retry-after` (seconds), which the agent
//! honours before it reconnects; it keeps its spool meanwhile.

use std::time::Duration;

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::error::{Error, log_internal};

/// Status metadata: seconds after which a refused request may be tried again.
pub(crate) const RETRY_AFTER: &str = "retry-after";

/// `status`, telling the agent to try again after `after` (at least a second).
pub(crate) fn retry_later(mut status: Status, after: Duration) -> Status {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    status.metadata_mut().insert(RETRY_AFTER, MetadataValue::from(secs.max(1)));
    status
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        log_internal(&e);
        match e {
            Error::NotFound(m) => Status::not_found(format!("{m} not found")),
            Error::Conflict(m) => Status::already_exists(m),
            Error::PreconditionFailed(m) => Status::failed_precondition(m),
            Error::Invalid { message, .. } => Status::invalid_argument(message),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Forbidden(m) => Status::permission_denied(m),
            Error::TooManyRequests(m, None) => Status::resource_exhausted(m),
            Error::TooManyRequests(m, Some(secs)) => {
                retry_later(Status::resource_exhausted(m), Duration::from_secs(secs))
            }
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Db(_) | Error::Internal(_) => Status::internal("internal error; see the controller log"),
        }
    }
}
