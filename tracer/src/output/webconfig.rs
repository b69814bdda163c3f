//! `--web.config.file`: the agent's TLS and basic auth, in the web
//! configuration format of Prometheus' exporter-toolkit (the one
//! Prometheus, node_exporter and ebpf_exporter read):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # or `cert:` with the PEM inline
//!   key_file: server.key           # or `key:`
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients-ca.crt # or `client_ca:`
//!   min_version: TLS12             # TLS12 (default) or TLS13; max_version too
//!   cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]  # TLS 1.2 only, as in Go
//!   curve_preferences: [X25519, CurveP256]
//!   prefer_server_cipher_suites: true
//! http_server_config:
//!   headers: { Strict-Transport-Security: max-age=31536000 }
//! basic_auth_users:
//!   prometheus: $2y$10$...          # bcrypt hashes only
//! ```
//!
//! Unknown keys are errors, as exporter-toolkit's strict parsing makes
//! them. What rustls cannot do is refused with a reason rather than
//! ignored: TLS 1.0 and 1.1, CBC cipher suites, P-521, and client
//! certificates accepted without verification (`RequestClientCert`,
//! `RequireAnyClientCert`). Every error names the file and, where it
//! points at one, the line that is wrong.
//!
//! Loading reads the certificate and key files too, so a [`WebConfig`] is
//! complete: re-loading it (SIGHUP) picks up renewed certificates.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::http::{HeaderName, HeaderValue};
use rustls::{
    crypto::ring as provider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig, SupportedCipherSuite,
};
use serde::Deserialize;

/// A web configuration file that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebConfigError {
    pub(crate) path: PathBuf,
    /// 1-based line of the file that is wrong, when one is.
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

impl fmt::Display for WebConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "web config {} line {line}: {}", self.path.display(), self.message),
            None => write!(f, "web config {}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for WebConfigError {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    tls_server_config: Option<TlsFormat>,
    http_server_config: Option<HttpFormat>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFormat {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFormat {
    /// The agent serves HTTP/1.1 only; accepted for compatibility.
    #[serde(rename = "http2")]
    _http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The headers exporter-toolkit lets `http_server_config.headers` set, and
/// the values it allows (`None`: any).
const ALLOWED_HEADERS: [(&str, Option<&[&str]>); 5] = [
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// A loaded web configuration: what the HTTP side enforces.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebConfig {
    /// TLS, if `tls_server_config` is set.
    pub(crate) tls: Option<Arc<ServerConfig>>,
    /// User name -> bcrypt hash; empty: no authentication.
    pub(crate) users: BTreeMap<String, String>,
    /// Added to every response.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl WebConfig {
    /// Reads and checks `path`, and the certificate and key files it names
    /// (relative paths are relative to the file's directory, as in
    /// exporter-toolkit).
    pub(crate) fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| WebConfigError {
            path: path.to_owned(),
            line: None,
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Checks `text`, read from `path`.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<WebConfig, WebConfigError> {
        let fail = |line: Option<usize>, message: String| WebConfigError { path: path.to_owned(), line, message };
        let format: FileFormat = if text.trim().is_empty() {
            FileFormat::default()
        } else {
            serde_yaml_ng::from_str::<Option<FileFormat>>(text)
                .map_err(|e| {
                    let line = e.location().map(|l| l.line());
                    // The location is given as a line of its own.
                    let message = e.to_string();
                    let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
                    fail(line, message)
                })?
                .unwrap_or_default()
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut users = BTreeMap::new();
        for (user, hash) in format.basic_auth_users {
            if let Err(e) = hash.parse::<bcrypt::HashParts>() {
                return Err(fail(
                    line_of(text, &user),
                    format!("basic_auth_users: the password of {user:?} is not a bcrypt hash ({e})"),
                ));
            }
            users.insert(user, hash);
        }
        let mut headers = Vec::new();
        for (name, value) in format.http_server_config.map(|h| h.headers).unwrap_or_default() {
            let line = line_of(text, &name);
            let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(known, _)| known.eq_ignore_ascii_case(&name)) else {
                let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
                return Err(fail(
                    line,
                    format!("http_server_config.headers: {name} cannot be set (only {})", names.join(", ")),
                ));
            };
            if let Some(values) = allowed {
                if !values.iter().any(|v| v.eq_ignore_ascii_case(&value)) {
                    return Err(fail(
                        line,
                        format!("http_server_config.headers: {name} must be one of {}", values.join(", ")),
                    ));
                }
            }
            let parsed = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str()));
            let (Ok(name), Ok(value)) = parsed else {
                return Err(fail(line, format!("http_server_config.headers: {name}: not a valid header")));
            };
            headers.push((name, value));
        }
        let tls = match format.tls_server_config {
            Some(tls) => Some(Arc::new(tls_config(&tls, text, base).map_err(|(line, message)| fail(line, message))?)),
            None => None,
        };
        Ok(WebConfig { tls, users, headers })
    }
}

impl WebConfig {
    /// Whether `password` is `user`'s. Slow (bcrypt) by design, and as
    /// slow for an unknown user, so timing does not tell which users exist.
    pub(crate) fn authenticate(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, unknown_user_hash());
                false
            }
        }
    }
}

/// A hash of nothing anyone sends, compared against for unknown users.
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash("tracer: no such user", bcrypt::DEFAULT_COST).unwrap_or_default())
}

/// The first line that sets `key` (`key:` at the start, after indentation
/// or a list dash), 1-based.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches("- ").trim_start();
            let line = line
                .strip_prefix('"')
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix('"'))
                .or_else(|| {
                    line.strip_prefix('\'').and_then(|l| l.strip_prefix(key)).and_then(|l| l.strip_prefix('\''))
                })
                .or_else(|| line.strip_prefix(key));
            line.is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|index| index + 1)
}

type TlsError = (Option<usize>, String);

/// PEM from a file (relative to `base`) or inline, whichever is set.
fn pem(
    file: &Option<String>,
    inline: &Option<String>,
    base: &Path,
    what: &str,
    text: &str,
) -> Result<Option<Vec<u8>>, TlsError> {
    let (key_file, key_inline) = match what {
        "cert" => ("cert_file", "cert"),
        "key" => ("key_file", "key"),
        _ => ("client_ca_file", "client_ca"),
    };
    match (file, inline) {
        (Some(_), Some(_)) => {
            Err((line_of(text, key_inline), format!("tls_server_config: both {key_file} and {key_inline} are set")))
        }
        (Some(file), None) => {
            let path = base.join(file);
            std::fs::read(&path).map(Some).map_err(|e| {
                (line_of(text, key_file), format!("tls_server_config.{key_file}: cannot read {}: {e}", path.display()))
            })
        }
        (None, Some(inline)) => Ok(Some(inline.as_bytes().to_vec())),
        (None, None) => Ok(None),
    }
}

fn version(name: &str) -> Result<&'static rustls::SupportedProtocolVersion, String> {
    match name {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(format!("{name} is not supported (rustls speaks TLS12 and TLS13)")),
        other => Err(format!("unknown TLS version {other:?} (TLS12 or TLS13)")),
    }
}

/// rustls' name of a cipher suite, e.g. `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`.
fn suite_name(suite: &SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite())
}

fn tls_config(tls: &TlsFormat, text: &str, base: &Path) -> Result<ServerConfig, TlsError> {
    let cert = pem(&tls.cert_file, &tls.cert, base, "cert", text)?;
    let key = pem(&tls.key_file, &tls.key, base, "key", text)?;
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err((
            line_of(text, "tls_server_config"),
            "tls_server_config: cert_file and key_file are both required".into(),
        ));
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert).collect::<Result<_, _>>().map_err(|e| {
            (
                line_of(text, "cert_file").or(line_of(text, "cert")),
                format!("tls_server_config: the certificate is not PEM: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err((
            line_of(text, "cert_file").or(line_of(text, "cert")),
            "tls_server_config: no certificate in the cert file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        (
            line_of(text, "key_file").or(line_of(text, "key")),
            format!("tls_server_config: no private key in the key file: {e}"),
        )
    })?;

    let mut crypto = provider::default_provider();
    if let Some(names) = &tls.cipher_suites {
        let line = line_of(text, "cipher_suites");
        let mut chosen = Vec::new();
        for name in names {
            // Go also names the ChaCha20 suites without the hash.
            let full = if name.ends_with("CHACHA20_POLY1305") { format!("{name}_SHA256") } else { name.clone() };
            let suite = crypto
                .cipher_suites
                .iter()
                .find(|s| matches!(s, SupportedCipherSuite::Tls12(_)) && suite_name(s) == full);
            match suite {
                Some(suite) => chosen.push(*suite),
                None => {
                    let known: Vec<String> = crypto
                        .cipher_suites
                        .iter()
                        .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
                        .map(suite_name)
                        .collect();
                    return Err((
                        line,
                        format!(
                            "tls_server_config.cipher_suites: {name} is not supported (TLS 1.2 suites: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        // As in Go, the list only restricts TLS 1.2; TLS 1.3's suites stay.
        crypto.cipher_suites.retain(|s| matches!(s, SupportedCipherSuite::Tls13(_)) || chosen.contains(s));
    }
    if let Some(curves) = &tls.curve_preferences {
        let line = line_of(text, "curve_preferences");
        let mut groups = Vec::new();
        for curve in curves {
            groups.push(match curve.as_str() {
                "X25519" => provider::kx_group::X25519,
                "CurveP256" => provider::kx_group::SECP256R1,
                "CurveP384" => provider::kx_group::SECP384R1,
                other => {
                    return Err((
                        line,
                        format!(
                        "tls_server_config.curve_preferences: {other} is not supported (X25519, CurveP256, CurveP384)"
                    ),
                    ))
                }
            });
        }
        crypto.kx_groups = groups;
    }
    let min = version(tls.min_version.as_deref().unwrap_or("TLS12"))
        .map_err(|e| (line_of(text, "min_version"), format!("tls_server_config.min_version: {e}")))?;
    let max = version(tls.max_version.as_deref().unwrap_or("TLS13"))
        .map_err(|e| (line_of(text, "max_version"), format!("tls_server_config.max_version: {e}")))?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| (u16::from(min.version)..=u16::from(max.version)).contains(&u16::from(v.version)))
        .collect();
    if versions.is_empty() {
        return Err((line_of(text, "max_version"), "tls_server_config: max_version is below min_version".into()));
    }
    if tls.client_allowed_sans.is_some() {
        return Err((
            line_of(text, "client_allowed_sans"),
            "tls_server_config.client_allowed_sans is not supported".into(),
        ));
    }
    let crypto = Arc::new(crypto);
    let client_ca = pem(&tls.client_ca_file, &tls.client_ca, base, "client_ca", text)?;
    let auth_line = line_of(text, "client_auth_type");
    // exporter-toolkit: a client CA without a type means verify and require.
    let auth_type = tls.client_auth_type.as_deref().unwrap_or(if client_ca.is_some() {
        "RequireAndVerifyClientCert"
    } else {
        "NoClientCert"
    });
    let builder = ServerConfig::builder_with_provider(Arc::clone(&crypto))
        .with_protocol_versions(&versions)
        .map_err(|e| (line_of(text, "min_version"), format!("tls_server_config: {e}")))?;
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let Some(client_ca) = client_ca else {
                return Err((auth_line, format!("tls_server_config: client_auth_type {auth_type} needs client_ca_file")));
            };
            let ca_line = line_of(text, "client_ca_file").or(line_of(text, "client_ca"));
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&client_ca) {
                let cert = cert.map_err(|e| (ca_line, format!("tls_server_config: the client CA is not PEM: {e}")))?;
                roots.add(cert).map_err(|e| (ca_line, format!("tls_server_config: bad client CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&crypto));
            let verifier = if auth_type == "VerifyClientCertIfGiven" { verifier.allow_unauthenticated() } else { verifier };
            let verifier = verifier.build().map_err(|e| (ca_line, format!("tls_server_config: the client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err((auth_line, format!(
                "tls_server_config.client_auth_type {auth_type} (client certificates without verification) is not supported: \
                 use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
            )))
        }
        other => return Err((auth_line, format!("tls_server_config.client_auth_type: unknown {other:?}"))),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        (
            line_of(text, "key_file").or(line_of(text, "key")),
            format!("tls_server_config: the certificate and key do not go together: {e}"),
        )
    })?;
    config.ignore_client_order = tls.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, WebConfigError> {
        WebConfig::parse(text, Path::new("/nonexistent/web.yml"))
    }

    fn error_line(text: &str) -> (Option<usize>, String) {
        let err = parse(text).expect_err("refused");
        (err.line, err.message)
    }

    #[test]
    fn users_and_headers() {
        // Cost 4: fast in tests.
        let hash = bcrypt::hash("secret", 4).expect("hashes");
        let config = parse(&format!(
            "basic_auth_users:\n  prometheus: '{hash}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ))
        .expect("valid");
        assert_eq!(config.users.get("prometheus"), Some(&hash));
        assert!(config.authenticate("prometheus", "secret"));
        assert!(!config.authenticate("prometheus", "wrong"));
        assert!(!config.authenticate("nobody", "secret"));
        assert_eq!(config.headers.len(), 1);
        assert!(config.tls.is_none());
        assert!(parse("").expect("empty is no config").users.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let (line, message) = error_line("basic_auth_users:\n  a: '$2y$04$x'\n");
        assert_eq!(line, Some(2), "{message}");
        assert!(message.contains("not a bcrypt hash"), "{message}");
        let (line, message) = error_line("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_versoin: TLS12\n");
        assert_eq!(line, Some(4), "{message}");
        assert!(message.contains("unknown field `min_versoin`"), "{message}");
        let (line, message) = error_line("basic_auth_users: [1, 2\n");
        assert!(line.is_some(), "{message}");
        let (line, message) = error_line("http_server_config:\n  headers:\n    Server: x\n");
        assert_eq!(line, Some(3), "{message}");
        let (line, message) = error_line("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n");
        assert_eq!(line, Some(2), "{message}");
        assert!(message.contains("cannot read /nonexistent/missing.crt"), "{message}");
        let err = parse("nope: 1\n").expect_err("unknown top-level key");
        assert_eq!(err.to_string(), format!("web config /nonexistent/web.yml line 1: {}", err.message));
    }

    #[test]
    fn lines_of_keys() {
        let text = "a:\n  b: 1\n  \"c\": 2\n  - d: 3\n";
        assert_eq!(line_of(text, "b"), Some(2));
        assert_eq!(line_of(text, "c"), Some(3));
        assert_eq!(line_of(text, "d"), Some(4));
        assert_eq!(line_of(text, "e"), None);
    }
}
