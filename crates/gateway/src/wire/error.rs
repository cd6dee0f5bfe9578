//! What can be wrong with a request body, named so that a client can fix it.

use thiserror::Error;

/// A request body the gateway cannot route: every variant is a 400 `invalid_request`
/// (see [`GatewayError`](crate::GatewayError)), and its message says what was wrong, where,
/// and what to send instead.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The body was empty.
    #[error("the request body is empty: send a JSON object with at least a \"model\"")]
    EmptyBody,
    /// The body is not valid JSON (or not UTF-8).
    #[error("the request body is not valid JSON: {detail}")]
    InvalidJson {
        /// serde_json's account of the error, with its line and column.
        detail: String,
    },
    /// The body is valid JSON but not an object.
    #[error("the request body must be a JSON object, not {found}")]
    NotAnObject {
        /// The kind of value it is ("an array", "a string", ...).
        found: &'static str,
    },
    /// A key appears twice in the same object. Servers disagree on which copy wins, so a
    /// body whose meaning depends on the reader is refused rather than guessed at.
    #[error("the key \"{key}\" appears twice in the request body: send it once")]
    DuplicateKey {
        /// The key, with its parent's path for nested objects (`stream_options.include_usage`).
        key: String,
    },
    /// The body has no `model`.
    #[error(
        "the request body has no \"model\": name the model to use, e.g. \"model\": \"gpt-4o\""
    )]
    MissingModel,
    /// A value the gateway reads has the wrong type.
    #[error("\"{param}\" must be {expected}, not {found}")]
    WrongType {
        /// The parameter's path in the body.
        param: String,
        /// What it must be.
        expected: &'static str,
        /// What it is: the value itself when short, else its kind.
        found: String,
    },
    /// A value the gateway reads is malformed inside (e.g. a message that is not an object).
    #[error("\"{param}\" is invalid: {detail}")]
    InvalidField {
        /// The top-level parameter that holds the fault.
        param: &'static str,
        /// What is wrong and where, with line and column.
        detail: String,
    },
}

impl WireError {
    /// The request parameter at fault, for the OpenAI error's `param` field.
    ///
    /// ```
    /// use nexus_gateway::wire::{Endpoint, RequestBody};
    /// let err = RequestBody::parse(Endpoint::Embeddings, br#"{"model": 4}"#).unwrap_err();
    /// assert_eq!(err.param(), Some("model"));
    /// assert_eq!(err.to_string(), "\"model\" must be a non-empty string, not 4");
    /// ```
    pub fn param(&self) -> Option<&str> {
        match self {
            WireError::EmptyBody
            | WireError::InvalidJson { .. }
            | WireError::NotAnObject { .. } => None,
            WireError::DuplicateKey { key } => Some(key),
            WireError::MissingModel => Some("model"),
            WireError::WrongType { param, .. } => Some(param),
            WireError::InvalidField { param, .. } => Some(param),
        }
    }
}
