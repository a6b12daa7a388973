//! The load generator's client for `--url`: plain GETs over pooled HTTP/1.1 keep-alive
//! connections driven by hyper directly (no URL parsing, redirect, proxy or cookie logic per
//! request), so calibrating the generator against other tools (`oha`) measures the generator's
//! engine, not a general-purpose client's per-request work.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A pooled plain-HTTP GET client for one URL.
pub struct PlainGet {
    addr: String,
    host: http::HeaderValue,
    path: http::Uri,
    timeout: Duration,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

impl std::fmt::Debug for PlainGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainGet")
            .field("addr", &self.addr)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PlainGet {
    /// A client for `url` (`http://host:port/path?query`), each request bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("--url `{url}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!(
                "--url `{url}`: {other}:// is not supported; calibrate against a plain http:// endpoint"
            ),
            None => bail!("--url `{url}`: give the scheme, e.g. http://127.0.0.1:8080/"),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--url `{url}` has no host"))?;
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let path: http::Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .with_context(|| format!("--url `{url}`: bad path"))?;
        Ok(Self {
            host: http::HeaderValue::from_str(authority.as_str())
                .with_context(|| format!("--url `{url}`: bad host"))?,
            addr,
            path,
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with {}: {e}", self.addr))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A connection ready to send: an idle one (a closed one is dropped), or a new one.
    async fn ready(&self) -> Result<SendRequest<Empty<Bytes>>, String> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            match idle {
                Some(mut s) => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                None => return self.connect().await,
            }
        }
    }

    /// One GET; the body is read to the end. `Err` names what failed (status, I/O, timeout).
    pub async fn get(&self) -> Result<(), String> {
        let work = async {
            let mut sender = self.ready().await?;
            let req = http::Request::get(self.path.clone())
                .header(http::header::HOST, self.host.clone())
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|e| format!("reading the body: {e}"))?;
            }
            if !status.is_success() {
                return Err(format!("HTTP {}", status.as_u16()));
            }
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(sender);
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_accepted() {
        let t = Duration::from_secs(1);
        assert!(PlainGet::new("http://127.0.0.1:8080/x?y=1", t).is_ok());
        let e = PlainGet::new("https://example.com/", t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
        assert!(PlainGet::new("127.0.0.1:8080", t).is_err());
        assert!(PlainGet::new("not a url", t).is_err());
    }

    #[tokio::test]
    async fn gets_reuse_one_connection_and_report_failures() {
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = hits.clone();
        let app = axum::Router::new()
            .route(
                "/ok",
                axum::routing::get(move || {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async { "fine" }
                }),
            )
            .route(
                "/down",
                axum::routing::get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "no") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let ok = PlainGet::new(&format!("http://{addr}/ok"), Duration::from_secs(5)).unwrap();
        for _ in 0..5 {
            ok.get().await.unwrap();
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 5);
        assert_eq!(
            ok.idle.lock().unwrap().len(),
            1,
            "one keep-alive connection"
        );
        let down = PlainGet::new(&format!("http://{addr}/down"), Duration::from_secs(5)).unwrap();
        assert_eq!(down.get().await, Err("HTTP 503".into()));
        let closed = PlainGet::new("http://127.0.0.1:1/", Duration::from_secs(5)).unwrap();
        assert!(closed.get().await.unwrap_err().contains("cannot connect"));
    }
}
