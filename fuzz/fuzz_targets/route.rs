//! The request line as a client sends it: method, path and query, in any bytes. Routing must
//! answer every one with a route or a client error (never a panic), and a route's repository
//! name must be a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::route::{self, Route};

// The input is a method selector byte, then the request target (`path?query`) as text.
fuzz_target!(|input: &[u8]| {
    let Some((&selector, target)) = input.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let method = match selector % 4 {
        0 => http::Method::GET,
        1 => http::Method::HEAD,
        2 => http::Method::POST,
        _ => http::Method::DELETE,
    };
    let Ok(route) = route::parse(&method, path, query, |name| name == "ghcr.io") else {
        return;
    };
    match route {
        Route::Manifest { target, .. }
        | Route::Blob { target, .. }
        | Route::Listing { target, .. } => {
            let name = target.repo.to_string();
            assert!(name.len() <= 255, "{name}");
            assert_eq!(name.parse::<wharf::oci::RepoName>().unwrap(), target.repo);
            assert!(!name.split('/').any(|c| c == ".." || c == "."), "{name}");
        }
        _ => {}
    }
});
