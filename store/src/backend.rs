//! The operations blobs need from a store: put an object, get it, delete it, and list the
//! objects under a prefix with their modification times (for retention).
//!
//! Local files, S3 and Azure go through `object_store`. Google Cloud Storage goes through its
//! JSON API (media upload, `alt=media` download, delete) with the credentials `object_store`
//! resolves (service account, application default, metadata server): `object_store` speaks
//! GCS's XML API, which compatible test servers implement only in part (no ETag on upload, no
//! HEAD, no DELETE), while the JSON API is what every GCS client library uses and what those
//! servers implement. Errors are `object_store` errors either way, `NotFound` included.

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::gcp::GcpCredentialProvider;
use object_store::path::Path;

pub(crate) enum Backend {
    Store(Arc<dyn ObjectStore>),
    Gcs(GcsJson),
}

impl Backend {
    pub(crate) async fn put(&self, key: &Path, bytes: Bytes) -> object_store::Result<()> {
        match self {
            Backend::Store(s) => s.put(key, PutPayload::from(bytes)).await.map(|_| ()),
            Backend::Gcs(g) => g.put(key, bytes).await,
        }
    }

    pub(crate) async fn get(&self, key: &Path) -> object_store::Result<Bytes> {
        match self {
            Backend::Store(s) => s.get(key).await?.bytes().await,
            Backend::Gcs(g) => g.get(key).await,
        }
    }

    pub(crate) async fn delete(&self, key: &Path) -> object_store::Result<()> {
        match self {
            Backend::Store(s) => s.delete(key).await,
            Backend::Gcs(g) => g.delete(key).await,
        }
    }

    /// Every object under `prefix`, with when it was last written.
    pub(crate) async fn list(&self, prefix: &Path) -> object_store::Result<Vec<(Path, SystemTime)>> {
        match self {
            Backend::Store(s) => {
                s.list(Some(prefix))
                    .map_ok(|meta| (meta.location, SystemTime::from(meta.last_modified)))
                    .try_collect()
                    .await
            }
            Backend::Gcs(g) => g.list(prefix).await,
        }
    }
}

/// Google Cloud Storage over its JSON API.
pub(crate) struct GcsJson {
    pub(crate) http: reqwest::Client,
    /// `https://storage.googleapis.com` or a compatible server's URL.
    pub(crate) base: String,
    pub(crate) bucket: String,
    /// `None`: requests go unsigned (a server that checks no credentials).
    pub(crate) credentials: Option<GcpCredentialProvider>,
}

/// Tries per request (transient failures: connection errors, 429, 5xx).
const TRIES: u32 = 4;

/// Percent-encode everything but unreserved characters (object names may hold `/`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic { store: "GCS", source: message.into() }
}

impl GcsJson {
    async fn send(
        &self,
        key: &Path,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> object_store::Result<reqwest::Response> {
        let mut last = String::new();
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let mut request = build(&self.http);
            if let Some(credentials) = &self.credentials {
                let token = credentials.get_credential().await?;
                request = request.bearer_auth(&token.bearer);
            }
            match request.send().await {
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Err(object_store::Error::NotFound {
                        path: key.to_string(),
                        source: format!("{what}: 404 Not Found").into(),
                    });
                }
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    last = format!("{what} {key}: {status}: {}", body.chars().take(300).collect::<String>());
                    if !(status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                        break;
                    }
                }
                Err(e) => last = format!("{what} {key}: {e}"),
            }
        }
        Err(generic(last))
    }

    fn object_url(&self, key: &Path) -> String {
        format!("{}/storage/v1/b/{}/o/{}", self.base, encode(&self.bucket), encode(key.as_ref()))
    }

    async fn put(&self, key: &Path, bytes: Bytes) -> object_store::Result<()> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.base,
            encode(&self.bucket),
            encode(key.as_ref())
        );
        self.send(key, "uploading", |http| {
            http.post(&url).header(reqwest::header::CONTENT_TYPE, "application/octet-stream").body(bytes.clone())
        })
        .await?;
        Ok(())
    }

    async fn get(&self, key: &Path) -> object_store::Result<Bytes> {
        let url = format!("{}?alt=media", self.object_url(key));
        let response = self.send(key, "downloading", |http| http.get(&url)).await?;
        response.bytes().await.map_err(|e| generic(format!("downloading {key}: {e}")))
    }

    async fn delete(&self, key: &Path) -> object_store::Result<()> {
        let url = self.object_url(key);
        self.send(key, "deleting", |http| http.delete(&url)).await?;
        Ok(())
    }

    /// Page through the objects whose names start with `prefix/`.
    async fn list(&self, prefix: &Path) -> object_store::Result<Vec<(Path, SystemTime)>> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            items: Vec<Item>,
            next_page_token: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            name: String,
            updated: String,
        }
        let base =
            format!("{}/storage/v1/b/{}/o?prefix={}%2F", self.base, encode(&self.bucket), encode(prefix.as_ref()));
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        // Bounded: a page holds up to 1,000 objects; a store of a billion objects ends here too.
        for _ in 0..1_000_000 {
            let url = match &token {
                Some(t) => format!("{base}&pageToken={}", encode(t)),
                None => base.clone(),
            };
            let response = self.send(prefix, "listing", |http| http.get(&url)).await?;
            let page: Page = response.json().await.map_err(|e| generic(format!("listing {prefix}: {e}")))?;
            for item in page.items {
                let updated =
                    time::OffsetDateTime::parse(&item.updated, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            generic(format!("listing {prefix}: {:?} updated {:?}: {e}", item.name, item.updated))
                        })?;
                found.push((Path::from(item.name), SystemTime::from(updated)));
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(found),
            }
        }
        Err(generic(format!("listing {prefix}: more pages than any store holds")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn object_names_are_fully_escaped() {
        assert_eq!(super::encode("run-1/sha256/ab cd"), "run-1%2Fsha256%2Fab%20cd");
    }
}
