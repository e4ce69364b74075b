//! HTTP/1.1 protocol upgrades (WebSocket and any other `Upgrade`): the upgrade request goes to one
//! endpoint on a connection of its own; when the endpoint answers `101 Switching Protocols` the
//! client gets the 101 and both connections become a byte relay. Envoy under Istio does the same
//! for WebSocket (`upgrade_configs`); upgrades are not retried.

use std::net::SocketAddr;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::upstream::connect::{self, ConnectOptions, Originate};
use crate::upstream::pool::{BoxError, ProxyBody};
use crate::upstream::tls::{Alpn, ClusterTls};

use super::rescue::LocalReply;

/// The protocol a request asks to upgrade to: an HTTP/1.1 request with `Upgrade` and a
/// `Connection` header listing `upgrade`.
pub fn requested(version: http::Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let wants = headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    wants.then(|| headers.get(UPGRADE).cloned()).flatten()
}

/// Send the upgrade request `req` (already shaped, with `Host`) to `endpoint`, over TLS when the
/// cluster has `tls` (SNI from `Host`); on 101, relay bytes between the client's upgraded
/// connection and the endpoint's until either side closes.
pub async fn proxy(
    endpoint: SocketAddr,
    connect_opts: &ConnectOptions,
    tls: Option<&ClusterTls>,
    mut req: Request<ProxyBody>,
    protocol: HeaderValue,
    downstream: OnUpgrade,
) -> Result<Response<ProxyBody>, LocalReply> {
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    req.headers_mut().insert(UPGRADE, protocol);
    // The URI of an HTTP/1.1 request on its own connection is origin-form.
    if let Some(pq) = req.uri().path_and_query().cloned() {
        if let Ok(uri) = pq.as_str().parse() {
            *req.uri_mut() = uri;
        }
    }
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let tls = tls.map(|tls| Originate {
        tls,
        alpn: Alpn::Http1,
        authority: &authority,
    });
    let stream = match connect::dial(endpoint, connect_opts, tls).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%endpoint, error = %e, "upgrade connect failed");
            return Err(match e.transport_failure_reason() {
                Some(reason) => LocalReply::TransportFailure {
                    retried: false,
                    reason: reason.to_string(),
                },
                None => LocalReply::ConnectFailure { retried: false },
            });
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| LocalReply::ConnectFailure { retried: false })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "upgrade connection ended");
        }
    });
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|_| LocalReply::UpstreamReset {
            retried: false,
            remote: false,
        })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The endpoint declined the upgrade: its answer is the response.
        return Ok(resp.map(|b| b.map_err(BoxError::from).boxed()));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, server) = match tokio::join!(downstream, upstream) {
            (Ok(c), Ok(s)) => (c, s),
            (c, s) => {
                tracing::debug!(
                    client = c.is_ok(),
                    server = s.is_ok(),
                    "upgrade did not complete"
                );
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut server = TokioIo::new(server);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            tracing::debug!(error = %e, "upgraded relay ended");
        }
    });
    Ok(resp.map(|b| b.map_err(BoxError::from).boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http11_requests_with_connection_upgrade_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested(http::Version::HTTP_11, &h).is_none());
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(
            requested(http::Version::HTTP_11, &h),
            Some(HeaderValue::from_static("websocket"))
        );
        assert!(requested(http::Version::HTTP_2, &h).is_none());
    }
}
