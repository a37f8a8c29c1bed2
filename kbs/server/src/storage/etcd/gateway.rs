//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/deleterange`, `/v3/lease/grant`, `/v3/watch`), which every
//! etcd 3.4+ member serves on its client URL. It speaks the same v3 API as the gRPC
//! clients (same keys, revisions, leases, transactions, watches) without generated
//! protobuf code, so the broker builds with no `protoc` and no new dependencies (the
//! HTTP client is the one the broker already links). Transactions (`KV/Txn`), the one
//! request on the attestation path, go over native gRPC instead, in clear or over TLS
//! like the rest (`grpc`: the gateway costs each member more CPU than the write itself).
//!
//! Requests go to one endpoint at a time; a connection failure, a timeout or a 5xx moves
//! to the next endpoint, so losing one member costs a retry, not an error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::grpc;
use super::types::{EtcdError, EtcdSpec, EtcdTls, Kv};

/// One watch event.
#[derive(Debug)]
pub enum Event {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

/// Largest watch message accepted (etcd's default request limit is 1.5 MiB; base64 and
/// JSON add a third).
const MAX_WATCH_LINE: usize = 8 << 20;

/// One line of etcd's JSON watch stream: its events (none for progress and creation
/// messages), or why the watch is over (cancelled, compacted, an error message).
pub fn parse_watch_line(line: &[u8]) -> Result<Vec<Event>, String> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) if line.iter().all(u8::is_ascii_whitespace) => return Ok(Vec::new()),
        Err(e) => return Err(format!("watch message is not JSON: {e}")),
    };
    let Some(r) = v.get("result") else {
        return Err(format!("watch error: {}", v.to_string().chars().take(200).collect::<String>()));
    };
    if r.get("canceled").and_then(Value::as_bool).unwrap_or(false) {
        return Err(format!("watch cancelled (compacted at {})", num(r.get("compact_revision"))));
    }
    Ok(r.get("events")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let kv = EtcdClient::kv(e.get("kv")?)?;
                    Some(match e.get("type").and_then(Value::as_str) {
                        Some("DELETE") => Event::Delete { key: kv.key, mod_revision: kv.mod_revision },
                        _ => Event::Put(kv),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The key-values of a range answer (`{"kvs": [...]}`), skipping malformed entries.
pub fn parse_range(body: &[u8]) -> Vec<Kv> {
    serde_json::from_slice::<Value>(body).map(|v| EtcdClient::kvs(&v)).unwrap_or_default()
}

pub struct EtcdClient {
    http: reqwest::Client,
    /// Native gRPC channels per member for transactions (over TLS when the members are).
    grpc: Vec<grpc::Channel>,
    scheme: &'static str,
    endpoints: Vec<String>,
    current: AtomicUsize,
    timeout: Duration,
    /// etcd user and password, and the token last obtained with them.
    auth: Option<(String, zeroize::Zeroizing<String>)>,
    token: std::sync::RwLock<Option<zeroize::Zeroizing<String>>>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient").field("endpoints", &self.endpoints).finish()
    }
}

fn num(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The first key after every key starting with `prefix` (etcd's range_end for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

impl EtcdClient {
    pub fn new(spec: &EtcdSpec, tls: &EtcdTls, timeout: Duration) -> Result<Self, EtcdError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        let scheme = match &tls.ca_pem {
            Some(pem) => {
                let ca = reqwest::Certificate::from_pem(pem).map_err(|e| EtcdError::Setup(e.to_string()))?;
                b = b.tls_certs_only([ca]);
                if let Some(id) = &tls.client_pem {
                    let id = reqwest::Identity::from_pem(id)
                        .map_err(|e| EtcdError::Setup(format!("etcd client certificate/key: {e}")))?;
                    b = b.identity(id);
                }
                "https"
            }
            None if tls.client_pem.is_some() => {
                return Err(EtcdError::Setup("an etcd client certificate needs --etcd-ca (TLS)".into()))
            }
            None => "http",
        };
        let http = b.build().map_err(|e| EtcdError::Setup(e.to_string()))?;
        let grpc_tls = match &tls.ca_pem {
            Some(ca) => Some(grpc::tls_config(ca, tls.client_pem.as_deref().map(|p| &p[..]))?),
            None => None,
        };
        let grpc = spec
            .endpoints
            .iter()
            .map(|e| grpc::Channel::new(e, grpc_tls.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            http,
            grpc,
            scheme,
            endpoints: spec.endpoints.clone(),
            current: AtomicUsize::new(0),
            timeout,
            auth: tls.auth.clone(),
            token: std::sync::RwLock::new(None),
        })
    }

    fn url(&self, i: usize, path: &str) -> (String, String) {
        let ep = &self.endpoints[i % self.endpoints.len()];
        (ep.clone(), format!("{}://{ep}{path}", self.scheme))
    }

    /// The member requests go to first.
    pub fn current_member(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len().max(1)
    }

    /// Moves on from member `i` (it failed a health probe or a watch).
    pub fn skip_member(&self, i: usize) {
        let _ = self.current.compare_exchange(
            i,
            (i + 1) % self.endpoints.len().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A linearizable read of `key` on member `i` only (a member cut off from the
    /// quorum cannot answer it): the health probe.
    pub async fn probe(&self, i: usize, key: &str) -> Result<i64, EtcdError> {
        let v =
            self.once(i, "/v3/kv/range", &json!({ "key": b64(key.as_bytes()), "count_only": true })).await?;
        Ok(num(v.pointer("/header/revision")))
    }

    fn current_token(&self) -> Option<zeroize::Zeroizing<String>> {
        self.token.read().ok().and_then(|t| t.clone())
    }

    /// A fresh token from member `i` (etcd authentication); Ok(None) without a user.
    async fn authenticate(&self, i: usize) -> Result<Option<zeroize::Zeroizing<String>>, EtcdError> {
        let Some((user, password)) = &self.auth else { return Ok(None) };
        let body = json!({ "name": user, "password": password.as_str() });
        let v = self.send(i, "/v3/auth/authenticate", &body, None).await.map_err(|e| match e {
            EtcdError::Status { endpoint, status, code, message } => EtcdError::Status {
                endpoint,
                status,
                code,
                message: format!("authenticating as etcd user {user:?}: {message}"),
            },
            e => e,
        })?;
        let token = v.get("token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or_else(|| {
            EtcdError::Malformed { endpoint: self.url(i, "").0, what: "authenticate without a token" }
        })?;
        let token = zeroize::Zeroizing::new(token.to_string());
        if let Ok(mut t) = self.token.write() {
            *t = Some(token.clone());
        }
        Ok(Some(token))
    }

    /// After etcd refused the token (expired, or voided by an auth disable/enable).
    async fn reauthenticate(&self, i: usize) -> Result<Option<zeroize::Zeroizing<String>>, EtcdError> {
        tracing::info!(endpoint = %self.url(i, "").0, "etcd refused the auth token; authenticating again");
        self.authenticate(i).await
    }

    /// The token to send, authenticating first when there is none yet.
    pub(crate) async fn token_for(&self, i: usize) -> Result<Option<zeroize::Zeroizing<String>>, EtcdError> {
        match self.current_token() {
            Some(t) => Ok(Some(t)),
            None => self.authenticate(i).await,
        }
    }

    /// One request with the current token; an expired or revoked token is renewed once.
    async fn once(&self, i: usize, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let token = self.token_for(i).await?;
        match self.send(i, path, body, token.as_deref().map(String::as_str)).await {
            Err(e) if self.auth.is_some() && e.is_auth_expired() => {
                let token = self.reauthenticate(i).await?;
                self.send(i, path, body, token.as_deref().map(String::as_str)).await
            }
            r => r,
        }
    }

    async fn send(
        &self,
        i: usize,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, EtcdError> {
        let (endpoint, url) = self.url(i, path);
        let mut req = self.http.post(url).timeout(self.timeout).json(body);
        if let Some(t) = token {
            req = req.header(reqwest::header::AUTHORIZATION, t);
        }
        let resp = req.send().await.map_err(|source| EtcdError::Unreachable {
            endpoint: endpoint.clone(),
            source: source.without_url(),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|source| EtcdError::Unreachable {
            endpoint: endpoint.clone(),
            source: source.without_url(),
        })?;
        let v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            // etcd answers some refusals in plain text (e.g. its gateway on a client
            // certificate with a CommonName): show them.
            Err(_) if status != 200 => {
                let message = String::from_utf8_lossy(&bytes).trim().chars().take(300).collect();
                return Err(EtcdError::Status { endpoint, status, code: 0, message });
            }
            Err(_) => return Err(EtcdError::Malformed { endpoint, what: "body is not JSON" }),
        };
        if status != 200 || v.get("error").is_some() {
            let message = v
                .get("error")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            // A gRPC "unavailable" (no leader, no quorum) is worth trying elsewhere.
            let code = u32::try_from(num(v.get("code"))).unwrap_or(0);
            let status = if code == 14 { 503 } else { status };
            return Err(EtcdError::Status { endpoint, status, code, message });
        }
        Ok(v)
    }

    /// One request, moving to the next member on retriable failures (each member tried once).
    pub async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.endpoints.len() {
            let i = (start + k) % self.endpoints.len();
            match self.once(i, path, &body).await {
                Ok(v) => {
                    if k > 0 {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if e.retriable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        self.current.store(start.wrapping_add(1) % self.endpoints.len().max(1), Ordering::Relaxed);
        Err(last.unwrap_or(EtcdError::Spec { spec: String::new(), why: "no members" }))
    }

    fn kvs(v: &Value) -> Vec<Kv> {
        v.get("kvs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Self::kv).collect())
            .unwrap_or_default()
    }

    fn kv(k: &Value) -> Option<Kv> {
        let key = B64.decode(k.get("key")?.as_str()?).ok()?;
        let value = match k.get("value").and_then(Value::as_str) {
            Some(s) => B64.decode(s).ok()?,
            None => Vec::new(),
        };
        Some(Kv {
            key: String::from_utf8(key).ok()?,
            value,
            mod_revision: num(k.get("mod_revision")),
            lease: num(k.get("lease")),
        })
    }

    /// Linearizable range read: (store revision, kvs). `end` None reads one key.
    pub async fn range(&self, key: &str, end: Option<&[u8]>) -> Result<(i64, Vec<Kv>), EtcdError> {
        let mut body = json!({ "key": b64(key.as_bytes()) });
        if let Some(e) = end {
            body["range_end"] = json!(b64(e));
        }
        let v = self.call("/v3/kv/range", body).await?;
        Ok((num(v.pointer("/header/revision")), Self::kvs(&v)))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        Ok(self.range(key, None).await?.1.into_iter().next())
    }

    /// Put; returns the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let v = self.call("/v3/kv/put", body).await?;
        Ok(num(v.pointer("/header/revision")))
    }

    /// Delete one key: (revision, whether it existed).
    pub async fn delete(&self, key: &str) -> Result<(i64, bool), EtcdError> {
        let v = self.call("/v3/kv/deleterange", json!({ "key": b64(key.as_bytes()) })).await?;
        Ok((num(v.pointer("/header/revision")), num(v.get("deleted")) > 0))
    }

    /// Transaction: if `key`'s `target` (CREATE or MOD revision) equals `rev`, put
    /// `value`; else read the key. Ok((true, revision, None)) when the put happened,
    /// Ok((false, revision, current)) otherwise.
    async fn txn_put_if(
        &self,
        key: &str,
        target: &str,
        rev: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<(bool, i64, Option<Kv>), EtcdError> {
        let t = if target == "CREATE" { grpc::Target::Create } else { grpc::Target::Mod };
        let msg = grpc::encode_txn(key.as_bytes(), t, rev, value, lease);
        let ch = &self.grpc;
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..ch.len() {
            let i = (start + k) % ch.len();
            let token = self.token_for(i).await?;
            let mut r = ch[i]
                .unary("/etcdserverpb.KV/Txn", &msg, token.as_deref().map(String::as_str), self.timeout)
                .await;
            if self.auth.is_some() && r.as_ref().is_err_and(EtcdError::is_auth_expired) {
                let token = self.reauthenticate(i).await?;
                r = ch[i]
                    .unary("/etcdserverpb.KV/Txn", &msg, token.as_deref().map(String::as_str), self.timeout)
                    .await;
            }
            match r {
                Ok(b) => {
                    if k > 0 {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return grpc::decode_txn(&b).ok_or_else(|| EtcdError::Malformed {
                        endpoint: self.endpoints[i].clone(),
                        what: "TxnResponse",
                    });
                }
                Err(e) if e.retriable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        self.current.store(start.wrapping_add(1) % ch.len().max(1), Ordering::Relaxed);
        Err(last.unwrap_or(EtcdError::Spec { spec: String::new(), why: "no members" }))
    }

    /// Create-only put, one etcd transaction: Ok(true) when this call created the key.
    /// A retry of our own write (the first attempt timed out but was applied) finds
    /// the same bytes there and also counts as created.
    pub async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, EtcdError> {
        let (ok, _, current) = self.txn_put_if(key, "CREATE", 0, value, lease).await?;
        Ok(ok || current.is_some_and(|c| c.value == value))
    }

    /// Create-only put that also answers what it found, in the same transaction (no
    /// second read): Ok(None) when this call created the key (or a retry of our own
    /// write finds the same bytes there), Ok(Some(kv)) with the value already there.
    pub async fn create_or_get(&self, key: &str, value: &[u8], lease: i64) -> Result<Option<Kv>, EtcdError> {
        let (ok, _, current) = self.txn_put_if(key, "CREATE", 0, value, lease).await?;
        match current {
            _ if ok => Ok(None),
            Some(c) if c.value == value => Ok(None),
            Some(c) => Ok(Some(c)),
            // The compare saw the key and the read in the same transaction did not:
            // not an answer etcd gives; refuse rather than count it as created.
            None => Err(EtcdError::Malformed {
                endpoint: String::new(),
                what: "create-only transaction failed without the key it found",
            }),
        }
    }

    /// Compare-and-swap on the key's mod revision.
    pub async fn cas(
        &self,
        key: &str,
        mod_revision: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, EtcdError> {
        Ok(self.txn_put_if(key, "MOD", mod_revision, value, lease).await?.0)
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", json!({ "TTL": ttl.to_string() })).await?;
        let id = num(v.get("ID"));
        if id == 0 {
            return Err(EtcdError::Malformed { endpoint: String::new(), what: "lease grant without ID" });
        }
        Ok(id)
    }

    /// Opens a watch on [key, end) from `start_revision`; events go to `on_events` until
    /// the stream fails (the caller re-synchronises then).
    pub async fn watch(
        &self,
        i: usize,
        key: &str,
        end: &[u8],
        start_revision: i64,
        mut on_events: impl FnMut(Vec<Event>),
    ) -> Result<(), EtcdError> {
        let (endpoint, url) = self.url(i, "/v3/watch");
        let body = json!({ "create_request": {
            "key": b64(key.as_bytes()), "range_end": b64(end), "start_revision": start_revision.to_string(),
        }});
        let token = self.token_for(i).await?;
        let mut req = self.http.post(url).json(&body);
        if let Some(t) = &token {
            req = req.header(reqwest::header::AUTHORIZATION, t.as_str());
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(source) => {
                self.skip_member(i);
                return Err(EtcdError::Unreachable { endpoint, source: source.without_url() });
            }
        };
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => return Err(EtcdError::WatchEnded(format!("{endpoint} closed the stream"))),
                Err(source) => return Err(EtcdError::Unreachable { endpoint, source: source.without_url() }),
            };
            buf.extend_from_slice(&chunk);
            if buf.len() > MAX_WATCH_LINE {
                return Err(EtcdError::WatchEnded(format!("{endpoint} sent an over-long watch message")));
            }
            while let Some(nl) = buf.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                match parse_watch_line(&line) {
                    Ok(events) if events.is_empty() => {}
                    Ok(events) => on_events(events),
                    Err(why) => return Err(EtcdError::WatchEnded(format!("{endpoint}: {why}"))),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_as_etcd_3_4_writes_them() {
        // Shapes taken from a real etcd 3.4.23 gateway (creation, put, delete, cancel).
        let created = br#"{"result":{"header":{"revision":"3"},"created":true}}"#;
        assert!(parse_watch_line(created).unwrap().is_empty());
        let put = br#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L3AveA==","create_revision":"4","mod_revision":"4","version":"1","value":"aGVsbG8="}}]}}"#;
        match &parse_watch_line(put).unwrap()[..] {
            [Event::Put(kv)] => {
                assert_eq!((kv.key.as_str(), &kv.value[..], kv.mod_revision), ("/p/x", &b"hello"[..], 4));
            }
            other => panic!("{other:?}"),
        }
        let del = br#"{"result":{"header":{"revision":"5"},"events":[{"type":"DELETE","kv":{"key":"L3AveA==","mod_revision":"5"}}]}}"#;
        assert!(matches!(&parse_watch_line(del).unwrap()[..], [Event::Delete { mod_revision: 5, .. }]));
        assert!(parse_watch_line(br#"{"result":{"canceled":true,"compact_revision":"9"}}"#).is_err());
        assert!(parse_watch_line(br#"{"error":{"grpc_code":14,"message":"no leader"}}"#).is_err());
        assert!(parse_watch_line(b"{not json").is_err());
        let kvs = parse_range(
            br#"{"kvs":[{"key":"YQ==","value":"Yg==","mod_revision":"7","lease":"12"},{"key":"!!"}]}"#,
        );
        assert_eq!(kvs.len(), 1);
        assert_eq!((kvs[0].mod_revision, kvs[0].lease), (7, 12));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
    }
}
