//! Maps the controller's errors to gRPC statuses, once.

use tonic::Status;

use crate::error::{Error, log_internal};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        log_internal(&e);
        match e {
            Error::NotFound(m) => Status::not_found(format!("{m} not found")),
            Error::Conflict(m) => Status::already_exists(m),
            Error::Invalid { message, .. } => Status::invalid_argument(message),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Forbidden(m) => Status::permission_denied(m),
            Error::TooManyRequests(m, _) => Status::resource_exhausted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Db(_) | Error::Internal(_) => Status::internal("internal error; see the controller log"),
        }
    }
}
