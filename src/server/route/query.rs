//! Query strings, as the routes read them.

use url::form_urlencoded;

/// The first value of one query parameter, decoded.
pub(super) fn parameter(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
