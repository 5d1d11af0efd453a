//! The one place where domain errors become gRPC statuses.
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Error;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(violations) => {
                let message = Error::InvalidArgument(violations.clone()).to_string();
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            e @ Error::NotFound { .. } => Status::not_found(e.to_string()),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::InsufficientCredits(s) => {
                let details = ErrorDetails::with_error_info(
                    "INSUFFICIENT_CREDITS",
                    "tollgate.v1",
                    [
                        ("credit_type".to_owned(), s.credit_type.clone()),
                        ("balance".to_owned(), s.balance.to_string()),
                        ("requested".to_owned(), s.requested.to_string()),
                    ],
                );
                Status::with_error_details(Code::FailedPrecondition, s.to_string(), details)
            }
            Error::Aborted(m) => Status::aborted(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Internal(e) => {
                // Logged in full here; the caller learns nothing of our insides.
                tracing::error!(error = ?e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
