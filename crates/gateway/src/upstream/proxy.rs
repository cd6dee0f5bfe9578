//! Egress proxies: which proxy serves which backends, read from curl's variables.
//!
//! The rules are curl's (and reqwest's): `HTTPS_PROXY` serves `https` backends,
//! `HTTP_PROXY` `http` ones, `ALL_PROXY` either when its own is unset, and `NO_PROXY`
//! exempts hosts, domains (and their subdomains; a leading dot or not), IP addresses,
//! CIDR ranges, or everything (`*`). Matching is hyper-util's
//! [`Matcher`](hyper_util::client::proxy::matcher::Matcher), built once here; each URL
//! is checked here too, because the matcher drops one it cannot read without a word,
//! and an operator must hear which variable is wrong. The connector that uses all this
//! is [`super::connector`].
//!
//! The variables are read once, when [`ProxyConfig::from_env`] is called (the gateway
//! does it when it builds its client), never per request.

use std::sync::Arc;

use axum::http::Uri;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};

/// Which egress proxy, if any, serves `http` and `https` backends, and the hosts that
/// bypass it. Build it with [`from_env`](Self::from_env) (what the gateway does),
/// [`from_vars`](Self::from_vars) (the same rules over variables you hold) or
/// [`none`](Self::none); give it to
/// [`ClientBuilder::proxy`](super::ClientBuilder::proxy).
///
/// ```
/// use nexus_gateway::upstream::ProxyConfig;
///
/// let vars = [("HTTPS_PROXY", "http://user:secret@proxy.internal:3128"), ("NO_PROXY", ".corp")];
/// let proxies = ProxyConfig::from_vars(|name| {
///     vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
/// })?;
/// // What the start-up log says: no credentials.
/// assert_eq!(
///     proxies.to_string(),
///     "https backends through http://proxy.internal:3128 (HTTPS_PROXY, with credentials); \
///      http backends direct; NO_PROXY: .corp"
/// );
/// # Ok::<(), nexus_gateway::upstream::ProxyError>(())
/// ```
#[derive(Clone, Default)]
pub struct ProxyConfig {
    pub(super) http: Option<ProxyUrl>,
    pub(super) https: Option<ProxyUrl>,
    /// `NO_PROXY` as given (trimmed); empty when unset.
    no_proxy: String,
    /// hyper-util's matcher over the above; `None` when no backend goes through a proxy.
    pub(super) matcher: Option<Arc<Matcher>>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("no_proxy", &self.no_proxy)
            .finish_non_exhaustive()
    }
}

/// One proxy URL, checked.
#[derive(Clone)]
pub(super) struct ProxyUrl {
    /// The variable it came from.
    var: &'static str,
    /// As given, credentials included: what the matcher parses.
    raw: String,
    /// `scheme://host:port`, without credentials: what logs and errors show.
    shown: String,
    has_credentials: bool,
    /// Where the proxy listens: `scheme://host:port/`, the port written out.
    pub(super) uri: Uri,
    /// hyper-util's reading of it: its `Proxy-Authorization`, or SOCKS credentials.
    pub(super) intercept: Intercept,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the raw URL: it may carry a password.
        f.debug_struct("ProxyUrl")
            .field("var", &self.var)
            .field("url", &self.shown)
            .field("has_credentials", &self.has_credentials)
            .finish()
    }
}

/// A proxy variable whose value is not a usable proxy URL.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "{var}={shown}: {problem}; set {var} to a proxy URL such as \
     http://proxy.example:3128 or socks5h://proxy.example:1080 (credentials as \
     http://user:password@proxy.example:3128, percent-encoded), or unset it"
)]
pub struct ProxyError {
    var: &'static str,
    /// The value with any credentials masked.
    shown: String,
    problem: String,
}

impl ProxyError {
    /// The variable whose value was refused (`HTTPS_PROXY`, `http_proxy`, ...).
    pub fn var(&self) -> &str {
        self.var
    }
}

impl ProxyConfig {
    /// No proxy: every backend is reached directly.
    pub fn none() -> ProxyConfig {
        ProxyConfig::default()
    }

    /// The proxies the process's environment names: [`from_vars`](Self::from_vars) over
    /// [`std::env::var`]. Read once, now.
    ///
    /// # Errors
    ///
    /// A proxy variable that is set to something other than an `http://`, `socks5://`
    /// or `socks5h://` proxy URL.
    pub fn from_env() -> Result<ProxyConfig, ProxyError> {
        // A value that is not UTF-8 is kept (lossily), so that it is refused by name
        // rather than ignored.
        ProxyConfig::from_vars(|name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// The proxies `var` names, by curl's rules: `HTTPS_PROXY` (or `https_proxy`) for
    /// `https` backends, `HTTP_PROXY` (or `http_proxy`) for `http` ones, `ALL_PROXY` (or
    /// `all_proxy`) for either when its own is unset, and `NO_PROXY` (or `no_proxy`): a
    /// comma-separated list of hosts, domains (`example.com` and `.example.com` both
    /// match the domain and its subdomains), IP addresses and CIDR ranges reached
    /// directly, or `*` for every host. The upper-case name wins when both are set; an
    /// empty value counts as unset. A proxy is `http://host:port` (a URL without a
    /// scheme is `http://`), `socks5://` (names resolved here) or `socks5h://` (names
    /// resolved by the proxy), with optional `user:password@`.
    ///
    /// # Errors
    ///
    /// A set variable whose value is not such a URL (unparseable, no host, or another
    /// scheme: `https://` proxies and SOCKS4 are not supported), naming the variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ProxyConfig, ProxyError> {
        let first = |names: [&'static str; 2]| -> Option<(&'static str, String)> {
            names.into_iter().find_map(|name| {
                let value = var(name)?;
                let value = value.trim();
                (!value.is_empty()).then(|| (name, value.to_owned()))
            })
        };
        let checked = |found: Option<(&'static str, String)>| {
            found
                .map(|(name, value)| ProxyUrl::parse(name, value))
                .transpose()
        };
        let all = checked(first(["ALL_PROXY", "all_proxy"]))?;
        let http = checked(first(["HTTP_PROXY", "http_proxy"]))?.or_else(|| all.clone());
        let https = checked(first(["HTTPS_PROXY", "https_proxy"]))?.or(all);
        let no_proxy = first(["NO_PROXY", "no_proxy"]).map_or_else(String::new, |(_, v)| v);
        // `NO_PROXY=*` is curl's "every host", IP addresses included (hyper-util's
        // matcher applies `*` to names only).
        let bypass_all = no_proxy.split(',').any(|entry| entry.trim() == "*");
        let matcher = (!bypass_all && (http.is_some() || https.is_some())).then(|| {
            let mut matcher = Matcher::builder().no(no_proxy.as_str());
            if let Some(http) = &http {
                matcher = matcher.http(http.raw.as_str());
            }
            if let Some(https) = &https {
                matcher = matcher.https(https.raw.as_str());
            }
            Arc::new(matcher.build())
        });
        Ok(ProxyConfig {
            http,
            https,
            no_proxy,
            matcher,
        })
    }

    /// Whether no backend goes through a proxy: none is set, or `NO_PROXY` is `*`.
    pub fn is_direct(&self) -> bool {
        self.matcher.is_none()
    }

    /// The proxy a request to `uri` goes through (`http://host:port`, without
    /// credentials), or `None` when it goes directly: its scheme has no proxy, or its
    /// host is in `NO_PROXY`.
    ///
    /// ```
    /// use nexus_gateway::upstream::ProxyConfig;
    ///
    /// let vars = [("ALL_PROXY", "http://proxy:3128"), ("NO_PROXY", "localhost,10.0.0.0/8,.corp")];
    /// let proxies = ProxyConfig::from_vars(|name| {
    ///     vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    /// })?;
    /// let via = |url: &str| proxies.proxy_for(&url.parse().unwrap()).map(str::to_owned);
    /// assert_eq!(via("https://api.openai.com/v1").as_deref(), Some("http://proxy:3128"));
    /// assert_eq!(via("http://localhost:11434"), None);
    /// assert_eq!(via("http://10.1.2.3:8000/v1"), None);
    /// assert_eq!(via("https://llm.eu.corp/v1"), None);
    /// # Ok::<(), nexus_gateway::upstream::ProxyError>(())
    /// ```
    pub fn proxy_for(&self, uri: &Uri) -> Option<&str> {
        self.matcher.as_ref()?.intercept(uri)?;
        let proxy = match uri.scheme_str()? {
            "https" => self.https.as_ref()?,
            "http" => self.http.as_ref()?,
            _ => return None,
        };
        Some(&proxy.shown)
    }
}

impl std::fmt::Display for ProxyConfig {
    /// Which proxy serves which scheme and the `NO_PROXY` list, without credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (scheme, proxy) in [("https", &self.https), ("http", &self.http)] {
            if scheme == "http" {
                f.write_str("; ")?;
            }
            match proxy {
                None => write!(f, "{scheme} backends direct")?,
                Some(p) => {
                    write!(f, "{scheme} backends through {} ({}", p.shown, p.var)?;
                    if p.has_credentials {
                        f.write_str(", with credentials")?;
                    }
                    f.write_str(")")?;
                }
            }
        }
        if !self.no_proxy.is_empty() {
            write!(f, "; NO_PROXY: {}", self.no_proxy)?;
        }
        Ok(())
    }
}

impl ProxyUrl {
    fn parse(var: &'static str, raw: String) -> Result<ProxyUrl, ProxyError> {
        let refuse = |problem: String| ProxyError {
            var,
            shown: mask_credentials(&raw),
            problem,
        };
        let uri: Uri = raw
            .parse()
            .map_err(|e| refuse(format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            None | Some("http") => {}
            Some("https") => {
                return Err(refuse(
                    "an https:// proxy (TLS to the proxy itself) is not supported".to_owned(),
                ))
            }
            Some("socks5" | "socks5h") => {}
            Some(s) if s.starts_with("socks") => {
                return Err(refuse(format!(
                    "{s}:// proxies are not supported (socks5:// and socks5h:// are)"
                )))
            }
            Some(s) => return Err(refuse(format!("{s}:// is not a proxy scheme"))),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| refuse("no proxy host in it".to_owned()))?;
        let has_credentials = authority.as_str().contains('@');
        let host = authority.host();
        if host.is_empty() {
            return Err(refuse("no proxy host in it".to_owned()));
        }
        // hyper-util's matcher must read it the same way, or it would drop it silently.
        let probe = Matcher::builder().all(raw.as_str()).build();
        let intercept = probe
            .intercept(&Uri::from_static("http://probe.invalid/"))
            .ok_or_else(|| refuse("not a proxy URL hyper-util can read".to_owned()))?;
        // Without a port: 80 for an http proxy (as reqwest, Python and Go take it), 1080
        // for SOCKS (its port, as curl takes it).
        let scheme = intercept.uri().scheme_str().unwrap_or("http").to_owned();
        let authority = intercept.uri().authority().map_or(host, |a| a.as_str());
        let shown = match intercept.uri().port_u16() {
            Some(_) => format!("{scheme}://{authority}"),
            None if scheme.starts_with("socks") => format!("{scheme}://{authority}:1080"),
            None => format!("{scheme}://{authority}:80"),
        };
        let uri = format!("{shown}/")
            .parse()
            .map_err(|e| refuse(format!("not a URL ({e})")))?;
        Ok(ProxyUrl {
            var,
            raw,
            shown,
            has_credentials,
            uri,
            intercept,
        })
    }

    /// `http://host:port (VAR)`: how errors name it.
    pub(super) fn name(&self) -> Arc<str> {
        Arc::from(format!("{} ({})", self.shown, self.var))
    }
}

/// `value` with what comes before an `@` (user and password) masked.
fn mask_credentials(value: &str) -> String {
    match value.rsplit_once('@') {
        None => value.to_owned(),
        Some((before, after)) => {
            let scheme = before.split_once("://").map_or("", |(s, _)| s);
            if scheme.is_empty() {
                format!("***@{after}")
            } else {
                format!("{scheme}://***@{after}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<ProxyConfig, ProxyError> {
        ProxyConfig::from_vars(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn via<'a>(config: &'a ProxyConfig, url: &str) -> Option<&'a str> {
        config.proxy_for(&url.parse().expect("a test URL"))
    }

    #[test]
    fn each_scheme_takes_its_own_variable_then_all_proxy() {
        let config = vars(&[
            ("HTTPS_PROXY", "http://secure:1"),
            ("https_proxy", "http://lower:2"),
            ("all_proxy", "http://all:3"),
        ])
        .unwrap();
        assert_eq!(
            via(&config, "https://api.openai.com/v1"),
            Some("http://secure:1")
        );
        assert_eq!(via(&config, "http://gpu-box:8000/v1"), Some("http://all:3"));

        // An empty upper-case variable counts as unset.
        let config = vars(&[("HTTP_PROXY", ""), ("http_proxy", "plain:8080")]).unwrap();
        assert_eq!(
            via(&config, "http://gpu-box:8000"),
            Some("http://plain:8080")
        );
        assert_eq!(via(&config, "https://api.openai.com"), None);

        assert!(vars(&[]).unwrap().is_direct());
        assert_eq!(via(&vars(&[]).unwrap(), "https://api.openai.com"), None);
    }

    #[test]
    fn no_proxy_takes_names_domains_addresses_ranges_and_a_star() {
        let config = vars(&[
            ("ALL_PROXY", "http://proxy:3128"),
            (
                "NO_PROXY",
                "localhost, .corp,example.org,192.168.1.7,10.0.0.0/8,::1",
            ),
        ])
        .unwrap();
        for direct in [
            "http://localhost:11434",
            "https://llm.eu.corp/v1",
            "https://example.org/v1",
            "https://api.example.org/v1",
            "http://192.168.1.7:8000",
            "http://10.20.30.40:8000",
            "http://[::1]:8000",
        ] {
            assert_eq!(via(&config, direct), None, "{direct}");
        }
        for proxied in [
            "https://api.openai.com/v1",
            "https://notexample.org/v1",
            "http://192.168.1.8:8000",
            "http://127.0.0.1:8000",
        ] {
            assert_eq!(
                via(&config, proxied),
                Some("http://proxy:3128"),
                "{proxied}"
            );
        }
        // `*` is every host, addresses included.
        let star = vars(&[("ALL_PROXY", "http://proxy:3128"), ("no_proxy", "*")]).unwrap();
        assert!(star.is_direct());
        assert_eq!(via(&star, "http://127.0.0.1:8000"), None);
        assert_eq!(via(&star, "https://api.openai.com"), None);
    }

    #[test]
    fn credentials_are_sent_but_never_shown() {
        let config = vars(&[
            ("HTTPS_PROXY", "http://ops:s%3Acret@proxy:3128"),
            ("NO_PROXY", "localhost"),
        ])
        .unwrap();
        let shown = format!("{config} {config:?}");
        assert!(
            !shown.contains("s%3Acret") && !shown.contains("s:cret"),
            "{shown}"
        );
        assert_eq!(
            config.to_string(),
            "https backends through http://proxy:3128 (HTTPS_PROXY, with credentials); \
             http backends direct; NO_PROXY: localhost"
        );
        let https = config.https.as_ref().unwrap();
        // base64("ops:s:cret")
        assert_eq!(
            https.intercept.basic_auth().unwrap(),
            "Basic b3BzOnM6Y3JldA=="
        );
        let bare = vars(&[
            ("HTTP_PROXY", "proxy.corp"),
            ("HTTPS_PROXY", "socks5h://proxy.corp"),
        ])
        .unwrap();
        assert_eq!(
            via(&bare, "http://gpu-box:8000"),
            Some("http://proxy.corp:80")
        );
        assert_eq!(
            via(&bare, "https://api.openai.com"),
            Some("socks5h://proxy.corp:1080")
        );
        assert_eq!(mask_credentials("http://u:p@h:1"), "http://***@h:1");
        assert_eq!(mask_credentials("u:p@h:1"), "***@h:1");
        assert_eq!(mask_credentials("http://h:1"), "http://h:1");
    }
}
