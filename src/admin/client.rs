//! A small client of the admin API, for the CLI (`gatehouse upstream …`).
//!
//! Plain HTTP/1.1 to the admin listener (which is meant for loopback or a
//! private network), bearer token on every call, every call bounded by a
//! timeout. The token is never printed: errors name the URL and status only.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not usable.
    #[error("invalid admin URL {0:?}")]
    Url(String),
    /// The admin listener did not answer in time.
    #[error("the admin API did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection or protocol failure.
    #[error("cannot reach the admin API")]
    Http(#[source] hyper_util::client::legacy::Error),
    /// The answer could not be read.
    #[error("cannot read the admin API's answer")]
    Body(#[source] hyper::Error),
    /// The answer is not JSON.
    #[error("the admin API answered {0} without JSON")]
    NotJson(StatusCode),
}

/// Calls the admin API at one base URL with one token.
pub struct AdminClient {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client of `base` (`http://127.0.0.1:9000`) using `token`.
    pub fn new(base: &str, token: &str) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout: Duration::from_secs(10),
        }
    }

    /// `GET path`: status and JSON body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, serde_json::Value), ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.clone()))?;
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|_| ClientError::Url(url.clone()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(ClientError::Http)?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Body)?
                .to_bytes();
            let json = serde_json::from_slice(&body).map_err(|_| ClientError::NotJson(status))?;
            Ok((status, json))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }
}
