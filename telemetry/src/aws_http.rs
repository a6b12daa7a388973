//! The HTTP client of every AWS SDK client in tokentrail (STS, Secrets Manager, X-Ray, and the
//! credential providers of the configuration chain): reqwest, which the hops already link for
//! everything else, instead of the SDK's default hyper + h2 + rustls client. One HTTP and TLS stack
//! per binary keeps each Lambda bootstrap about half a megabyte smaller.
//!
//! Load AWS configuration with [`config_loader`] (or give [`client`] to a service `Config`
//! builder): the SDK crates are built without their default client, so a client built without
//! one fails every call with "no HTTP client".
//!
//! What the SDK's own client does and this one does too: the connect and read timeouts of the
//! SDK's `TimeoutConfig` (per connector, as the SDK asks), no redirects (a redirect would replay a
//! signed request elsewhere), connection reuse, and errors classified as the SDK's retry policy
//! expects (timeouts and I/O errors are transient, anything else is not retried).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;

/// The standard AWS configuration chain (region, credentials, `AWS_ENDPOINT_URL*`), with
/// [`client`] as its HTTP client.
pub fn config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(client())
}

/// The HTTP client for AWS SDK clients.
pub fn client() -> SharedHttpClient {
    SharedHttpClient::new(ReqwestClient::default())
}

type Timeouts = (Option<Duration>, Option<Duration>);

/// One reqwest client per pair of timeouts the SDK asks for (in practice one or two per process).
#[derive(Default)]
struct ReqwestClient {
    built: Arc<Mutex<Vec<(Timeouts, Connector)>>>,
}

impl fmt::Debug for ReqwestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReqwestClient")
    }
}

impl ReqwestClient {
    fn connector(&self, settings: &HttpConnectorSettings) -> Connector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        match built.iter().find(|(k, _)| *k == key) {
            Some((_, c)) => c.clone(),
            None => {
                let c = Connector::new(key);
                built.push((key, c.clone()));
                c
            }
        }
    }
}

impl HttpClient for ReqwestClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.connector(settings))
    }
}

/// A reqwest client with the SDK's timeouts, or why it could not be built (reported by every
/// call, since the SDK's interface gives a connector no way to fail).
#[derive(Clone)]
struct Connector(Result<reqwest::Client, Arc<str>>);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reqwest connector")
    }
}

impl Connector {
    fn new((connect, read): Timeouts) -> Self {
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(t) = connect {
            builder = builder.connect_timeout(t);
        }
        if let Some(t) = read {
            builder = builder.read_timeout(t);
        }
        Self(
            builder
                .build()
                .map_err(|e| Arc::from(format!("cannot build the AWS HTTP client: {e}"))),
        )
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.0.clone();
        HttpConnectorFuture::new(async move {
            let client = client.map_err(|e| ConnectorError::other(e.to_string().into(), None))?;
            let request = to_reqwest(&client, request)?;
            let response = client.execute(request).await.map_err(classify)?;
            from_reqwest(response).await
        })
    }
}

fn to_reqwest(
    client: &reqwest::Client,
    request: HttpRequest,
) -> Result<reqwest::Request, ConnectorError> {
    let user = |what: String| ConnectorError::user(what.into());
    let method = reqwest::Method::from_bytes(request.method().as_bytes())
        .map_err(|e| user(format!("invalid HTTP method: {e}")))?;
    let Some(body) = request.body().bytes() else {
        // Every operation tokentrail calls (STS, Secrets Manager, X-Ray) sends its body in memory.
        return Err(user(
            "streaming request bodies are not supported".to_owned(),
        ));
    };
    let mut builder = client.request(method, request.uri()).body(body.to_vec());
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    builder
        .build()
        .map_err(|e| user(format!("invalid request: {e}")))
}

async fn from_reqwest(response: reqwest::Response) -> Result<HttpResponse, ConnectorError> {
    let status = StatusCode::try_from(response.status().as_u16())
        .map_err(|e| ConnectorError::other(e.into(), None))?;
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(classify)?;
    let mut out = HttpResponse::new(status, SdkBody::from(body));
    for (name, value) in &headers {
        let value = value.to_str().map_err(|_| {
            ConnectorError::other(
                format!("response header {name} is not visible ASCII").into(),
                None,
            )
        })?;
        out.headers_mut()
            .try_append(name.as_str().to_owned(), value.to_owned())
            .map_err(|e| ConnectorError::other(e.into(), None))?;
    }
    Ok(out)
}

/// Timeouts and failures to connect or to read are transient for the SDK's retry policy; what
/// reqwest refuses before sending is the caller's; anything else is not retried.
fn classify(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() || e.is_decode() {
        ConnectorError::io(e.into())
    } else if e.is_builder() {
        ConnectorError::user(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn connector(settings: HttpConnectorSettings) -> Connector {
        ReqwestClient::default().connector(&settings)
    }

    /// A one-shot HTTP server that answers `reply` and hands back what it received.
    fn serve_once(reply: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).expect("read");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(reply.as_bytes()).expect("write");
            String::from_utf8_lossy(&got).into_owned()
        });
        (url, handle)
    }

    #[tokio::test]
    async fn a_request_goes_out_as_given_and_the_answer_comes_back_whole() {
        let (url, server) = serve_once(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\nx-amzn-requestid: r-1\r\n\
             connection: close\r\n\r\nnope!",
        );
        let mut request = HttpRequest::new(SdkBody::from("Action=GetCallerIdentity"));
        request.set_uri(format!("{url}/sts?x=1")).expect("uri");
        request.set_method("POST").expect("method");
        request
            .headers_mut()
            .insert("authorization", "AWS4-HMAC-SHA256 test");
        let response = connector(HttpConnectorSettings::builder().build())
            .call(request)
            .await
            .expect("answered");
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(response.headers().get("x-amzn-requestid"), Some("r-1"));
        assert_eq!(response.body().bytes(), Some(&b"nope!"[..]));
        let got = server.join().expect("server");
        assert!(got.starts_with("POST /sts?x=1 HTTP/1.1\r\n"), "{got}");
        assert!(
            got.contains("authorization: AWS4-HMAC-SHA256 test\r\n"),
            "{got}"
        );
        assert!(got.ends_with("\r\n\r\nAction=GetCallerIdentity"), "{got}");
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        let (url, server) = serve_once(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/elsewhere\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n",
        );
        let mut request = HttpRequest::new(SdkBody::empty());
        request.set_uri(url).expect("uri");
        let response = connector(HttpConnectorSettings::builder().build())
            .call(request)
            .await
            .expect("answered");
        assert_eq!(response.status().as_u16(), 307);
        server.join().expect("server");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout_and_nobody_listening_is_io() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let silent = format!("http://{}", listener.local_addr().expect("addr"));
        let settings = HttpConnectorSettings::builder()
            .connect_timeout(Duration::from_secs(2))
            .read_timeout(Duration::from_millis(200))
            .build();
        let mut request = HttpRequest::new(SdkBody::empty());
        request.set_uri(silent).expect("uri");
        let e = connector(settings.clone())
            .call(request)
            .await
            .expect_err("no answer");
        assert!(e.is_timeout(), "{e:?}");
        drop(listener);

        let free = TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = format!("http://{}", free.local_addr().expect("addr"));
        drop(free);
        let mut request = HttpRequest::new(SdkBody::empty());
        request.set_uri(closed).expect("uri");
        let e = connector(settings)
            .call(request)
            .await
            .expect_err("refused");
        assert!(e.is_io(), "{e:?}");
    }

    #[test]
    fn connectors_are_shared_per_pair_of_timeouts() {
        let client = ReqwestClient::default();
        let a = HttpConnectorSettings::builder()
            .read_timeout(Duration::from_secs(1))
            .build();
        let b = HttpConnectorSettings::builder().build();
        for s in [&a, &b, &a, &b] {
            let _ = client.connector(s);
        }
        assert_eq!(client.built.lock().expect("lock").len(), 2);
    }
}
