//! The hash key of a request under a route's consistent-hash policy (Envoy's route `hash_policy`
//! as Istio writes it from `consistentHash`), and the cookie Keel issues when the policy asks for one.
//!
//! Keys are hashed with XXH64 as Envoy hashes them: a header's values (sorted, chained), a cookie's
//! value without surrounding quotes, a query parameter's first raw value, the client pod's IP
//! address. A request without the key has no hash, and a hashing cluster then picks at random.
//! Computed once per request from the client's request as it arrived (before route header
//! operations and rewrites, which Envoy applies after choosing the host).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{HeaderValue, COOKIE};
use http::HeaderMap;

use super::digest::xxh64;
use crate::policy::HashKey;

/// A request's hash, and the `Set-Cookie` value to add to the response when Keel issued the cookie.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestHash {
    /// `None`: the request lacks the key.
    pub hash: Option<u64>,
    /// `Set-Cookie` for a generated cookie.
    pub set_cookie: Option<HeaderValue>,
}

/// What of a request and its connection a hash policy may read.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// The client's request headers.
    pub headers: &'a HeaderMap,
    /// The client's `:path`, query included.
    pub path_and_query: &'a str,
    /// The client pod's address (kernel-attested source of the connection).
    pub peer: SocketAddr,
    /// The address the client dialled (the downstream connection's local address for Envoy).
    pub original_dst: SocketAddr,
}

/// The hash of a request under `key`.
pub fn request_hash(key: &HashKey, req: &HashInput<'_>) -> RequestHash {
    match key {
        HashKey::Header(name) => RequestHash {
            hash: header_hash(req.headers, name),
            set_cookie: None,
        },
        HashKey::QueryParameter(name) => RequestHash {
            hash: query_value(req.path_and_query, name).map(|v| xxh64(v.as_bytes(), 0)),
            set_cookie: None,
        },
        HashKey::SourceIp => RequestHash {
            hash: Some(source_ip_hash(req.peer.ip())),
            set_cookie: None,
        },
        HashKey::Cookie {
            name,
            path,
            ttl,
            attributes,
        } => {
            if let Some(v) = cookie_value(req.headers, name) {
                return RequestHash {
                    hash: Some(xxh64(v.as_bytes(), 0)),
                    set_cookie: None,
                };
            }
            let Some(ttl) = ttl else {
                return RequestHash::default();
            };
            let value = generated_cookie(req.peer, req.original_dst);
            let header = set_cookie(
                name,
                &value,
                path.as_deref().unwrap_or(""),
                *ttl,
                attributes,
            );
            RequestHash {
                hash: Some(xxh64(value.as_bytes(), 0)),
                set_cookie: HeaderValue::from_str(&header).ok(),
            }
        }
    }
}

/// `useSourceIp`: the hash of the client's IP address as text (TCP connections use it too).
pub fn source_ip_hash(ip: IpAddr) -> u64 {
    xxh64(ip.to_string().as_bytes(), 0)
}

/// All values of header `name`, sorted so their order does not matter, hashed in a chain.
fn header_hash(headers: &HeaderMap, name: &str) -> Option<u64> {
    let mut values = headers.get_all(name).iter().map(HeaderValue::as_bytes);
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(xxh64(first, 0));
    };
    let mut all: Vec<&[u8]> = [first, second].into_iter().chain(values).collect();
    all.sort_unstable();
    Some(all.iter().fold(0, |seed, v| xxh64(v, seed)))
}

/// The value of cookie `name` in the request's `cookie` headers, without surrounding double quotes.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim_start_matches(' ').split_once('=')?;
            (k == name).then(|| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// The first value of query parameter `name` as sent (not decoded); a bare `name` is empty.
fn query_value<'p>(path_and_query: &'p str, name: &str) -> Option<&'p str> {
    let (_, query) = path_and_query.split_once('?')?;
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .find_map(|param| match param.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if param == name => Some(""),
            _ => None,
        })
}

/// The cookie value Envoy generates: XXH64 of the downstream connection's remote address (the
/// client pod's `ip:port`) followed by its local address (the dialled address), as 16 hex digits.
/// Stable for every request on one connection.
pub fn generated_cookie(peer: SocketAddr, original_dst: SocketAddr) -> String {
    let addresses = format!("{peer}{original_dst}");
    format!("{:016x}", xxh64(addresses.as_bytes(), 0))
}

/// `Set-Cookie` as Envoy writes it: `name="value"`, `Max-Age` in whole seconds unless 0 (a
/// session cookie), `Path` unless empty, the attributes (`name` or `name=value`), `HttpOnly`.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    ttl: Duration,
    attributes: &[(String, String)],
) -> String {
    let mut out = format!("{name}=\"{value}\"");
    if ttl.as_secs() != 0 {
        out.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        out.push_str(&format!("; Path={path}"));
    }
    for (k, v) in attributes {
        if v.is_empty() {
            out.push_str(&format!("; {k}"));
        } else {
            out.push_str(&format!("; {k}={v}"));
        }
    }
    out.push_str("; HttpOnly");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(headers: &'a HeaderMap, path: &'a str) -> HashInput<'a> {
        HashInput {
            headers,
            path_and_query: path,
            peer: "10.244.1.2:40000"
                .parse()
                .unwrap_or(SocketAddr::from(([0; 4], 0))),
            original_dst: "10.96.0.20:9080"
                .parse()
                .unwrap_or(SocketAddr::from(([0; 4], 0))),
        }
    }

    fn cookie_key(ttl: Option<Duration>, path: Option<&str>, attrs: &[(&str, &str)]) -> HashKey {
        HashKey::Cookie {
            name: "user".into(),
            path: path.map(str::to_string),
            ttl,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn set_cookie_is_written_as_envoy_writes_it() {
        let attrs = [
            ("SameSite".to_string(), "Strict".to_string()),
            ("Secure".to_string(), String::new()),
        ];
        assert_eq!(
            set_cookie(
                "user",
                "0123456789abcdef",
                "/api",
                Duration::from_secs(3600),
                &attrs
            ),
            "user=\"0123456789abcdef\"; Max-Age=3600; Path=/api; SameSite=Strict; Secure; HttpOnly"
        );
        // ttl 0s: a session cookie; empty path: no Path.
        assert_eq!(
            set_cookie("user", "v", "", Duration::ZERO, &[]),
            "user=\"v\"; HttpOnly"
        );
        // Whole seconds, as Envoy truncates.
        assert_eq!(
            set_cookie("c", "v", "/", Duration::from_millis(1500), &[]),
            "c=\"v\"; Max-Age=1; Path=/; HttpOnly"
        );
    }

    #[test]
    fn generated_cookie_is_envoys_value_for_the_connection() {
        // XXH64("10.244.1.2:40000" "10.96.0.20:9080") from the reference library.
        let empty = HeaderMap::new();
        let f = facts(&empty, "/");
        assert_eq!(generated_cookie(f.peer, f.original_dst), "edc2171b1903173a");
        let h = request_hash(
            &cookie_key(Some(Duration::from_secs(60)), Some("/"), &[]),
            &f,
        );
        assert_eq!(h.hash, Some(xxh64(b"edc2171b1903173a", 0)));
        assert_eq!(
            h.set_cookie.as_ref().and_then(|v| v.to_str().ok()),
            Some("user=\"edc2171b1903173a\"; Max-Age=60; Path=/; HttpOnly")
        );
    }

    #[test]
    fn a_present_cookie_is_hashed_and_none_is_issued() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("a=1; user=\"abc\"; b=2"));
        let h = request_hash(
            &cookie_key(Some(Duration::from_secs(60)), None, &[]),
            &facts(&headers, "/"),
        );
        assert_eq!(h.hash, Some(xxh64(b"abc", 0)));
        assert_eq!(h.set_cookie, None);
        // Absent and no ttl: no hash, no cookie.
        let none = request_hash(&cookie_key(None, None, &[]), &facts(&HeaderMap::new(), "/"));
        assert_eq!(none, RequestHash::default());
    }

    #[test]
    fn header_query_and_source_ip_keys() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        let f = facts(&headers, "/p?x=1&user=bob&user=carol");
        let hash = |k: HashKey| request_hash(&k, &f).hash;
        assert_eq!(
            hash(HashKey::Header("x-user".into())),
            Some(xxh64(b"alice", 0))
        );
        assert_eq!(hash(HashKey::Header("x-other".into())), None);
        assert_eq!(
            hash(HashKey::QueryParameter("user".into())),
            Some(xxh64(b"bob", 0))
        );
        assert_eq!(hash(HashKey::QueryParameter("nope".into())), None);
        assert_eq!(hash(HashKey::SourceIp), Some(xxh64(b"10.244.1.2", 0)));
        // Header values in any order hash alike.
        let mut ab = HeaderMap::new();
        ab.append("x-user", HeaderValue::from_static("a"));
        ab.append("x-user", HeaderValue::from_static("b"));
        let mut ba = HeaderMap::new();
        ba.append("x-user", HeaderValue::from_static("b"));
        ba.append("x-user", HeaderValue::from_static("a"));
        assert_eq!(header_hash(&ab, "x-user"), header_hash(&ba, "x-user"));
    }
}
