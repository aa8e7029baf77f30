//! Why a reconcile failed, in a few bounded categories.

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed; usually transient.
    #[error("Kubernetes API request failed")]
    Kube(#[from] kube::Error),
    /// The desired objects could not be built from the spec; waits for a spec change.
    #[error("cannot render the objects for this spec")]
    Render(#[from] serde_json::Error),
    /// The object in the cache has no name or uid: it cannot be worked on.
    #[error("object is missing {0}")]
    Malformed(&'static str),
}

impl Error {
    /// A bounded reason, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(status)) if status.code == 422 => "invalid",
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "api_unreachable",
            Error::Render(_) => "render",
            Error::Malformed(_) => "malformed",
        }
    }

    /// Permanent errors wait for the object to change; transient ones are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Render(_) | Error::Malformed(_))
            || matches!(self, Error::Kube(kube::Error::Api(status)) if status.code == 422)
    }
}
