//! The browser SDK, embedded in the binary and served at `/sdk/switchboard.js` (with its types at
//! `/sdk/switchboard.d.ts`), so a page loads the client that matches the server it talks to.

use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::HttpResponse;

const SCRIPT: &str = include_str!("../sdk/switchboard.js");
const TYPES: &str = include_str!("../sdk/switchboard.d.ts");

/// An hour: long enough to spare repeat downloads, short enough that an upgrade reaches pages.
const MAX_AGE: u32 = 3600;

fn file(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType(
            content_type.parse().expect("a valid media type"),
        ))
        .insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(MAX_AGE),
        ]))
        .body(body)
}

pub async fn script() -> HttpResponse {
    file("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn types() -> HttpResponse {
    file("application/typescript; charset=utf-8", TYPES)
}
