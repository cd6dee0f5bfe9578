//! The HTTP client that talks to backends.
//!
//! One `reqwest` client, HTTP/1.1 (what local servers and the cloud APIs all speak; HTTP/2
//! would add a dependency and buys nothing over a pooled keep-alive connection here), with
//! TLS by rustls on the `ring` crypto provider and the operating system's root
//! certificates (no bundled root list to keep up to date). reqwest is built without a
//! default provider so that the choice is made here, once: [`client_builder`] installs
//! `ring` as the process default unless the embedding program installed one first.
//! Timeouts are not set here: the request path sets them per request (connect, first
//! byte, idle stream) from the server's configuration.

use std::sync::Once;

/// The `user-agent` the gateway sends upstream.
pub const USER_AGENT: &str = concat!("nexus-gateway/", env!("CARGO_PKG_VERSION"));

/// A client builder with the gateway's TLS set-up and user agent; add timeouts and pool
/// settings, then `build()`.
///
/// ```
/// let client = nexus_gateway::upstream::client_builder()
///     .connect_timeout(std::time::Duration::from_secs(2))
///     .build()?;
/// # drop(client);
/// # Ok::<(), reqwest::Error>(())
/// ```
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().user_agent(USER_AGENT)
}

/// Installs `ring` as rustls' process-wide provider, once. If the embedding program
/// installed another provider first, that one stays.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means a provider is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
