//! The OCI error codes and the `{"errors":[...]}` body every failed response carries.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    Toomanyrequests,
    /// Distribution's code for a malformed tag.
    TagInvalid,
    /// Not in the spec's table, which only covers client mistakes; clients treat unknown codes
    /// as opaque, and an operator reading a 502 body learns which side failed.
    UpstreamUnavailable,
    /// Also not in the spec's table: the mirror itself is short of resources for a moment.
    Unavailable,
    InternalError,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    errors: Vec<ErrorEntry>,
}

#[derive(Debug, Serialize)]
struct ErrorEntry {
    code: ErrorCode,
    message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            errors: vec![ErrorEntry {
                code,
                message: message.into(),
            }],
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("error bodies always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_spec_envelope() {
        let body = ErrorBody::new(ErrorCode::BlobUnknown, "blob unknown to registry");
        assert_eq!(
            String::from_utf8(body.to_json()).unwrap(),
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#
        );
        let body = ErrorBody::new(ErrorCode::Toomanyrequests, "slow down");
        assert!(String::from_utf8(body.to_json())
            .unwrap()
            .contains("TOOMANYREQUESTS"));
    }
}
