//! Why a reconcile failed: which step, on which object; and, for metrics, in a few bounded
//! categories.

use std::fmt;

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed; usually transient.
    #[error("{step} {object}")]
    Kube {
        /// What the operator was doing.
        step: Step,
        /// The object, as `Kind namespace/name`.
        object: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The desired objects could not be built from the spec; waits for a spec change.
    #[error("rendering the objects of {object}")]
    Render {
        /// The object whose spec is rendered.
        object: String,
        /// What could not be serialized.
        #[source]
        source: serde_json::Error,
    },
    /// What the operator rendered or cached is not what it should be: a bug, reported rather
    /// than a crash.
    #[error("{0}")]
    Malformed(&'static str),
    /// Something the platform provides is not there (what, and what to do); retried with
    /// backoff, as it may come at any time.
    #[error("{0}")]
    Missing(String),
}

/// What the operator was doing when a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Server-side apply of a rendered object.
    Apply,
    /// Creating an object once (generated credentials).
    Create,
    /// Giving a database user and its application a new password together.
    NewPassword,
    /// Reading an object the caches do not hold.
    Read,
    /// Deleting an object no longer wanted.
    Delete,
    /// Keeping an object's data: labelled orphaned, no longer managed.
    Keep,
    /// Labelling a namespace as a subscriber of a service.
    Subscribe,
    /// Adding or removing a finalizer.
    Finalizer,
    /// Writing a status.
    Status,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Apply => "applying",
            Step::Create => "creating",
            Step::NewPassword => "writing a new password to",
            Step::Read => "reading",
            Step::Delete => "deleting",
            Step::Keep => "keeping (labelling orphaned)",
            Step::Subscribe => "labelling the subscription of",
            Step::Finalizer => "setting the finalizer of",
            Step::Status => "writing the status of",
        })
    }
}

/// Adds the step and object to a failed request.
pub trait During<T> {
    /// The error, if any, says that it happened during `step` on `object`.
    fn during(self, step: Step, object: impl fmt::Display) -> Result<T, Error>;
}

impl<T> During<T> for Result<T, kube::Error> {
    fn during(self, step: Step, object: impl fmt::Display) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            step,
            object: object.to_string(),
            source,
        })
    }
}

/// A request on an object that is gone already: for a deletion, a relabelling or a removal of a
/// label, that is what was asked.
pub fn gone_is_done<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

impl Error {
    /// A failure to render the objects of `object`.
    pub fn render(object: impl fmt::Display) -> impl FnOnce(serde_json::Error) -> Error {
        move |source| Error::Render {
            object: object.to_string(),
            source,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// A bounded reason, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match (self, self.status()) {
            (_, Some(409)) => "conflict",
            (_, Some(403)) => "forbidden",
            (_, Some(422)) => "invalid",
            (_, Some(_)) => "api_error",
            (Error::Kube { .. }, None) => "api_unreachable",
            (Error::Render { .. }, _) => "render",
            (Error::Malformed(_), _) => "malformed",
            (Error::Missing(_), _) => "missing",
        }
    }

    /// What went wrong, where and why, in one line: the step and object, and the API server's
    /// (or the renderer's) own message.
    pub fn explain(&self) -> String {
        match self {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => format!("{self}: {}", status.message),
            Error::Kube { source, .. } => format!("{self}: {source}"),
            Error::Render { source, .. } => format!("{self}: {source}"),
            Error::Malformed(_) | Error::Missing(_) => self.to_string(),
        }
    }

    /// Permanent errors wait for the object to change; transient ones are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Render { .. } | Error::Malformed(_)) || self.status() == Some(422)
    }
}

pub use crate::render::describe;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Invalid")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn an_error_says_which_step_and_object_and_keeps_its_cause() {
        let failed: Result<(), _> = Err(api(422));
        let error = failed
            .during(
                Step::Apply,
                describe("ConfigMap", Some("comune-a"), "sito-settings"),
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "applying ConfigMap comune-a/sito-settings"
        );
        assert!(std::error::Error::source(&error).is_some());
        assert_eq!(error.reason(), "invalid");
        assert!(error.is_permanent());
        let conflict: Result<(), _> = Err(api(409));
        let error = conflict.during(Step::Delete, "Namespace x").unwrap_err();
        assert_eq!(error.reason(), "conflict");
        assert!(!error.is_permanent());
    }
}
